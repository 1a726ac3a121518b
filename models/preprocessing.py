"""The one preprocessing function, shared by training, evaluation and serving.

Pixels in [0, 255], any size, grayscale / RGB / RGBA in; the model's input size
with VGG16's own `preprocess_input` ('caffe': BGR, ImageNet mean subtracted)
out. The settings come from the model's metadata (`PreprocessingConfig`), so a
served model always sees what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from models.config import PreprocessingConfig


def _to_rgb(images: Any, alpha_background: float) -> Any:
    """(B, H, W), (B, H, W, 1|3|4) -> (B, H, W, 3) float32; RGBA is composited."""
    images = ops.cast(images, "float32")
    if len(images.shape) == 3:
        images = ops.expand_dims(images, -1)
    if len(images.shape) != 4:
        raise ValueError(
            "Invalid value for `images`: expected shape (B, H, W) or (B, H, W, C), "
            f"received shape={tuple(images.shape)}"
        )
    channels = images.shape[-1]
    if channels == 1:
        return ops.repeat(images, 3, axis=-1)
    if channels == 3:
        return images
    if channels == 4:
        alpha = images[..., 3:] / 255.0
        return images[..., :3] * alpha + alpha_background * (1.0 - alpha)
    raise ValueError(
        f"Invalid value for `images`: expected 1, 3 or 4 channels, received channels={channels}"
    )


def preprocess_batch(images: Any, config: PreprocessingConfig) -> Any:
    """A batch of same-sized images -> network input (B, H, W, 3), as a backend tensor.

    Works eagerly and inside a `tf.data` map, so training can preprocess on the fly.
    """
    rgb = _to_rgb(images, config.alpha_background)
    resized = ops.image.resize(
        rgb, config.image_size, interpolation=config.interpolation, antialias=True
    )
    return keras.applications.vgg16.preprocess_input(resized)


GROUP_PIXELS = 2**22  # most input pixels preprocessed in one call: bounds peak memory


def _same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of same-sized images, in groups of at most GROUP_PIXELS pixels (one call each)."""
    groups = []
    for shape in dict.fromkeys(np.shape(image) for image in images):  # first-seen order
        members = [i for i, image in enumerate(images) if np.shape(image) == shape]
        per_call = max(1, GROUP_PIXELS // max(1, shape[0] * shape[1]))
        groups += [members[k : k + per_call] for k in range(0, len(members), per_call)]
    return groups


def preprocess_images(
    images: np.ndarray | Sequence[np.ndarray], config: PreprocessingConfig
) -> np.ndarray:
    """A batch array, or a list of images of different sizes -> (B, H, W, 3) float32."""
    if isinstance(images, np.ndarray):
        return ops.convert_to_numpy(preprocess_batch(images, config))
    if len(images) == 0:
        raise ValueError("Invalid value for `images`: expected at least one image, received 0")
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for group in _same_size_groups(images):
        batch = preprocess_batch(np.stack([images[i] for i in group]), config)
        for i, row in zip(group, ops.convert_to_numpy(batch), strict=True):
            out[i] = row
    return np.stack(out)
