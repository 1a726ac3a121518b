"""Pixel arrays -> a checked batch, every limit checked first.

Uploaded files go through the one image decoder, `adapters.images`, which the
command line uses too. Errors here are `BadInput`, there `ImageError`; both
name the problem and the image, and the API answers both with a 400.
"""

from __future__ import annotations

import numpy as np

CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA


class BadInput(ValueError):
    """A request the service refuses, with a message for the client."""


def check_array(array: np.ndarray, max_images: int, max_pixels: int) -> np.ndarray:
    """`/predict_array`'s `images`, batch axis first -> the checked batch (N, H, W[, C]).

    A 3-D array is N grayscale images (N, H, W), never one colour image: with a
    last axis of 1, 3 or 4 it could be meant as either, so it is refused rather
    than guessed (send (N, H, W, C), or one image as [image]).
    """
    if array.ndim == 3 and array.shape[-1] in CHANNELS:
        n, h, w = array.shape
        raise BadInput(
            f"images: shape {array.shape} is ambiguous: {n} grayscale images {h}x{w}, or one "
            f"{n}x{h} image with {w} channel{'s' * (w > 1)}; send a batch as (N, H, W, C) "
            f"(one image: [image], shape (1, {n}, {h}, {w}))"
        )
    return check_batch(array, "images", max_images, max_pixels)


def check_batch(array: np.ndarray, name: str, max_images: int, max_pixels: int) -> np.ndarray:
    """A batch of pixels (N, H, W) or (N, H, W, C) in [0, 255] -> the same, every limit checked.

    Shared by `/predict_array` and the Open Inference Protocol's pixel input.
    """
    if array.ndim not in (3, 4):
        hint = "; one image is a batch of one: [image]" if array.ndim == 2 else ""
        raise BadInput(
            f"{name}: expected a batch (N, H, W) or (N, H, W, C), received shape "
            f"{array.shape}{hint}"
        )
    if array.ndim == 4 and array.shape[-1] not in CHANNELS:
        raise BadInput(f"{name}: expected 1, 3 or 4 channels, got {array.shape[-1]}")
    if array.shape[0] < 1:
        raise BadInput(f"{name}: expected at least one image, received none")
    if array.shape[0] > max_images:
        raise BadInput(f"{name}: {array.shape[0]} images exceeds the limit of {max_images}")
    if min(array.shape[1:3]) < 1 or array.shape[1] * array.shape[2] > max_pixels:
        raise BadInput(f"{name}: {array.shape[1]}x{array.shape[2]} pixels is out of range")
    if not np.isfinite(array).all():
        raise BadInput(f"{name}: values must be finite (no NaN or infinity)")
    if array.min() < 0.0 or array.max() > 255.0:
        raise BadInput(f"{name}: values must lie in [0, 255]")
    return array
