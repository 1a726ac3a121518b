"""Uncertainty and calibration math on Monte Carlo samples, in pure NumPy.

Samples are class probabilities shaped (B, T, C): B images, T dropout samples,
C classes. A deterministic prediction is the case T = 1. Entropies are in nats.

    predictive entropy  H[E_t p_t]                (total uncertainty)
    expected entropy    E_t H[p_t]                (aleatoric)
    mutual information  H[E_t p_t] - E_t H[p_t]   (epistemic, >= 0)
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr, logsumexp
from sklearn.metrics import brier_score_loss

_TINY = np.finfo(np.float64).tiny


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ValueError(
            f"Invalid value for `samples`: expected shape (B, T, C), received shape={samples.shape}"
        )
    return samples


def mean_probabilities(samples: np.ndarray) -> np.ndarray:
    """Predictive distribution E_t p_t, shaped (B, C)."""
    return _check_samples(samples).mean(axis=1)


def variance(samples: np.ndarray) -> np.ndarray:
    """Per-class variance of the sampled probabilities over T (ddof=0), shaped (B, C)."""
    return _check_samples(samples).var(axis=1)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy over the last axis, in nats (0 log 0 = 0)."""
    return entr(np.asarray(probabilities, dtype=np.float64)).sum(axis=-1)


def predictive_entropy(samples: np.ndarray) -> np.ndarray:
    """H[E_t p_t], shaped (B,): in [0, ln C]."""
    return entropy(mean_probabilities(samples))


def expected_entropy(samples: np.ndarray) -> np.ndarray:
    """E_t H[p_t] (aleatoric part), shaped (B,)."""
    return entropy(_check_samples(samples)).mean(axis=1)


def mutual_information(samples: np.ndarray) -> np.ndarray:
    """Predictive minus expected entropy (epistemic part), shaped (B,), clipped at 0."""
    return np.maximum(predictive_entropy(samples) - expected_entropy(samples), 0.0)


def _check_labels(labels: np.ndarray, batch: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(
            f"Invalid value for `labels`: expected shape ({batch},), received shape={labels.shape}"
        )
    return labels.astype(np.int64)


def nll(samples: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the predictive distribution, in log space.

    -log E_t p_t[y] = -(logsumexp_t log p_t[y] - log T), stable for tiny probabilities.
    """
    samples = _check_samples(samples)
    labels = _check_labels(labels, samples.shape[0])
    picked = samples[np.arange(samples.shape[0]), :, labels]  # (B, T)
    log_mean = logsumexp(np.log(np.maximum(picked, _TINY)), axis=1) - np.log(samples.shape[1])
    return float(-log_mean.mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score, mean over images of sum_c (p_c - 1[y=c])^2 (range [0, 2])."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=-1, keepdims=True)  # float32 round-off
    classes = np.arange(probabilities.shape[-1])
    return float(brier_score_loss(labels, probabilities, labels=classes, scale_by_half=False))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability: per equal-width confidence bin, (accuracy, confidence, count).

    Bin b holds confidences in (b/bins, (b+1)/bins]; empty bins have NaN
    accuracy and confidence.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = _check_labels(labels, probabilities.shape[0])
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        hits = np.bincount(index, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
    return hits, mean_confidence, counts


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    hits, confidence, counts = reliability(probabilities, labels, bins)
    gaps = np.nan_to_num(np.abs(hits - confidence)) * counts
    return float(gaps.sum() / max(counts.sum(), 1))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose most probable class is the label."""
    probabilities = np.asarray(probabilities)
    labels = _check_labels(labels, probabilities.shape[0])
    return float((probabilities.argmax(axis=1) == labels).mean())


def summarize(samples: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL, Brier and ECE of the predictive distribution of (B, T, C) samples."""
    probabilities = mean_probabilities(samples)
    return {
        "accuracy": accuracy(probabilities, labels),
        "nll": nll(samples, labels),
        "brier": brier_score(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "mean_mutual_information": float(mutual_information(samples).mean()),
    }
