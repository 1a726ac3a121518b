"""The one image decoder: bytes of an image file -> pixels, for `uqserve predict` and the service.

Every limit is checked on the header, before any pixel is decoded. Errors are
`ImageError` with a message that names the image and the problem; the service
answers them with a 400, the command line prints them.

What comes out, by file:

- grayscale (L), RGB and RGBA: as stored, uint8;
- 16-bit and 32-bit integer grayscale (I;16, I): scaled by 1/257 into [0, 255]
  (65535 -> 255), float32, so bright pixels keep their differences;
- palette (P) and LA: RGBA when the image has transparency, else RGB;
- CMYK, YCbCr, 1-bit and other modes: converted to RGB by Pillow;
- animated GIF and WebP: the first frame;
- EXIF orientation is applied, so the pixels are the way the image is shown.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # file names looked for in folders
MAX_PIXELS = 25_000_000  # default limit on width x height: refuses decompression bombs
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I")


class ImageError(ValueError):
    """An image that cannot or may not be decoded; the message names it and says why."""


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and size before decoding any pixel."""
    if not data:
        raise ImageError(f"{name}: empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a supported image ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too many pixels to decode safely (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as error:  # a header cut short, say
        raise ImageError(f"{name}: cannot decode image ({error})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
        )
    return image


def _pixels(image: Image.Image) -> np.ndarray:
    """Grayscale (H, W), RGB (H, W, 3) or RGBA (H, W, 4) pixels in [0, 255]."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GRAY:
        return (np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.float32)
    if image.mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    keep_alpha = "A" in image.mode or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if keep_alpha else "RGB"))


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG, JPEG, BMP, GIF (first frame) or WebP file -> pixels in [0, 255]."""
    image = _open(data, name, max_pixels)
    try:
        image.seek(0)
        image.load()
        return _pixels(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: cannot decode image ({error})") from None
    finally:
        image.close()


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file -> pixels, decoded exactly as the service decodes an upload."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot read file ({error.strerror or error})") from None
    return decode_image(data, str(path), max_pixels)
