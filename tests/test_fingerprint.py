"""The weights digest: equal for equal weights, different after any change."""

from __future__ import annotations

import numpy as np

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
