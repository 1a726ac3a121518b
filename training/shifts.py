"""Distribution shifts for `uqserve evaluate --shift`: the test split, moved step by step.

As in Ovadia et al. (2019): rotation from 0 to 180 degrees (their rotated
MNIST), and four corruptions at five intensities each, after ImageNet-C /
CIFAR-10-C (Hendrycks & Dietterich 2019): Gaussian noise, Gaussian blur,
contrast and translation. Intensity 0 is the clean image for every shift.

Shifts act on images at the model's input size, RGB, pixels in [0, 255] (what
`models.preprocessing.rgb_at_size` returns), so one intensity means the same
at every dataset's native size: blur and translation are fractions of the
image side. Pixels moved in from outside (rotation, translation) are black,
the background of the digit and clothing datasets. Results are clipped to
[0, 255]; noise is drawn from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Transform = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
SPATIAL = (1, 2)  # the H and W axes of (N, H, W, C)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(
            "Invalid value for `images`: expected shape (N, H, W, C), "
            f"received shape={images.shape}"
        )
    return images


def rotate(images: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Every image turned counter-clockwise by `degrees` about its centre (bilinear)."""
    turned = ndimage.rotate(images, degrees, axes=SPATIAL, reshape=False, order=1, cval=0.0)
    return np.clip(turned, 0.0, 255.0)


def gaussian_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, standard deviation `sigma` x 255."""
    noise = rng.normal(0.0, sigma * 255.0, images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 255.0)


def blur(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with a standard deviation of `fraction` x the image side."""
    sigma = fraction * max(images.shape[1:3])
    return np.clip(ndimage.gaussian_filter(images, (0.0, sigma, sigma, 0.0)), 0.0, 255.0)


def contrast(images: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Each image's pixels pulled towards its own mean: x -> mean + factor (x - mean)."""
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(mean + factor * (images - mean), 0.0, 255.0)


def translate(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The content moved right and down by `fraction` x the image side (bilinear)."""
    height, width = images.shape[1:3]
    offset = (0.0, fraction * height, fraction * width, 0.0)
    return np.clip(ndimage.shift(images, offset, order=1, cval=0.0), 0.0, 255.0)


@dataclass(frozen=True)
class Shift:
    """One kind of shift: its transform and its parameter at intensities 1, 2, ...

    Intensity 0 is the clean image (parameter `clean`, which each transform
    maps to the identity exactly).
    """

    name: str
    transform: Transform
    levels: tuple[float, ...]
    clean: float
    unit: str

    @property
    def intensities(self) -> int:
        """How many shifted intensities (besides the clean 0)."""
        return len(self.levels)

    def parameter(self, intensity: int) -> float:
        """The transform's parameter at `intensity` (0: clean)."""
        if not 0 <= intensity <= self.intensities:
            raise ValueError(
                f"Invalid value for `intensity`: expected 0..{self.intensities} for "
                f"{self.name}, received intensity={intensity}"
            )
        return self.clean if intensity == 0 else self.levels[intensity - 1]

    def apply(self, images: np.ndarray, intensity: int, seed: int) -> np.ndarray:
        """`images` (N, H, W, C) in [0, 255] at `intensity`; the clean ones are copied."""
        images = _check_images(images)
        if intensity == 0:
            return images.copy()
        rng = np.random.default_rng([seed, SHIFTS.index(self), intensity])
        return self.transform(images, self.parameter(intensity), rng).astype(np.float32)


ROTATION = Shift("rotation", rotate, tuple(range(15, 181, 15)), 0.0, "degrees")
SHIFTS: tuple[Shift, ...] = (
    ROTATION,
    Shift("gaussian_noise", gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), 0.0, "sigma / 255"),
    Shift("blur", blur, (0.01, 0.02, 0.03, 0.045, 0.06), 0.0, "sigma / side"),
    Shift("contrast", contrast, (0.4, 0.3, 0.2, 0.1, 0.05), 1.0, "factor"),
    Shift("translation", translate, (0.05, 0.1, 0.15, 0.2, 0.25), 0.0, "fraction of side"),
)
CORRUPTIONS = SHIFTS[1:]  # the five-intensity shifts, summarised together
QUICK_INTENSITIES = {"rotation": (6, 12)}  # `--quick`: 90 and 180 degrees; corruptions 1 and 5


def by_name(name: str) -> Shift:
    """The shift called `name`."""
    for shift in SHIFTS:
        if shift.name == name:
            return shift
    names = ", ".join(shift.name for shift in SHIFTS)
    raise ValueError(f"Invalid value for `shift`: expected one of {names}, received {name!r}")


def conditions(quick: bool = False) -> list[tuple[Shift, int]]:
    """Every (shift, intensity) to measure besides the clean split, mildest first.

    `quick` keeps two per shift (90 and 180 degrees; the mildest and strongest
    corruption) for tests and smoke runs.
    """
    chosen = []
    for shift in SHIFTS:
        every = range(1, shift.intensities + 1)
        quick_set = QUICK_INTENSITIES.get(shift.name, (1, shift.intensities))
        chosen += [(shift, i) for i in (quick_set if quick else every)]
    return chosen
