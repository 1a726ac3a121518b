"""The split MC-dropout predictor: shapes, invariants, BN safety, batch invariance,
refused random layers, seeds."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.architecture import compose, get_base
from models.config import HeadConfig
from models.head import HEAD_NAME
from models.mc_dropout import MCDropoutPredictor, naive_mc_samples
from models.temperature import temper
from tests.backends import ON_JAX, assert_same_numbers, jax_only, tensorflow_only
from tests.conftest import bn_statistics, randomize_bn_statistics, tiny_model


def test_samples_are_shaped_b_t_c_and_rows_sum_to_one(model, images):
    samples = MCDropoutPredictor(model).sample(images, samples=7, seed=0)
    assert samples.shape == (len(images), 7, 4)
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, atol=1e-5)
    assert np.all(samples >= 0.0)


def test_dropout_is_active_in_samples(model, images):
    samples = MCDropoutPredictor(model).sample(images, samples=20, seed=0)
    assert samples.std(axis=1).max() > 1e-3


def test_rate_zero_gives_the_deterministic_answer(images):
    head = HeadConfig(hidden_units=(16,), dropout_rates=(0.0,), input_dropout=0.0)
    zero = tiny_model(head)
    randomize_bn_statistics(zero)
    samples = MCDropoutPredictor(zero).sample(images, samples=5, seed=3)
    expected = keras.ops.convert_to_numpy(zero(images, training=False))
    for t in range(5):
        np.testing.assert_allclose(samples[:, t], expected, atol=1e-5)


def test_bn_moving_statistics_unchanged_by_prediction(model, images):
    before = bn_statistics(model)
    predictor = MCDropoutPredictor(model)
    predictor.sample(images, samples=10, seed=0)
    predictor.predict(images)
    naive_mc_samples(model, images, samples=3)
    for old, new in zip(before, bn_statistics(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_training_true_would_change_bn_statistics(images):
    """Control: the check above can fail; `model(x, training=True)` moves the averages."""
    control = tiny_model()
    randomize_bn_statistics(control)
    before = bn_statistics(control)
    control(images, training=True)
    changed = [
        not np.array_equal(a, b) for a, b in zip(before, bn_statistics(control), strict=True)
    ]
    assert any(changed)


def test_deterministic_answer_does_not_depend_on_the_batch(model, images):
    predictor = MCDropoutPredictor(model)
    together = predictor.predict(images)
    alone = np.concatenate([predictor.predict(images[i : i + 1]) for i in range(len(images))])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_sampled_answer_does_not_depend_on_the_batch(model, images):
    predictor = MCDropoutPredictor(model)
    seeds = [11, 22, 33, 44, 55, 66]
    together = predictor.sample(images, samples=8, image_seeds=seeds)
    for i, seed in enumerate(seeds):
        alone = predictor.sample(images[i : i + 1], samples=8, image_seeds=[seed])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)


def test_seed_makes_a_call_reproducible(model, images):
    predictor = MCDropoutPredictor(model)
    first = predictor.sample(images, samples=6, seed=5)
    np.testing.assert_array_equal(first, predictor.sample(images, samples=6, seed=5))
    assert not np.allclose(first, predictor.sample(images, samples=6, seed=6))


def test_split_mean_matches_naive_full_passes(model, images):
    """Mean of the split predictor vs T full passes with Keras' Dropout on and BN in inference.

    Both are Monte Carlo estimates of the same expectation; with T = 400 each,
    they must agree within 5 combined standard errors (plus 1e-3 for float32).
    """
    t = 400
    split = MCDropoutPredictor(model).sample(images, samples=t, seed=0)
    naive = naive_mc_samples(model, images, samples=t)
    standard_error = np.sqrt(split.var(axis=1) / t + naive.var(axis=1) / t)
    difference = np.abs(split.mean(axis=1) - naive.mean(axis=1))
    assert np.all(difference <= 5.0 * standard_error + 1e-3)
    deterministic = MCDropoutPredictor(model).predict(images)
    assert np.abs(naive.mean(axis=1) - deterministic).max() > 0.0  # the sampling is real


def test_bad_arguments_are_rejected(model, images):
    predictor = MCDropoutPredictor(model)
    with pytest.raises(ValueError, match="samples"):
        predictor.sample(images, samples=0)
    with pytest.raises(ValueError, match="image_seeds"):
        predictor.sample(images, samples=2, image_seeds=[1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        MCDropoutPredictor(model, batch_size=0)


def test_model_without_dropout_samples_its_deterministic_answer(images):
    head = HeadConfig(hidden_units=(8,), dropout_rates=(0.0,), batch_norm=False)
    plain = tiny_model(head)
    samples = MCDropoutPredictor(plain).sample(images, samples=3, seed=0)
    expected = keras.ops.convert_to_numpy(plain(images, training=False))
    np.testing.assert_allclose(samples, np.repeat(expected[:, None], 3, axis=1), atol=1e-5)


def test_forward_gives_embeddings_and_the_deterministic_answer(model, images):
    predictor = MCDropoutPredictor(model, batch_size=4)
    embeddings, hidden = predictor.forward(images)
    assert embeddings.shape == (len(images), 512)
    np.testing.assert_allclose(
        predictor.predict_from_hidden(hidden), predictor.predict(images), atol=1e-5
    )


def test_hidden_from_cached_base_maps_equals_the_full_pass(images):
    head = HeadConfig(hidden_units=(16,), dropout_rates=(0.3,), input_dropout=0.2)
    model = tiny_model(head)  # the first Dropout on the pooled features
    randomize_bn_statistics(model)
    predictor = MCDropoutPredictor(model, batch_size=4)
    maps = get_base(model).predict_on_batch(images)  # (B, h, w, 512)
    np.testing.assert_allclose(predictor.hidden_from_maps(maps), predictor.hidden(images),
                               atol=1e-5)  # fmt: skip
    deep = MCDropoutPredictor(tiny_model(HeadConfig(hidden_units=(16,), dropout_rates=(0.3,))))
    maps = get_base(deep.model).predict_on_batch(images)
    hidden = deep.hidden_from_maps(maps)  # after Dense, BN, activation
    assert hidden.shape == (len(images), 16)
    np.testing.assert_allclose(hidden, deep.hidden(images), atol=1e-5)


def test_sample_each_gives_each_image_its_own_count(model, images):
    predictor = MCDropoutPredictor(model)
    counts = [3, 5, 3, 1, 5, 2]
    seeds = [(9, i) for i in range(len(images))]
    draws, embeddings, hidden = predictor.sample_each(images, counts, seeds)
    np.testing.assert_allclose(hidden, predictor.hidden(images), atol=1e-5)
    assert [len(d) for d in draws] == counts
    assert embeddings.shape[0] == len(images)
    for i, count in enumerate(counts):  # the same as asking for that image alone
        alone = predictor.sample(images[i : i + 1], count, image_seeds=[seeds[i]])[0]
        np.testing.assert_allclose(draws[i], alone, atol=1e-5)


def test_chunked_calls_answer_as_one_call_does(model, images, monkeypatch):
    """Images split into several compiled calls (batch size, then, but on JAX, the
    suffix's value budget) get exactly the draws, embeddings and hidden rows of one call."""
    from models import mc_dropout

    counts = [4, 1, 6, 2, 3, 5]
    seeds = [(2, i) for i in range(len(images))]
    whole = MCDropoutPredictor(model).sample_each(images, counts, seeds)
    width = int(np.prod(whole[2].shape[1:]))
    monkeypatch.setattr(mc_dropout, "SUFFIX_VALUES", 6 * width)  # at most 6 samples a call
    by_values = MCDropoutPredictor(model)
    if ON_JAX:  # a split would run the base on two padded image buckets
        assert by_values._chunks(counts) == [(0, len(counts))]
    for predictor in (by_values, MCDropoutPredictor(model, batch_size=2))[ON_JAX:]:
        assert predictor._chunks(counts) != [(0, len(counts))]
        draws, embeddings, hidden = predictor.sample_each(images, counts, seeds)
        for got, want in zip(draws, whole[0], strict=True):
            assert_same_numbers(got, want)
        assert_same_numbers(embeddings, whole[1])
        assert_same_numbers(hidden, whole[2])


@tensorflow_only(
    "on JAX the served call draws its masks on the device and calibration with NumPy "
    "(test_backends compares their distributions)"
)
def test_the_sampled_call_draws_what_the_suffix_alone_draws(model, images):
    """The one-call path (`sample`, served) and the suffix on cached hidden rows
    (`sample_from_hidden`, which training calibrates with) give the same numbers."""
    predictor = MCDropoutPredictor(model)
    rngs = [np.random.default_rng([5, i]) for i in range(len(images))]
    from_hidden = predictor.sample_from_hidden(predictor.hidden(images), 7, rngs)
    np.testing.assert_array_equal(predictor.sample(images, 7, seed=5), from_hidden)


def test_predict_equals_the_keras_model_in_inference_mode(images):
    """The compiled prefix plus the suffix give `model(x, training=False)`, BN included."""
    model = tiny_model()
    randomize_bn_statistics(model)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(MCDropoutPredictor(model).predict(images), expected, atol=1e-5)


@tensorflow_only(
    "counts tf.function retracing; JAX: test_on_jax_after_warm_up_no_batch_compiles_again"
)
def test_after_warm_up_no_batch_size_traces_the_graph_again(model, images):
    predictor = MCDropoutPredictor(model)
    predictor.warm_up(tuple(images.shape[1:]))
    compiled = predictor._extractor.predict_function
    traced = compiled.experimental_get_tracing_count()
    for batch in (3, 5, 6):
        predictor.forward(images[:batch])
    assert predictor._extractor.predict_function is compiled
    assert compiled.experimental_get_tracing_count() == traced


@tensorflow_only(
    "counts tf.function retracing; JAX: test_on_jax_after_warm_up_no_batch_compiles_again"
)
def test_after_warm_up_no_batch_or_sample_count_traces_the_sampled_call_again(model, images):
    """The service's one call per batch: images, rows and masks of any size."""
    predictor = MCDropoutPredictor(model)
    predictor.warm_up(tuple(images.shape[1:]))
    compiled = predictor._fused.predict_function
    traced = compiled.experimental_get_tracing_count()
    for batch, counts in ((3, [5, 1, 7]), (5, [30] * 5), (6, [1, 2, 3, 4, 5, 100])):
        predictor.sample_each(images[:batch], counts, [(0, i) for i in range(batch)])
    assert predictor._fused.predict_function is compiled
    assert compiled.experimental_get_tracing_count() == traced


@jax_only
def test_on_jax_after_warm_up_no_batch_compiles_again(model, images):
    """Every batch pads to a warmed-up bucket: images to a power of two, sample rows to at
    most 25 % more; any batch size and any mix of T up to the warm-up's compile nothing."""
    predictor = MCDropoutPredictor(model, batch_size=8)
    predictor.warm_up(tuple(images.shape[1:]), max_samples=30)
    traced = predictor._jax.traced
    assert traced > 0
    for batch, counts in ((1, [30]), (3, [5, 1, 7]), (5, [30] * 5), (6, [1, 2, 3, 4, 30, 17])):
        predictor.sample_each(images[:batch], counts, [(0, i) for i in range(batch)])
        predictor.predict(images[:batch])
        predictor.forward(images[:batch])
    predictor.sample(images, 30, seed=0)
    assert predictor._jax.traced == traced
    predictor.sample(images, 100, seed=0)  # past the warm-up's T: a new row bucket compiles
    assert predictor._jax.traced == traced + 1


@jax_only
def test_on_jax_an_images_first_samples_do_not_depend_on_its_t(model, images):
    """Sample t of an image is drawn from its key and t alone (`fold_in` on the device),
    so asking more samples only appends to the ones a smaller T gives."""
    predictor = MCDropoutPredictor(model)
    few = predictor.sample(images, 5, seed=4)
    many = predictor.sample(images, 12, seed=4)
    assert_same_numbers(many[:, :5], few)
    assert not np.allclose(many[:, 5:10], few)


@jax_only
def test_on_jax_padding_never_reaches_an_answer(model, images):
    """Padded images and rows are zeros and their outputs are dropped: three images
    (padded to four) answer as they do inside a batch of six (padded to eight)."""
    predictor = MCDropoutPredictor(model)
    seeds = [(8, i) for i in range(3)]
    alone = predictor.sample_each(images[:3], [4, 9, 2], seeds)
    more = predictor.sample_each(images, [4, 9, 2, 1, 1, 1], [*seeds, (1, 0), (1, 1), (1, 2)])
    for got, want in zip(alone[0], more[0][:3], strict=True):
        assert_same_numbers(got, want)
    assert_same_numbers(alone[1], more[1][:3])
    assert_same_numbers(alone[2], more[2][:3])


def test_a_bfloat16_base_stays_close_to_float32_and_leaves_the_model_alone(model, images):
    weights = [w.copy() for w in model.get_weights()]
    exact, low = MCDropoutPredictor(model), MCDropoutPredictor(model, base_dtype="bfloat16")
    embeddings, hidden = low.forward(images)
    assert embeddings.dtype == hidden.dtype == np.float32
    reference, _ = exact.forward(images)
    scale = np.abs(reference).max()
    assert 0.0 < np.abs(embeddings - reference).max() <= 0.05 * scale  # rounded, not garbage
    np.testing.assert_allclose(low.predict(images), exact.predict(images), atol=0.05)
    samples = low.sample(images, samples=5, seed=0)
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, atol=1e-5)
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert keras.ops.convert_to_numpy(model(images)).dtype == np.float32


def test_invalid_base_dtype_is_rejected(model):
    with pytest.raises(ValueError, match=r"expected one of .*received base_dtype='int8'"):
        MCDropoutPredictor(model, base_dtype="int8")


@pytest.fixture(scope="module")
def base(model) -> keras.Model:
    """The tiny model's VGG16 base (1x1x512 maps at 32x32), shared by the heads below."""
    return get_base(model)


def _head(*layers: keras.layers.Layer) -> keras.Sequential:
    """A head like `build_head`'s: base maps (1, 1, 512) -> `layers` -> 4 probabilities."""
    probabilities = keras.layers.Dense(4, activation="softmax", name="probabilities")
    return keras.Sequential([keras.Input((1, 1, 512)), *layers, probabilities], name=HEAD_NAME)


class _MyDropout(keras.layers.Dropout):
    """A user's Dropout subclass: the predictor cannot know how it draws its masks."""


def _pool() -> keras.layers.Layer:
    return keras.layers.GlobalAveragePooling2D(name="pool")


UNSUPPORTED_HEADS = {
    "SpatialDropout1D": lambda: _head(
        keras.layers.Reshape((1, 512)),
        keras.layers.SpatialDropout1D(0.2, name="odd"),
        keras.layers.GlobalAveragePooling1D(),
    ),
    "SpatialDropout2D": lambda: _head(keras.layers.SpatialDropout2D(0.2, name="odd"), _pool()),
    "SpatialDropout3D": lambda: _head(
        keras.layers.Reshape((1, 1, 1, 512)),
        keras.layers.SpatialDropout3D(0.2, name="odd"),
        keras.layers.GlobalAveragePooling3D(),
    ),
    "GaussianDropout": lambda: _head(_pool(), keras.layers.GaussianDropout(0.2, name="odd")),
    "AlphaDropout": lambda: _head(  # after a plain Dropout: in the sampled suffix
        _pool(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(8, activation="selu"),
        keras.layers.AlphaDropout(0.2, name="odd"),
    ),
    "_MyDropout": lambda: _head(_pool(), _MyDropout(0.2, name="odd")),
    "Dropout": lambda: _head(_pool(), keras.layers.Dropout(0.2, noise_shape=(None, 1), name="odd")),
    "Sequential": lambda: _head(
        _pool(),
        keras.Sequential(
            [keras.Input((512,)), keras.layers.Dense(8), keras.layers.Dropout(0.2)], name="odd"
        ),
    ),
}


@pytest.mark.parametrize("class_name", sorted(UNSUPPORTED_HEADS))
def test_a_head_with_an_unsupported_random_layer_is_refused(base, class_name):
    model = compose(base, UNSUPPORTED_HEADS[class_name]())
    expected = (
        r"Invalid value for `model`: expected a head whose only random layers are plain "
        rf"`keras.layers.Dropout` .*received layer 'odd' of class {class_name}: "
    )
    with pytest.raises(ValueError, match=expected):
        MCDropoutPredictor(model)


def test_gaussian_dropout_and_alpha_dropout_are_not_dropout_subclasses():
    """Why they need their own check: the split and the masks only see Dropout."""
    for layer in (keras.layers.GaussianDropout(0.2), keras.layers.AlphaDropout(0.2)):
        assert not isinstance(layer, keras.layers.Dropout)
    assert isinstance(keras.layers.SpatialDropout2D(0.2), keras.layers.Dropout)


def test_gaussian_noise_is_allowed_and_off_as_in_keras_inference(base, images):
    head = _head(_pool(), keras.layers.GaussianNoise(1.0), keras.layers.Dropout(0.0))
    model = compose(base, head)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    samples = MCDropoutPredictor(model).sample(images, samples=3, seed=0)
    np.testing.assert_allclose(samples, np.repeat(expected[:, None], 3, axis=1), atol=1e-5)


def test_numpy_integer_seeds_sample_exactly_like_python_ints(model, images):
    predictor = MCDropoutPredictor(model)
    np.testing.assert_array_equal(
        predictor.sample(images, 4, seed=np.int64(3)), predictor.sample(images, 4, seed=3)
    )
    numpy_seeds = [
        np.int64(1),
        (np.int64(2), np.int32(0)),
        np.uint8(5),
        np.array([7, 1]),
        [np.int16(4), 2],
        np.int32(2**31 - 1),
    ]
    python_seeds = [1, (2, 0), 5, (7, 1), (4, 2), 2**31 - 1]
    np.testing.assert_array_equal(
        predictor.sample(images, 4, image_seeds=numpy_seeds),
        predictor.sample(images, 4, image_seeds=python_seeds),
    )


def test_seeds_that_are_not_non_negative_integers_are_refused(model, images):
    predictor = MCDropoutPredictor(model)
    for seed in (1.5, np.float64(2.0), -1, True, "3"):
        with pytest.raises(ValueError, match=r"Invalid value for `seed`: expected a non-negative"):
            predictor.sample(images, 2, seed=seed)
    with pytest.raises(ValueError, match=r"`seed`: .*received seed=1.5 of type float"):
        predictor.sample(images, 2, seed=1.5)
    bad = [1, 2, 3, 4, 5, 6]
    for position, image_seed in ((2, 0.5), (3, (1, 2.5)), (0, ()), (5, "ab"), (1, (-3,))):
        seeds = [*bad[:position], image_seed, *bad[position + 1 :]]
        with pytest.raises(ValueError, match=rf"Invalid value for `image_seeds\[{position}\]`"):
            predictor.sample(images, 2, image_seeds=seeds)
    with pytest.raises(ValueError, match=r"`image_seeds\[0\]`"):
        predictor.sample_each(images, [1] * 6, [0.5, *bad[1:]])


def test_temperature_tempers_each_sample_and_never_the_deterministic_answer(model, images):
    plain = MCDropoutPredictor(model)
    warm = MCDropoutPredictor(model, temperature=2.5)
    raw, tempered = plain.sample(images, 6, seed=4), warm.sample(images, 6, seed=4)
    np.testing.assert_allclose(tempered, temper(raw, 2.5), atol=1e-6)
    assert tempered.max() < raw.max()  # softer
    np.testing.assert_array_equal(warm.predict(images), plain.predict(images))
    with pytest.raises(ValueError, match="Invalid value for `temperature`"):
        MCDropoutPredictor(model, temperature=0.0)
