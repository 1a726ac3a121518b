"""Monte Carlo dropout prediction that runs the deterministic part once.

The model is split at its first Dropout layer:

    prefix = frozen base + head layers before the first Dropout   (runs on B images)
    suffix = the first Dropout and everything after it            (runs on B*T rows)

Sampling is one compiled Keras model per call (`predict_on_batch`: a traced
graph; on the CPU, at 64x64, the prefix alone is 1.3x faster than
layer-by-layer eager calls at batch 16 and 2x at batch 1): the prefix on the
B images, each image's output taken T times (a gather inside the graph), the
suffix on the B*T rows with the dropout masks as inputs. The prefix and the
suffix are also compiled apart, for deterministic features (`forward`) and
for callers holding the prefix's output (`sample_from_hidden`). Every layer
is called with `training=False` (BatchNormalization uses its moving
statistics and never updates them); dropout is applied by multiplying with
masks drawn here. Each image draws its
masks from its own random stream, so an image's samples never depend on the
other images in its batch, and a seed makes a call reproducible.

On Keras' JAX backend the served calls (`sample`, `sample_each`, `predict`,
`forward`) run the same split as `jax.jit` programs padded to a few batch
sizes, with the masks drawn on the device from per-image keys
(`models.jax_sampling`): other draws than NumPy's, the same distribution.
`sample_from_hidden` (calibration) draws with NumPy on every backend.

The model is never called in training mode: in Keras 3 that would also put
BatchNormalization on batch statistics and overwrite its moving averages.

Plain `keras.layers.Dropout` (elementwise, no `noise_shape`) is the only
random layer supported in the head; construction refuses the others rather
than sample them wrongly or not at all: Dropout subclasses (SpatialDropout1D/
2D/3D drop whole channels, not elements), a Dropout with a `noise_shape`,
GaussianDropout and AlphaDropout (not Dropout subclasses: they would silently
stay off), and Dropout inside a nested model (not split, so never sampled).
GaussianNoise is allowed: additive noise for training only, not part of MC
dropout; in inference it is the identity, here as in `model.predict`.

`temperature` (the model card's, fitted at training; `models.temperature`)
tempers each dropout sample before the caller averages them; 1 leaves them
as the network gives them. The deterministic answer is never tempered.

`base_dtype="bfloat16"` (or "float16") runs the frozen base in Keras mixed
precision: a copy of the base computes in that type, its weights and
everything after it stay float32. On CPUs with bfloat16 instructions
(AVX512_BF16, AMX) and on GPUs it is much faster; elsewhere it can be slower.
The model itself is not changed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops

from models.architecture import get_base, get_head
from models.config import BASE_DTYPES, BaseDtype
from models.density import pool
from models.temperature import check_temperature, temper

if TYPE_CHECKING:
    from models.jax_sampling import JaxSampling

# Most values of the repeated (b*T, ...) suffix input in one call: 16 MiB of
# float32. Fewer, larger calls pay Keras' per-call cost once (at T=100 on the
# default head: `sample_from_hidden` takes 163 images a call, the one-call
# path its `batch_size`).
SUFFIX_VALUES = 2**22


def _split_index(layers: Sequence[keras.layers.Layer]) -> int:
    """Index of the first Dropout layer, or len(layers) when there is none."""
    for index, layer in enumerate(layers):
        if isinstance(layer, keras.layers.Dropout):
            return index
    return len(layers)


_TRAINING_NOISE = (keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _unsupported(layer: keras.layers.Layer) -> str | None:
    """Why `layer` cannot be in the head, or None when the predictor handles it."""
    if type(layer) is keras.layers.Dropout:
        if layer.noise_shape is None:
            return None
        return f"its masks are shared along axes (noise_shape={layer.noise_shape})"
    if isinstance(layer, keras.layers.Dropout):
        return "a Dropout subclass; its masks would be drawn elementwise, not its own way"
    if isinstance(layer, _TRAINING_NOISE):
        return "random in training mode only, which is never used: its noise would be left out"
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            if type(inner) is keras.layers.Dropout or _unsupported(inner) is not None:
                return f"a nested model with {type(inner).__name__} {inner.name!r}, never sampled"
    return None


def _check_head(layers: Sequence[keras.layers.Layer]) -> None:
    """Refuse random layers that MC sampling would draw wrongly or leave out."""
    for layer in layers:
        reason = _unsupported(layer)
        if reason is not None:
            raise ValueError(
                "Invalid value for `model`: expected a head whose only random layers are "
                "plain `keras.layers.Dropout` (elementwise masks, no `noise_shape`), received "
                f"layer {layer.name!r} of class {type(layer).__name__}: {reason}"
            )


ImageSeed = int | np.integer | Sequence[int | np.integer]


def _seed_int(value: object, argument: str) -> int:
    """A non-negative Python or NumPy integer as an int, or a Keras-style error."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(
        f"Invalid value for `{argument}`: expected a non-negative integer (Python or NumPy), "
        f"received {argument}={value!r} of type {type(value).__name__}"
    )


def _image_entropy(seed: object, index: int) -> int | list[int]:
    """One image's seed (an integer, or a non-empty sequence of them) as NumPy's entropy."""
    argument = f"image_seeds[{index}]"
    if (isinstance(seed, np.ndarray) and seed.ndim == 1) or (
        isinstance(seed, Sequence) and not isinstance(seed, str | bytes)
    ):
        if len(seed) == 0:
            raise ValueError(
                f"Invalid value for `{argument}`: expected an integer or a non-empty sequence "
                f"of integers, received {argument}={seed!r}"
            )
        return [_seed_int(part, argument) for part in seed]
    return _seed_int(seed, argument)


def _image_streams(
    batch: int, seed: int | np.integer | None, image_seeds: Sequence[ImageSeed] | None
) -> list[np.random.SeedSequence]:
    """One seed per image: from `image_seeds`, from (seed, index), or fresh.

    NumPy integers seed exactly as the equal Python ints (both become ints here).
    """
    if image_seeds is not None:
        if len(image_seeds) != batch:
            raise ValueError(
                f"Invalid value for `image_seeds`: expected {batch} seeds, "
                f"received {len(image_seeds)}"
            )
        entropy = [_image_entropy(s, i) for i, s in enumerate(image_seeds)]
        return [np.random.SeedSequence(e) for e in entropy]
    if seed is not None:
        start = _seed_int(seed, "seed")
        return [np.random.SeedSequence([start, index]) for index in range(batch)]
    return np.random.SeedSequence().spawn(batch)


class MCDropoutPredictor:
    """Samples class probabilities (B, T, C) from a model built by `build_model`."""

    def __init__(
        self,
        model: keras.Model,
        batch_size: int = 32,
        base_dtype: BaseDtype = "float32",
        temperature: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(
                f"Invalid value for `batch_size`: expected >= 1, received batch_size={batch_size}"
            )
        if base_dtype not in BASE_DTYPES:
            raise ValueError(
                f"Invalid value for `base_dtype`: expected one of {BASE_DTYPES}, "
                f"received base_dtype={base_dtype!r}"
            )
        self.temperature = check_temperature(temperature)
        layers = list(get_head(model).layers)
        _check_head(layers)
        self.model = model
        self.batch_size = batch_size
        self.base_dtype = base_dtype
        split = _split_index(layers)
        base = _in_precision(get_base(model), base_dtype)
        self._base_copy = None if base is get_base(model) else base
        self._extractor = _extractor(base, layers[:split])
        self._prefix = layers[:split]  # head layers before the first Dropout
        suffix = layers[split:]  # the first Dropout and everything after it
        self._sampler, self._dropouts = _sampler(suffix, self._extractor.outputs[1].shape)
        self._jax = _jax_sampling(self._extractor, self._sampler, self._dropouts, batch_size)
        if self._jax is None:
            self._fused = _fused(self._extractor, self._sampler, self._dropouts)

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return int(self.model.output.shape[-1])

    @property
    def served_models(self) -> list[keras.Model]:
        """Every model whose weights compute the answers, for `weights_digest(*served_models)`.

        The model, plus the base's mixed-precision copy when `base_dtype` is
        not float32: that copy, not the model's own base, computes the features.
        """
        return [self.model] if self._base_copy is None else [self.model, self._base_copy]

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The deterministic part, once per image -> (embeddings (B, D), hidden (B, ...)).

        `embeddings` are the base's globally pooled features (for the density
        score); `hidden` is the input of the first Dropout (for sampling).
        """
        embeddings, hidden = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            if self._jax is not None:
                pooled, x = self._jax.forward(chunk)
            else:
                maps, x = self._extractor.predict_on_batch(chunk)
                pooled = pool(maps)
            embeddings.append(pooled)  # (b, D)
            hidden.append(x)  # (b, ...)
        return np.concatenate(embeddings, axis=0), np.concatenate(hidden, axis=0)

    def warm_up(self, input_shape: tuple[int, ...], max_samples: int = 2) -> None:
        """Trace the compiled graphs for any batch size, so no request pays for it.

        TensorFlow: two calls of different sizes; it then retraces once with
        the batch dimension left open (`reduce_retracing`), and never again,
        whatever T. JAX compiles per shape: every image bucket, and every row
        bucket of up to `batch_size` images with up to `max_samples` each.
        """
        if self._jax is not None:
            self._jax.warm_up(input_shape, max_samples)
            return
        for batch in (1, 2):
            images = np.zeros((batch, *input_shape), dtype="float32")
            hidden = self.forward(images)[1]
            self.sample_from_hidden(hidden, 2, np.random.default_rng(0).spawn(batch))
            self._sample_images(images, [2] * batch, np.random.SeedSequence(0).spawn(batch))

    def hidden(self, images: np.ndarray) -> np.ndarray:
        """The input of the first Dropout (B, ...): base + head layers before it."""
        return self.forward(images)[1]

    def hidden_from_maps(self, maps: np.ndarray) -> np.ndarray:
        """The input of the first Dropout (B, ...) from the base's feature maps (B, h, w, 512).

        For callers that cached the base's output (`uqserve compare` trains and
        samples many heads on the same maps), so the base never runs again.
        """
        chunks = []
        for start in range(0, len(maps), self.batch_size):
            x = ops.convert_to_tensor(maps[start : start + self.batch_size])
            for layer in self._prefix:
                x = layer(x, training=False)
            chunks.append(ops.convert_to_numpy(x))
        return np.concatenate(chunks, axis=0)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Deterministic probabilities (B, C): dropout off, equal to `model(x)` (float error)."""
        if self._jax is not None:  # compiled prefix and suffix, per chunk
            chunks = range(0, len(images), self.batch_size)
            return np.concatenate(
                [self._jax.predict(images[s : s + self.batch_size]) for s in chunks]
            )
        return self.predict_from_hidden(self.hidden(images))

    def sample(
        self,
        images: np.ndarray,
        samples: int,
        seed: int | np.integer | None = None,
        image_seeds: Sequence[ImageSeed] | None = None,
    ) -> np.ndarray:
        """T Monte Carlo dropout samples of the class probabilities, shaped (B, T, C).

        `seed` makes the call reproducible (image i uses the stream (seed, i));
        `image_seeds` gives each image its own seed (an int or a tuple such as
        (seed, i)), for callers that batch several requests together. Seeds are
        non-negative Python or NumPy integers; a NumPy integer draws exactly
        what the equal Python int draws.
        """
        if samples < 1:
            raise ValueError(
                f"Invalid value for `samples`: expected >= 1, received samples={samples}"
            )
        streams = _image_streams(len(images), seed, image_seeds)  # checks seeds before computing
        draws = self._sample_images(images, [samples] * len(images), streams)[0]  # [(T, C)]
        return np.stack(draws)  # (B, T, C)

    def sample_each(
        self, images: np.ndarray, samples: Sequence[int], image_seeds: Sequence[ImageSeed]
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Like `sample`, but image i gets `samples[i]` draws.

        Returns a list of (T_i, C) arrays, the embeddings (B, D) and the hidden
        rows (B, ...), the input of the first Dropout (both for the OOD score).
        """
        if len(samples) != len(images) or min(samples, default=1) < 1:
            raise ValueError(
                f"Invalid value for `samples`: expected {len(images)} counts >= 1, "
                f"received {list(samples)}"
            )
        streams = _image_streams(len(images), None, image_seeds)  # checks seeds first
        return self._sample_images(images, list(samples), streams)

    def _sample_images(
        self, images: np.ndarray, counts: list[int], streams: Sequence[np.random.SeedSequence]
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """One compiled call per chunk of images: the deterministic part once per image,
        the suffix on each image's hidden row taken `counts[i]` times."""
        draws: list[np.ndarray] = []
        embeddings, hidden = [], []
        for start, end in self._chunks(counts):
            chunk = self._sample_chunk(images[start:end], counts[start:end], streams[start:end])
            draws += chunk[0]  # [(T_i, C)]
            embeddings.append(chunk[1])  # (b, D)
            hidden.append(chunk[2])  # (b, ...)
        if self.temperature != 1.0:
            draws = [temper(d[None], self.temperature)[0].astype(d.dtype) for d in draws]
        return draws, np.concatenate(embeddings, axis=0), np.concatenate(hidden, axis=0)

    def _sample_chunk(
        self, images: np.ndarray, counts: list[int], streams: Sequence[np.random.SeedSequence]
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """At most `batch_size` images -> ([(T_i, C)], embeddings (b, D), hidden (b, ...)).

        JAX draws the masks on the device (`models.jax_sampling`); otherwise
        NumPy draws them from each image's stream, in place, as inputs.
        """
        if self._jax is not None:
            return self._jax.sample(images, counts, streams)
        rngs = [np.random.default_rng(stream) for stream in streams]
        rows = np.repeat(np.arange(len(images), dtype="int32"), counts)  # (R,)
        masks = [_dropout_masks(rngs, counts, shape, rate) for shape, rate in self._dropouts]
        maps, x, probs = self._fused.predict_on_batch([images, rows, *masks])
        draws = np.split(np.asarray(probs), np.cumsum(counts)[:-1])  # [(T_i, C)]
        return draws, pool(maps), np.asarray(x)

    def _chunks(self, counts: list[int]) -> list[tuple[int, int]]:
        """Consecutive image ranges of at most `batch_size` images and (but on JAX, where
        a split would run the base on two padded buckets) SUFFIX_VALUES repeated values
        (at least one image each)."""
        width = int(np.prod([d for d in self._extractor.outputs[1].shape[1:]]))
        if self._jax is not None:
            width = 0
        chunks, start, values = [], 0, 0
        for i, count in enumerate(counts):
            if i > start and (
                i - start == self.batch_size or values + count * width > SUFFIX_VALUES
            ):
                chunks.append((start, i))
                start, values = i, 0
            values += count * width
        return [*chunks, (start, len(counts))] if counts else []

    def sample_from_hidden(
        self, hidden: np.ndarray, samples: int, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray:
        """Run the stochastic suffix on T copies of each image's `hidden` rows -> (B, T, C)."""
        batch = hidden.shape[0]
        width = int(np.prod(hidden.shape[1:]))
        chunk = max(1, SUFFIX_VALUES // (samples * width))  # images per suffix call
        out = []
        for start in range(0, batch, chunk):
            part = hidden[start : start + chunk]  # (b, ...)
            repeated = np.repeat(part, samples, axis=0)  # (b*T, ...), image-major
            probs = self._run_suffix(repeated, samples, rngs[start : start + chunk])
            out.append(probs.reshape(len(part), samples, -1))  # (b, T, C)
        draws = np.concatenate(out, axis=0)
        if self.temperature == 1.0:
            return draws
        return temper(draws, self.temperature).astype(draws.dtype)  # each sample, then averaged

    def predict_from_hidden(self, hidden: np.ndarray) -> np.ndarray:
        """Deterministic probabilities (B, C) from `hidden` rows: dropout off."""
        chunks = [
            self._run_suffix(hidden[start : start + self.batch_size], 1, None)
            for start in range(0, len(hidden), self.batch_size)
        ]
        return np.concatenate(chunks, axis=0)

    def _run_suffix(
        self, x: np.ndarray, samples: int, rngs: Sequence[np.random.Generator] | None
    ) -> np.ndarray:
        """The compiled suffix on rows (b*T, ...), image-major; each Dropout multiplies by
        per-image masks (masks of ones when `rngs` is None: the deterministic answer)."""
        masks = [
            np.ones((len(x), *shape), "float32")
            if rngs is None
            else _dropout_masks(rngs, samples, shape, rate)
            for shape, rate in self._dropouts
        ]
        return np.asarray(self._sampler.predict_on_batch([x, *masks]))


def _jax_sampling(
    extractor: keras.Model,
    sampler: keras.Model,
    dropouts: Sequence[tuple[tuple[int, ...], float]],
    batch_size: int,
) -> JaxSampling | None:
    """The bucketed, device-drawn sampled call on the JAX backend; None on the others."""
    if keras.backend.backend() != "jax":
        return None
    from models.jax_sampling import JaxSampling  # imports JAX

    return JaxSampling(extractor, sampler, [rate for _, rate in dropouts], batch_size)


def _fused(
    extractor: keras.Model,
    sampler: keras.Model,
    dropouts: Sequence[tuple[tuple[int, ...], float]],
) -> keras.Model:
    """One compiled model: (images (B, ...), rows (R,), masks) -> (maps, hidden, probabilities
    (R, C)). Row r samples image rows[r]: the deterministic part runs once per image, the
    suffix once per sample, in one call (fewer calls, and no second call to wait for the
    backend's threads while a server runs the next batch)."""
    images = keras.Input(shape=tuple(extractor.input.shape[1:]))
    rows = keras.Input(shape=(), dtype="int32")
    masks = [keras.Input(shape=shape) for shape, _ in dropouts]
    maps, hidden = extractor(images)
    probabilities = sampler([ops.take(hidden, rows, axis=0), *masks])
    fused = keras.Model([images, rows, *masks], [maps, hidden, probabilities])
    fused.jit_compile = False
    return fused


def _sampler(
    suffix: Sequence[keras.layers.Layer], hidden_shape: tuple[int | None, ...]
) -> tuple[keras.Model, list[tuple[tuple[int, ...], float]]]:
    """One compiled model: (hidden rows, one mask per Dropout) -> probabilities (rows, C).

    The suffix's own layers in inference mode, each Dropout replaced by a
    product with a mask input, so the masks come from the per-image streams
    drawn here and not from Keras' generator. Returns the model and each
    Dropout's (mask shape, rate). Compiled, it costs a third of layer-by-layer
    eager calls (800 rows of the default head on the CPU: 1.1 vs 3.2 ms).
    """
    inputs = x = keras.Input(shape=tuple(hidden_shape[1:]))
    masks, dropouts = [], []
    for layer in suffix:
        if isinstance(layer, keras.layers.Dropout):
            shape = tuple(int(d) for d in x.shape[1:])
            masks.append(keras.Input(shape=shape))
            dropouts.append((shape, float(layer.rate)))
            x = ops.multiply(x, masks[-1])
        else:
            x = layer(x, training=False)
    sampler = keras.Model([inputs, *masks], x)
    sampler.jit_compile = False  # XLA would compile once per row count
    return sampler, dropouts


def _extractor(base: keras.Model, prefix: Sequence[keras.layers.Layer]) -> keras.Model:
    """One model: image -> (base feature maps, input of the first Dropout).

    It shares the layers (and weights) of the served model. XLA is off: it
    compiles once per batch size, and adaptive batching makes many sizes (on
    the CPU it was also slower: 72 vs 90 images/s at batch 16).
    """
    inputs = keras.Input(shape=tuple(base.input.shape[1:]))
    maps = ops.cast(base(inputs, training=False), "float32")  # the head computes in float32
    hidden = maps
    for layer in prefix:
        hidden = layer(hidden, training=False)
    extractor = keras.Model(inputs, [maps, hidden])
    extractor.jit_compile = False
    strategy = getattr(extractor, "distribute_strategy", None)  # TensorFlow backend
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        # Keras would run every replica on the whole batch and return them all.
        raise ValueError(
            "Invalid context for `MCDropoutPredictor`: expected no tf.distribute scope, "
            f"received one with {strategy.num_replicas_in_sync} replicas; build the "
            "predictor after `with strategy.scope():` (the model may come from inside one)"
        )
    return extractor


def _in_precision(base: keras.Model, dtype: str) -> keras.Model:
    """The base itself for float32, else a copy computing in `dtype` (mixed precision:
    float32 weights, copied from the base)."""
    if dtype == "float32":
        return base
    policy = f"mixed_{dtype}"
    copy = keras.models.clone_model(
        base,
        clone_function=lambda layer: layer.__class__.from_config(
            {**layer.get_config(), "dtype": policy}
        ),
    )
    copy.set_weights(base.get_weights())
    copy.trainable = False
    return copy


def _dropout_masks(
    rngs: Sequence[np.random.Generator],
    samples: int | Sequence[int],
    shape: tuple[int, ...],
    rate: float,
) -> np.ndarray:
    """Inverted-dropout masks (sum T_i, *shape): 0 with probability `rate`, else 1/(1-rate).

    Image i's T_i masks (`samples`: one T for all, or one per image) are the
    next T_i*prod(shape) uniforms of its own stream, written in place.
    """
    counts = [int(samples)] * len(rngs) if isinstance(samples, numbers.Integral) else list(samples)
    masks = np.empty((sum(counts), *shape), dtype=np.float32)
    if rate == 0.0:
        masks.fill(1.0)
        return masks
    start = 0
    for rng, count in zip(rngs, counts, strict=True):
        rng.random(dtype=np.float32, out=masks[start : start + count])
        start += count
    return np.divide(masks >= rate, np.float32(1.0 - rate), out=masks, dtype=np.float32)


def naive_mc_samples(model: keras.Model, images: np.ndarray, samples: int) -> np.ndarray:
    """Reference: T full forward passes, Keras' own Dropout on, BN in inference mode -> (B, T, C).

    Costs T times a prediction; used to check and benchmark `MCDropoutPredictor`.
    """
    base, head = get_base(model), get_head(model)
    passes = []
    for _ in range(samples):
        x = ops.convert_to_tensor(base.predict_on_batch(images))  # compiled, as in the predictor
        for layer in head.layers:
            x = layer(x, training=isinstance(layer, keras.layers.Dropout))
        passes.append(ops.convert_to_numpy(x))
    return np.stack(passes, axis=1)  # (B, T, C)
