"""JSON pixel arrays -> a checked batch, every limit checked first.

Uploaded files go through the one image decoder, `adapters.images`, which the
command line uses too. Errors here are `BadInput`, there `ImageError`; both
name the problem and the image, and the API answers both with a 400.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BadInput(ValueError):
    """A request the service refuses, with a message for the client."""


def check_array(values: Any, max_images: int, max_pixels: int) -> np.ndarray:
    """JSON pixels, (H, W), (H, W, C) or (N, H, W, C) in [0, 255] -> (N, H, W[, C])."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadInput("images: expected a rectangular nested list of numbers") from None
    if array.ndim in (2, 3):  # one image, (H, W) or (H, W, C)
        array = array[None]
    if array.ndim not in (3, 4):
        raise BadInput(
            f"images: expected shape (H, W), (H, W, C) or (N, H, W, C), got {array.shape}"
        )
    if array.ndim == 4 and array.shape[-1] not in (1, 3, 4):
        raise BadInput(f"images: expected 1, 3 or 4 channels, got {array.shape[-1]}")
    if array.shape[0] > max_images:
        raise BadInput(f"images: {array.shape[0]} images exceeds the limit of {max_images}")
    if min(array.shape[1:3]) < 1 or array.shape[1] * array.shape[2] > max_pixels:
        raise BadInput(f"images: {array.shape[1]}x{array.shape[2]} pixels is out of range")
    if not np.isfinite(array).all():
        raise BadInput("images: values must be finite (no NaN or infinity)")
    if array.min() < 0.0 or array.max() > 255.0:
        raise BadInput("images: values must lie in [0, 255]")
    return array
