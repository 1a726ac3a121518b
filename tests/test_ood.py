"""OOD detection metrics and the abstention curve: exact cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.ood import abstention_curve, detection_metrics, fpr_at_95_tpr


def test_perfect_separation():
    metrics = detection_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.8, 0.9]))
    assert metrics == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}


def test_reversed_scores_are_worst():
    metrics = detection_metrics(np.array([0.8, 0.9]), np.array([0.1, 0.2]))
    assert metrics["auroc"] == 0.0
    assert metrics["fpr95"] == 1.0


def test_auroc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    expected = roc_auc_score(np.r_[np.zeros(200), np.ones(150)], np.r_[inside, outside])
    assert detection_metrics(inside, outside)["auroc"] == pytest.approx(expected)


def test_fpr95_hand_computed():
    inside = np.arange(20, dtype=float)  # keeping 95 % of these keeps scores <= 18
    outside = np.array([5.0, 18.0, 18.5, 30.0])  # 5 and 18 are kept: 2 of 4
    assert fpr_at_95_tpr(inside, outside) == pytest.approx(0.5)


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        detection_metrics(np.array([np.nan]), np.array([1.0]))


def test_abstention_rejects_the_most_uncertain_first():
    correct = np.array([1, 1, 1, 0, 0])
    uncertainty = np.array([0.1, 0.2, 0.3, 0.9, 0.8])
    curve = abstention_curve(correct, uncertainty, np.array([0.0, 0.2, 0.4]))
    np.testing.assert_allclose(curve, [0.6, 0.75, 1.0])
