"""Temperature scaling: exact identities, recovery of a known temperature, and sklearn agreement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from models.temperature import fit_temperature, temper
from models.uncertainty import nll


def overconfident(true_temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Labels drawn from softmax(z / true_temperature), the model reporting softmax(z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    truth = softmax(logits / true_temperature, axis=1)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return softmax(logits, axis=1)[:, None, :], labels  # (N, 1, C), (N,)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 4.0])
def test_fit_recovers_a_known_temperature(true_temperature):
    samples, labels = overconfident(true_temperature)
    assert fit_temperature(samples, labels) == pytest.approx(true_temperature, rel=0.08)


def test_fit_never_raises_the_nll_of_its_data():
    rng = np.random.default_rng(1)
    for trial in range(10):
        samples = softmax(rng.normal(0.0, 2.0, (200, 4, 6)), axis=-1)  # (N, T, C)
        labels = rng.integers(0, 6, 200) if trial % 2 else samples.mean(axis=1).argmax(axis=1)
        fitted = fit_temperature(samples, labels)
        assert nll(temper(samples, fitted), labels) <= nll(samples, labels)


def test_calibrated_data_keeps_temperature_near_one():
    samples, labels = overconfident(1.0)
    assert fit_temperature(samples, labels) == pytest.approx(1.0, abs=0.08)


class _Fixed(ClassifierMixin, BaseEstimator):
    """An already-fitted classifier whose probabilities for row i are `probs[i]`."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])

    def fit(self, x, y):
        return self

    def predict_proba(self, x):
        return self.probs[np.asarray(x).ravel().astype(int)]

    def predict(self, x):
        return self.predict_proba(x).argmax(axis=1)


def test_fit_agrees_with_scikit_learns_temperature_scaling():
    samples, labels = overconfident(2.5, n=2000, seed=3)
    probs = samples[:, 0]
    rows = np.arange(len(labels))[:, None]
    calibrated = CalibratedClassifierCV(FrozenEstimator(_Fixed(probs)), method="temperature")
    calibrated.fit(rows, labels)
    theirs = calibrated.predict_proba(rows)
    ours = temper(samples, fit_temperature(samples, labels))[:, 0]
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_temper_keeps_rows_normalised_and_the_top_class():
    rng = np.random.default_rng(2)
    samples = softmax(rng.normal(0.0, 3.0, (50, 7, 4)), axis=-1)
    for temperature in (0.3, 1.0, 3.0):
        tempered = temper(samples, temperature)
        np.testing.assert_allclose(tempered.sum(axis=-1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(tempered.argmax(axis=-1), samples.argmax(axis=-1))
    np.testing.assert_array_equal(temper(samples, 1.0), samples)
    softer = temper(samples, 3.0).max(axis=-1)
    assert np.all(softer <= samples.max(axis=-1) + 1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_temper_rejects_bad_temperatures(bad):
    with pytest.raises(ValueError, match="Invalid value for `temperature`"):
        temper(np.full((1, 1, 2), 0.5), bad)


def test_temper_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected shape \(B, T, C\)"):
        temper(np.full((2, 2), 0.5), 2.0)
