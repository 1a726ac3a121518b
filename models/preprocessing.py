"""The one preprocessing function, shared by training, evaluation and serving.

Pixels in [0, 255], any size, grayscale / RGB / RGBA in; the model's input size
with VGG16's own `preprocess_input` ('caffe': BGR, ImageNet mean subtracted)
out. The settings come from the model's metadata (`PreprocessingConfig`), so a
served model always sees what it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from models.config import PreprocessingConfig


def _check_rank(shape: tuple[int | None, ...]) -> None:
    if len(shape) not in (3, 4):
        raise ValueError(
            "Invalid value for `images`: expected shape (B, H, W) or (B, H, W, C), "
            f"received shape={tuple(shape)}"
        )


def _to_rgb(images: Any, alpha_background: float) -> Any:
    """(B, H, W), (B, H, W, 1|3|4) -> (B, H, W, 3) float32; RGBA is composited."""
    _check_rank(images.shape)
    images = ops.cast(images, "float32")
    if len(images.shape) == 3:
        images = ops.expand_dims(images, -1)
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


def rgb_at_size(images: Any, config: PreprocessingConfig) -> Any:
    """Same-sized images -> RGB at the model's size (B, H, W, 3), pixels still in [0, 255].

    The first half of `preprocess_batch`: grayscale repeated, RGBA composited
    on `alpha_background`, resized with antialiasing. Image folders are
    loaded through it, so training sees each file as serving does.
    """
    rgb = _to_rgb(images, config.alpha_background)
    return ops.image.resize(
        rgb, config.image_size, interpolation=config.interpolation, antialias=True
    )


def preprocess_batch(images: Any, config: PreprocessingConfig) -> Any:
    """A batch of same-sized images -> network input (B, H, W, 3), as a backend tensor.

    Works eagerly and inside a `tf.data` map, so training can preprocess on the fly.
    """
    return keras.applications.vgg16.preprocess_input(rgb_at_size(images, config))


GROUP_PIXELS = 2**22  # most input pixels preprocessed in one call: bounds peak memory


def _same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of same-sized images, in groups of at most GROUP_PIXELS pixels (one call each)."""
    groups = []
    for shape in dict.fromkeys(np.shape(image) for image in images):  # first-seen order
        members = [i for i, image in enumerate(images) if np.shape(image) == shape]
        per_call = max(1, GROUP_PIXELS // max(1, shape[0] * shape[1]))
        groups += [members[k : k + per_call] for k in range(0, len(members), per_call)]
    return groups


def _by_size(images: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`run` on each group of same-sized images, the rows put back in the input order."""
    if len(images) == 0:
        raise ValueError("Invalid value for `images`: expected at least one image, received 0")
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for group in _same_size_groups(images):
        for i, row in zip(group, run(np.stack([images[i] for i in group])), strict=True):
            out[i] = row
    return np.stack(out)


def preprocess_images(
    images: np.ndarray | Sequence[np.ndarray], config: PreprocessingConfig
) -> np.ndarray:
    """A batch array, or a list of images of different sizes -> (B, H, W, 3) float32.

    Eager: fine for a one-off call. Code that preprocesses request after
    request should hold a `Preprocessor`, the same function compiled.
    """

    def run(batch: np.ndarray) -> np.ndarray:
        return ops.convert_to_numpy(preprocess_batch(batch, config))

    return run(images) if isinstance(images, np.ndarray) else _by_size(images, run)


class _Preprocess(keras.layers.Layer):
    """`preprocess_batch` as a layer, so a Keras model can compile it."""

    def __init__(self, config: PreprocessingConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config

    def call(self, images: Any) -> Any:
        return preprocess_batch(images, self.config)


class Preprocessor:
    """`preprocess_images` compiled: what a server calls on every request.

    Eagerly, TensorFlow's per-op dispatch costs more than the work on small
    images (one 8x8 digit to 64x64: 2.5 ms eager, 0.65 ms compiled, on this
    project's 2-core CPU). One graph per channel count (1, 3, 4), built on
    first use, or by `warm_up`. The output equals `preprocess_images` (a test
    checks).

    On Keras' JAX backend the graph is a `jax.jit` program, which compiles
    once per input shape; images then go through it one at a time, so it
    compiles once per image size (and channel count), whatever the batch.
    """

    def __init__(self, config: PreprocessingConfig) -> None:
        self.config = config
        self._graphs: dict[int, keras.Model] = {}
        self._per_image = keras.backend.backend() == "jax"

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """A batch array, or a list of images of different sizes -> (B, H, W, 3) float32."""
        if self._per_image:
            if isinstance(images, np.ndarray):
                _check_rank(images.shape)
            if len(images) == 0:
                return _by_size(images, self._run)  # its error
            return np.concatenate([self._run(np.asarray(image)[None]) for image in images])
        return self._run(images) if isinstance(images, np.ndarray) else _by_size(images, self._run)

    def warm_up(self) -> None:
        """Build every graph and trace it for any batch and image size, so no request does.

        Two calls that differ in every dimension: TensorFlow then retraces
        once with the dimensions left open (`reduce_retracing`), and never again.
        """
        for channels in (1, 3, 4):
            for shape in ((1, 8, 8), (2, 9, 10)):
                self._run(np.zeros((*shape, channels), "float32"))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        _check_rank(batch.shape)
        batch = np.asarray(batch, dtype="float32")
        batch = batch[..., None] if batch.ndim == 3 else batch  # (B, H, W, C)
        channels = batch.shape[-1]
        if channels not in self._graphs:
            self._graphs[channels] = self._graph(channels)
        return self._graphs[channels].predict_on_batch(batch)

    def _graph(self, channels: int) -> keras.Model:
        """image batch (B, H, W, channels) -> network input; raises for bad channels."""
        inputs = keras.Input(shape=(None, None, channels))
        graph = keras.Model(inputs, _Preprocess(self.config)(inputs))
        graph.jit_compile = self._per_image  # TensorFlow: XLA would compile per image size
        return graph
