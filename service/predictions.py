"""(n, T, C) Monte Carlo samples -> response objects, with `models/` uncertainty math."""

from __future__ import annotations

import numpy as np

from models import uncertainty
from models.card import ModelCard
from service.schemas import ImagePrediction


def to_predictions(
    samples: np.ndarray, ood_scores: np.ndarray, card: ModelCard
) -> list[ImagePrediction]:
    """One `ImagePrediction` per image of samples (n, T, C) and OOD scores (n,) (NaN: none)."""
    mean = uncertainty.mean_probabilities(samples)  # (n, C)
    mean = mean / mean.sum(axis=1, keepdims=True)  # float32 round-off: sums to 1
    variance = uncertainty.variance(samples)  # (n, C)
    total = uncertainty.predictive_entropy(samples)  # (n,)
    aleatoric = uncertainty.expected_entropy(samples)  # (n,)
    epistemic = uncertainty.mutual_information(samples)  # (n,)
    threshold = card.uncertain_threshold
    predictions = []
    for i in range(len(samples)):
        best = int(mean[i].argmax())
        predictions.append(
            ImagePrediction(
                label=card.class_names[best],
                class_index=best,
                confidence=float(mean[i, best]),
                probabilities=mean[i].tolist(),
                variance=variance[i].tolist(),
                predictive_entropy=float(total[i]),
                aleatoric=float(aleatoric[i]),
                epistemic=float(epistemic[i]),
                uncertain=threshold is not None and bool(epistemic[i] > threshold),
                ood_score=None if np.isnan(ood_scores[i]) else float(ood_scores[i]),
                out_of_distribution=_is_ood(float(ood_scores[i]), card.ood_threshold),
            )
        )
    return predictions


def _is_ood(score: float, threshold: float | None) -> bool | None:
    """Score above the model's threshold; None when the model has no density or threshold."""
    if threshold is None or np.isnan(score):
        return None
    return score > threshold
