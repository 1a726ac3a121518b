"""Uncertainty and calibration math: exact cases and scikit-learn cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from models import uncertainty as u


def test_agreeing_samples_have_zero_mutual_information():
    p = np.array([0.7, 0.2, 0.1])
    samples = np.tile(p, (2, 5, 1))  # (B=2, T=5, C=3)
    np.testing.assert_allclose(u.mutual_information(samples), 0.0, atol=1e-12)
    np.testing.assert_allclose(u.predictive_entropy(samples), u.entropy(p))
    np.testing.assert_allclose(u.variance(samples), 0.0, atol=1e-15)


def test_disagreeing_one_hot_samples_have_mutual_information_ln2():
    samples = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    np.testing.assert_allclose(u.mutual_information(samples), [np.log(2.0)])
    np.testing.assert_allclose(u.expected_entropy(samples), [0.0])
    np.testing.assert_allclose(u.variance(samples), [[0.25, 0.25]])


def test_entropies_lie_within_zero_and_ln_c():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.full(5, 0.3), size=(50, 8))  # (50, 8, 5)
    for value in (u.predictive_entropy(samples), u.expected_entropy(samples)):
        assert np.all(value >= 0.0)
        assert np.all(value <= np.log(5) + 1e-12)
    assert np.all(u.mutual_information(samples) >= 0.0)
    uniform = np.full((1, 1, 5), 0.2)
    np.testing.assert_allclose(u.predictive_entropy(uniform), [np.log(5)])


def test_nll_averages_probabilities_over_samples():
    samples = np.array([[[0.5, 0.5], [0.25, 0.75]]])  # p(y=0) = 0.5 and 0.25 -> mean 0.375
    assert u.nll(samples, np.array([0])) == pytest.approx(-np.log(0.375))


def test_nll_stays_finite_for_zero_probability():
    samples = np.array([[[1.0, 0.0]]])
    assert np.isfinite(u.nll(samples, np.array([1])))
    assert u.nll(samples, np.array([1])) > 700.0  # -log(tiny)


def test_nll_matches_scikit_learn_log_loss():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=30)
    labels = rng.integers(0, 4, 30)
    expected = log_loss(labels, probs, labels=range(4))
    assert u.nll(probs[:, None, :], labels) == pytest.approx(expected, rel=1e-9)


def test_brier_score_hand_computed():
    probs = np.array([[0.7, 0.3], [0.4, 0.6]])
    # (0.3^2 + 0.3^2) and (0.4^2 + 0.4^2), averaged
    assert u.brier_score(probs, np.array([0, 1])) == pytest.approx((0.18 + 0.32) / 2)


def test_ece_hand_computed():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin of 0.9: acc 0.5, conf 0.9, weight 1/2; bin of 0.6: acc 1.0, conf 0.6, weight 1/2
    expected = 0.5 * 0.4 + 0.5 * 0.4
    assert u.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert u.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="samples"):
        u.mutual_information(np.ones((3, 2)))
    with pytest.raises(ValueError, match="labels"):
        u.nll(np.ones((2, 1, 2)) / 2, np.array([0, 1, 1]))


def test_summarize_reports_every_metric():
    samples = np.array([[[0.9, 0.1]], [[0.2, 0.8]]])
    summary = u.summarize(samples, np.array([0, 1]))
    assert summary["accuracy"] == 1.0
    assert summary["nll"] == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert set(summary) == {"accuracy", "nll", "brier", "ece", "mean_mutual_information"}


def test_reliability_matches_scikit_learn_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=400)
    labels = rng.integers(0, 3, 400)
    hits, confidence, counts = u.reliability(probs, labels, bins=15)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    expected_hits, expected_confidence = calibration_curve(
        correct, probs.max(axis=1), n_bins=15, strategy="uniform"
    )
    np.testing.assert_allclose(hits[counts > 0], expected_hits)
    np.testing.assert_allclose(confidence[counts > 0], expected_confidence)


def test_brier_matches_scikit_learn_for_two_classes():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(4)
    p1 = rng.uniform(size=50)
    labels = rng.integers(0, 2, 50)
    probs = np.column_stack([1 - p1, p1])
    # scikit-learn's binary score is the squared error of p1; the two-class sum doubles it
    assert u.brier_score(probs, labels) == pytest.approx(2 * brier_score_loss(labels, p1))
