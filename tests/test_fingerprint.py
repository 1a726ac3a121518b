"""The weights digest: equal for equal weights, different after any change, and covering
every model a predictor serves."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from models.architecture import get_base
from models.fingerprint import weights_digest
from models.mc_dropout import MCDropoutPredictor
from tests.conftest import randomize_bn_statistics, tiny_model


def test_same_weights_same_digest_and_it_is_hex_sha256():
    first, second = tiny_model(seed=3), tiny_model(seed=3)
    assert weights_digest(first) == weights_digest(second)
    assert len(weights_digest(first)) == 64


def test_a_bn_moving_statistic_changes_the_digest():
    model = tiny_model(seed=3)
    before = weights_digest(model)
    randomize_bn_statistics(model, seed=1)
    assert weights_digest(model) != before


def test_one_bit_in_one_kernel_changes_the_digest():
    model = tiny_model(seed=3)
    before = weights_digest(model)
    kernel = model.get_layer("head").layers[-1].kernel
    value = np.array(kernel)
    value.view(np.uint32)[0, 0] ^= 1
    kernel.assign(value)
    assert weights_digest(model) != before


def test_mc_sampling_leaves_the_digest_unchanged(images):
    model = tiny_model(seed=3)
    randomize_bn_statistics(model)
    before = weights_digest(model)
    MCDropoutPredictor(model).sample(images, 20, seed=0)
    MCDropoutPredictor(model).predict(images)
    assert weights_digest(model) == before


def test_one_model_digest_is_sha256_over_its_sorted_variables():
    """Pins the single-model format: `weights_digest(model)` is unchanged by the *models form."""
    model = tiny_model(seed=3)
    expected = hashlib.sha256()
    for variable in sorted(model.weights, key=lambda v: v.path):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        expected.update(f"{variable.path}|{value.dtype}|{value.shape}\n".encode())
        expected.update(value.tobytes())
    assert weights_digest(model) == expected.hexdigest()


def _dense_chain(*layers: keras.layers.Layer) -> keras.Sequential:
    return keras.Sequential([keras.Input((2,)), *layers])


def test_two_splits_of_the_same_variables_give_different_digests():
    a, b, c = (keras.layers.Dense(2, name=name) for name in "abc")
    whole = _dense_chain(a, b, c)  # builds the three layers
    first = weights_digest(_dense_chain(a, b), _dense_chain(c))
    second = weights_digest(_dense_chain(a), _dense_chain(b, c))
    assert len({first, second, weights_digest(whole)}) == 3
    assert weights_digest(_dense_chain(a), _dense_chain(c)) != weights_digest(
        _dense_chain(c), _dense_chain(a)
    )


def test_no_model_is_rejected():
    with pytest.raises(ValueError, match=r"Invalid value for `models`: expected at least one"):
        weights_digest()


def test_a_float32_predictor_serves_just_its_model():
    model = tiny_model(seed=3)
    served = MCDropoutPredictor(model).served_models
    assert len(served) == 1 and served[0] is model


def test_the_digest_of_a_bfloat16_predictor_covers_the_copy_that_computes(images):
    model = tiny_model(seed=3)
    predictor = MCDropoutPredictor(model, base_dtype="bfloat16")
    served = predictor.served_models
    assert len(served) == 2 and served[0] is model and served[1] is not get_base(model)
    original, before = weights_digest(model), weights_digest(*served)
    embeddings, _ = predictor.forward(images)
    bias = served[1].get_layer("block5_conv3").bias  # the copy's last convolution
    value = np.array(bias)
    value[0] += 10.0  # one weight, enough to show in channel 0 after the ReLU
    bias.assign(value)
    assert weights_digest(*predictor.served_models) != before
    assert weights_digest(model) == original
    changed, _ = predictor.forward(images)
    assert np.all(changed[:, 0] > embeddings[:, 0])  # the copy is what computes
    np.testing.assert_array_equal(changed[:, 1:], embeddings[:, 1:])
