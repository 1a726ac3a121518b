"""Uploaded bytes and JSON arrays -> pixel arrays, with every limit checked first.

Errors are `BadInput` with a message that names the problem and the image;
the API turns them into a 400.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


class BadInput(ValueError):
    """A request the service refuses, with a message for the client."""


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and size before decoding any pixel."""
    if not data:
        raise BadInput(f"{name}: empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise BadInput(f"{name}: not a supported image ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"{name}: too many pixels to decode safely (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as error:  # a header cut short, say
        raise BadInput(f"{name}: cannot decode image ({error})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadInput(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadInput(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    return image


def _pixels(image: Image.Image) -> np.ndarray:
    """Grayscale, RGB or RGBA array in [0, 255]; other modes are converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return (np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.float32)
    if image.mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    keep_alpha = "A" in image.mode or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if keep_alpha else "RGB"))


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Bytes of a PNG, JPEG, BMP, GIF (first frame) or WebP file -> pixels."""
    image = _open(data, name, max_pixels)
    try:
        image.seek(0)
        image.load()
        return _pixels(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInput(f"{name}: cannot decode image ({error})") from None
    finally:
        image.close()


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
