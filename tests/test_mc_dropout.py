"""The split MC-dropout predictor: shapes, invariants, BN safety, batch invariance."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.config import HeadConfig
from models.mc_dropout import MCDropoutPredictor, naive_mc_samples
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


def test_sample_each_gives_each_image_its_own_count(model, images):
    predictor = MCDropoutPredictor(model)
    counts = [3, 5, 3, 1, 5, 2]
    seeds = [(9, i) for i in range(len(images))]
    draws, embeddings = predictor.sample_each(images, counts, seeds)
    assert [len(d) for d in draws] == counts
    assert embeddings.shape[0] == len(images)
    for i, count in enumerate(counts):  # the same as asking for that image alone
        alone = predictor.sample(images[i : i + 1], count, image_seeds=[seeds[i]])[0]
        np.testing.assert_allclose(draws[i], alone, atol=1e-5)


def test_predict_equals_the_keras_model_in_inference_mode(images):
    """The compiled prefix plus the suffix give `model(x, training=False)`, BN included."""
    model = tiny_model()
    randomize_bn_statistics(model)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(MCDropoutPredictor(model).predict(images), expected, atol=1e-5)


def test_after_warm_up_no_batch_size_traces_the_graph_again(model, images):
    predictor = MCDropoutPredictor(model)
    predictor.warm_up(tuple(images.shape[1:]))
    compiled = predictor._extractor.predict_function
    traced = compiled.experimental_get_tracing_count()
    for batch in (3, 5, 6):
        predictor.forward(images[:batch])
    assert predictor._extractor.predict_function is compiled
    assert compiled.experimental_get_tracing_count() == traced


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
