"""Out-of-distribution image sets that work offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_sample_images

from adapters.images import SUFFIXES, read_image


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
