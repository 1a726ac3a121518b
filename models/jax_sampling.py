"""The sampled call on Keras' JAX backend: compiled per size bucket, masks drawn on the device.

`MCDropoutPredictor` uses this on JAX; on TensorFlow it runs its Keras
models (`predict_on_batch`) with masks drawn by NumPy. Same split, same
answers in distribution, other random draws.

JAX compiles (`jax.jit`) once per input shape, and adaptive batching makes
many batch sizes. So images are padded (with zeros) to a bucket, a power of
two up to the predictor's batch size, and the sum of T over the images, the
sample rows, to a power of two up to 8 rows and to at most 25 % more rows
above (m * 2**k, m in 4..7): a few compiles, made by `warm_up`. Powers of two
for images keep the expensive compiles (the base's) few, at the price of up
to twice the base's work on a batch just past a power of two.

    prefix   images (Bp, H, W, 3) -> embeddings (Bp, D), hidden (N, ...)     one compile per Bp
    suffix   hidden (N, ...), rows (Rp,), keys (Rp, 2), draws (Rp,)
             -> probabilities (Rp, C)                                       one per Rp
    predict  hidden (N, ...) -> probabilities (N, C), dropout off            one

The outputs of one program feed the next on the device; only the answers
come back to the host.

(N is the batch size: the prefix pads its hidden rows to it on the device,
so the suffix compiles once per row bucket, whatever the image bucket.)

The suffix draws every dropout mask on the device. Sample t of image i, in
the model's j-th Dropout, uses the key fold_in(fold_in(key_i, t), j), where
key_i is two 32-bit words of NumPy's `SeedSequence` of the image's seed. An
image's samples therefore never depend on the other images of its batch or
on the padding, a seed reproduces them, and its first t samples are the same
whatever T it asks for. Both models run with `training=False`: BatchNormalization
uses its moving statistics and nothing is updated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

KEY_IMPL = "threefry2x32"  # two uint32 words of key data, whatever jax_default_prng_impl says


def image_bucket(count: int, cap: int) -> int:
    """The padded image count: the next power of two, at most `cap` (and never below `count`)."""
    return max(count, min(1 << (count - 1).bit_length(), cap))


def row_bucket(count: int) -> int:
    """The padded row count: the smallest m * 2**k >= count with m in 4..7 (<= 25 % padding)."""
    if count <= 8:
        return 1 << (count - 1).bit_length()
    step = 1 << (count.bit_length() - 3)
    return -(-count // step) * step


def key_data(streams: Sequence[np.random.SeedSequence]) -> np.ndarray:
    """Each image's JAX key data (B, 2) uint32, from its seed's `SeedSequence`."""
    return np.stack([stream.generate_state(2, np.uint32) for stream in streams])


def _padded(images: np.ndarray, size: int) -> np.ndarray:
    """`images` (B, ...) float32, with zero images after them up to `size` (no copy when
    they fill it)."""
    if len(images) == size:
        return np.asarray(images, np.float32)
    batch = np.zeros((size, *images.shape[1:]), np.float32)
    batch[: len(images)] = images
    return batch


def _values(model: keras.Model) -> tuple[list[Any], list[Any]]:
    """The model's (trainable, non-trainable) variable values, for `stateless_call`: passed
    as arguments, not baked into the compiled program as constants."""
    return [v.value for v in model.trainable_variables], [
        v.value for v in model.non_trainable_variables
    ]


class JaxSampling:
    """The prefix and the sampled suffix as bucketed `jax.jit` functions."""

    def __init__(
        self,
        extractor: keras.Model,
        sampler: keras.Model,
        rates: Sequence[float],
        batch_size: int,
    ) -> None:
        self._extractor = extractor
        self._sampler = sampler
        self._rates = tuple(float(rate) for rate in rates)
        self._batch_size = batch_size
        self.traced = 0  # programs traced (each then compiled): warm-up checks count them
        self._prefix = jax.jit(self._prefix_call)
        self._suffix = jax.jit(self._suffix_call)
        self._predict = jax.jit(self._predict_call)

    @property
    def batch_size(self) -> int:
        """Most images in one call; the hidden rows are padded to it on the device."""
        return self._batch_size

    def _prefix_call(
        self, variables: tuple[list, list], images: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(embeddings (Bp, D), hidden rows padded to (N, ...)) of padded images (Bp, ...).

        The pooling is `models.density.pool`'s (a mean over the spatial axes),
        on the device: the two must stay equal.
        """
        self.traced += 1  # runs while tracing only: once per compiled shape
        (maps, hidden), _ = self._extractor.stateless_call(*variables, images, training=False)
        embeddings = jnp.mean(maps, axis=tuple(range(1, maps.ndim - 1)))  # (Bp, D)
        padding = [(0, self.batch_size - hidden.shape[0])] + [(0, 0)] * (hidden.ndim - 1)
        return embeddings, jnp.pad(hidden, padding)  # (Bp, D), (N, ...)

    def _suffix_call(
        self,
        variables: tuple[list, list],
        hidden: jax.Array,  # (N, ...)
        rows: jax.Array,  # (Rp,) image of each row
        keys: jax.Array,  # (Rp, 2) that image's key data
        draws: jax.Array,  # (Rp,) the row's sample number t
    ) -> jax.Array:
        """Probabilities (Rp, C): each row's hidden row through the suffix, its masks drawn
        from its image's key, its sample number and the Dropout's place."""
        self.traced += 1
        sample_keys = jax.vmap(jax.random.fold_in)(
            jax.random.wrap_key_data(keys, impl=KEY_IMPL), draws
        )  # (Rp,)
        masks = []
        for j, (shape, rate) in enumerate(zip(self._mask_shapes, self._rates, strict=True)):
            if rate == 0.0:
                masks.append(jnp.ones((rows.shape[0], *shape), jnp.float32))
                continue
            layer_keys = jax.vmap(lambda key, j=j: jax.random.fold_in(key, j))(sample_keys)
            keep = jax.vmap(lambda key, r=rate, s=shape: jax.random.bernoulli(key, 1.0 - r, s))(
                layer_keys
            )  # (Rp, *shape)
            masks.append(jnp.where(keep, jnp.float32(1.0 / (1.0 - rate)), jnp.float32(0.0)))
        inputs = [jnp.take(hidden, rows, axis=0), *masks]
        probabilities, _ = self._sampler.stateless_call(*variables, inputs, training=False)
        return probabilities  # (Rp, C)

    def _predict_call(self, sampler: tuple[list, list], hidden: jax.Array) -> jax.Array:
        """Deterministic probabilities (N, C) from the prefix's hidden rows: masks of ones."""
        self.traced += 1
        ones = [jnp.ones((hidden.shape[0], *shape), jnp.float32) for shape in self._mask_shapes]
        probabilities, _ = self._sampler.stateless_call(*sampler, [hidden, *ones], training=False)
        return probabilities

    @property
    def _mask_shapes(self) -> list[tuple[int, ...]]:
        """Each Dropout's mask shape per row, from the sampler's mask inputs."""
        return [tuple(int(d) for d in tensor.shape[1:]) for tensor in self._sampler.inputs[1:]]

    def _padded_prefix(self, images: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """The prefix on `images` padded to their bucket -> (embeddings, hidden), padded."""
        if not 0 < len(images) <= self.batch_size:
            raise ValueError(
                f"Invalid value for `images`: expected 1 to batch_size={self.batch_size} "
                f"images, received {len(images)}"
            )
        batch = _padded(images, image_bucket(len(images), self.batch_size))
        return self._prefix(_values(self._extractor), batch)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """At most `batch_size` images -> deterministic probabilities (B, C): the prefix,
        then the suffix with dropout off, the hidden rows staying on the device."""
        hidden = self._padded_prefix(images)[1]  # (N, ...)
        probabilities = self._predict(_values(self._sampler), hidden)
        return np.asarray(probabilities)[: len(images)]

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At most `batch_size` images -> (embeddings (B, D), hidden (B, ...))."""
        embeddings, hidden = self._padded_prefix(images)
        return np.asarray(embeddings)[: len(images)], np.asarray(hidden)[: len(images)]

    def sample(
        self,
        images: np.ndarray,
        counts: Sequence[int],
        streams: Sequence[np.random.SeedSequence],
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """At most `batch_size` images, image i sampled `counts[i]` times from the key of
        `streams[i]` -> ([(T_i, C)], embeddings (B, D), hidden (B, ...))."""
        keys = key_data(streams)  # (B, 2)
        embeddings, hidden = self._padded_prefix(images)
        total = int(sum(counts))
        padded = row_bucket(total)
        rows = np.zeros(padded, np.int32)
        rows[:total] = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        draws = np.zeros(padded, np.int32)
        draws[:total] = np.concatenate([np.arange(count, dtype=np.int32) for count in counts])
        row_keys = np.zeros((padded, 2), np.uint32)
        row_keys[:total] = keys[rows[:total]]
        probs = self._suffix(_values(self._sampler), hidden, rows, row_keys, draws)
        probs = np.asarray(probs)[:total]
        split = np.split(probs, np.cumsum(counts)[:-1])  # [(T_i, C)]
        n = len(images)
        return split, np.asarray(embeddings)[:n], np.asarray(hidden)[:n]

    def warm_up(self, input_shape: tuple[int, ...], max_samples: int) -> None:
        """Compile the prefix for every image bucket, the deterministic suffix, and the
        sampled suffix for every row bucket up to `batch_size` images of `max_samples`
        samples each: any mix of T up to `max_samples` then compiles nothing."""
        sizes = {image_bucket(n, self.batch_size) for n in range(1, self.batch_size + 1)}
        for size in sorted(sizes):
            self._padded_prefix(np.zeros((size, *input_shape), np.float32))
        hidden = self._padded_prefix(np.zeros((1, *input_shape), np.float32))[1]
        self._predict(_values(self._sampler), hidden)
        most = row_bucket(self.batch_size * max_samples)
        for rows in sorted({row_bucket(count) for count in range(1, most + 1)}):
            zeros = np.zeros(rows, np.int32)
            keys = np.zeros((rows, 2), np.uint32)
            self._suffix(_values(self._sampler), hidden, zeros, keys, zeros)
