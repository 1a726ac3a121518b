"""Out-of-distribution detection metrics, from scikit-learn's ROC and PR curves.

Scores are "higher = more likely out of distribution". OOD images are the
positive class for AUROC and AUPR; FPR at 95 % TPR is the fraction of OOD
images accepted as in-distribution when 95 % of in-distribution images are
accepted (the usual definition, Liang et al. 2018).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _labelled(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([np.asarray(in_scores), np.asarray(out_scores)]).astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("Invalid value for `scores`: expected finite numbers")
    is_out = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return scores, is_out


def fpr_at_95_tpr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Fraction of OOD images kept when the threshold keeps 95 % of in-distribution ones."""
    scores, is_out = _labelled(in_scores, out_scores)
    # In-distribution is the positive class here; its score is the negated OOD score.
    fpr, tpr, _ = roc_curve(1 - is_out, -scores)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def detection_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (OOD positive) and FPR at 95 % TPR."""
    scores, is_out = _labelled(in_scores, out_scores)
    return {
        "auroc": float(roc_auc_score(is_out, scores)),
        "aupr": float(average_precision_score(is_out, scores)),
        "fpr95": fpr_at_95_tpr(in_scores, out_scores),
    }


def abstention_curve(
    correct: np.ndarray, uncertainty: np.ndarray, fractions: np.ndarray
) -> np.ndarray:
    """Accuracy on the inputs kept after rejecting each fraction of the most uncertain."""
    order = np.argsort(uncertainty, kind="stable")  # most certain first
    ranked = np.asarray(correct, dtype=np.float64)[order]
    kept = np.maximum(np.round((1.0 - np.asarray(fractions)) * len(ranked)).astype(int), 1)
    return np.array([ranked[:k].mean() for k in kept])
