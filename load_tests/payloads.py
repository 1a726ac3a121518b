"""Real images for the load tests: scikit-learn's bundled digits as small PNG files.

Kept free of Locust (which monkey-patches the interpreter with gevent on import),
so the runner can read the same images in-process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from adapters.images import read_image

FOLDER = Path(__file__).resolve().parent / "payloads"
SAMPLES = 30  # MC samples per load-test request; the in-process reference uses the same T


def make_payloads(folder: Path = FOLDER, count: int = 20) -> list[Path]:
    """The first `count` digits as 8-bit grayscale PNG files (made once, ~120 bytes each)."""
    folder.mkdir(exist_ok=True)
    paths = [folder / f"digit_{i:02d}.png" for i in range(count)]
    if not all(p.is_file() for p in paths):
        digits = load_digits()
        for i, path in enumerate(paths):
            Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).save(path)
    return paths


def pixel_arrays(paths: list[Path]) -> list[np.ndarray]:
    """The images' pixels, decoded as the service decodes them."""
    return [read_image(p) for p in paths]
