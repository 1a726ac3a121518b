"""The guarantees a model carries, and how an answer uses them (pure NumPy: no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from models.answer import build_answers, resolve_alpha
from models.card import ModelCard
from models.config import ModelConfig
from models.guarantees import REPORTED_ALPHAS, Guarantees, calibrate, measure

CLASSES = ("a", "b", "c")


def _samples(n: int, rng: np.random.Generator, t: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, C) sampled probabilities around a Dirichlet mean, labels drawn from that mean."""
    mean = rng.dirichlet(np.ones(len(CLASSES)) * 0.7, size=n)  # (n, C)
    noisy = mean[:, None, :] * rng.uniform(0.8, 1.2, (n, t, len(CLASSES)))  # (n, T, C)
    samples = noisy / noisy.sum(axis=2, keepdims=True)
    labels = np.array([rng.choice(len(CLASSES), p=p) for p in samples.mean(axis=1)])
    return samples, labels


def _card(guarantees: Guarantees | None, uncertain_threshold: float | None = None) -> ModelCard:
    return ModelCard(class_names=CLASSES, model=ModelConfig(num_classes=len(CLASSES)),
                     mc_samples=4, guarantees=guarantees,
                     uncertain_threshold=uncertain_threshold)  # fmt: skip


@pytest.fixture(scope="module")
def guarantees() -> Guarantees:
    rng = np.random.default_rng(0)
    samples, labels = _samples(400, rng)
    return Guarantees(
        default_alpha=0.1,
        mc=calibrate(samples, labels, "aps", 0.2, 0.05, rng),
        single=calibrate(samples[:, :1], labels, "aps", 0.2, 0.05, rng),
    )


def test_a_request_gets_the_calibration_of_its_t(guarantees):
    assert guarantees.for_samples(1) is guarantees.single
    assert guarantees.for_samples(4) is guarantees.mc
    assert guarantees.for_samples(50) is guarantees.mc  # close, not exact: documented


def test_alpha_defaults_to_the_model_and_is_checked(guarantees):
    card = _card(guarantees)
    assert resolve_alpha(card, None) == 0.1
    assert resolve_alpha(card, 0.3) == 0.3
    with pytest.raises(ValueError, match=r"1/\(n\+1\)=.* <= alpha < 1.*received alpha=0.001"):
        resolve_alpha(card, 0.001)


def test_a_model_without_calibration_serves_no_sets():
    card = _card(None, uncertain_threshold=0.01)
    assert resolve_alpha(card, None) is None
    with pytest.raises(ValueError, match="no calibration split"):
        resolve_alpha(card, 0.1)
    samples, _ = _samples(5, np.random.default_rng(1))
    answers = build_answers(samples, np.full(5, np.nan), card)
    for answer, epistemic in zip(answers, (a.epistemic for a in answers), strict=True):
        assert answer.prediction_set is None and answer.set_size is None
        assert answer.uncertain == (epistemic > 0.01)  # the old percentile rule


def test_measured_coverage_holds_on_fresh_exchangeable_data(guarantees):
    rng = np.random.default_rng(2)
    samples, labels = _samples(4000, rng)
    measured = measure(guarantees.mc, samples, labels).test
    for alpha in REPORTED_ALPHAS:  # n=400: every reported alpha is in range
        tolerance = 3 * np.sqrt(alpha * (1 - alpha) / 4000) + 1 / 401
        assert measured[f"coverage@{alpha:g}"] >= 1 - alpha - tolerance
    sizes = [measured[f"set_size@{alpha:g}"] for alpha in sorted(REPORTED_ALPHAS)]
    assert sizes == sorted(sizes, reverse=True)  # a larger alpha never gives larger sets
    assert 0.0 <= measured["accepted_error_rate"] <= 1.0


def test_answers_carry_sets_most_probable_first_and_the_acceptance_rule(guarantees):
    card = _card(guarantees)
    rng = np.random.default_rng(3)
    samples, _ = _samples(20, rng)
    answers = build_answers(samples, np.zeros(20), card, alpha=0.1)
    accepted = guarantees.mc.risk.accepts(
        {"mutual_information": [a.epistemic for a in answers],
         "predictive_entropy": [a.predictive_entropy for a in answers],
         "one_minus_max_probability": [1 - a.confidence for a in answers]}[guarantees.mc.risk.score]
    )  # fmt: skip
    for answer, ok in zip(answers, accepted, strict=True):
        ranked = [CLASSES[c] for c in np.argsort(answer.probabilities)[::-1]]
        assert answer.prediction_set == [c for c in ranked if c in answer.prediction_set]
        assert answer.set_size == len(answer.prediction_set)
        assert answer.uncertain == (not ok)
    aps = build_answers(samples[:, :1], np.zeros(20), card, alpha=0.1)  # T=1, APS
    for answer in aps:  # served with u = 0: the top class is always kept, never an empty set
        assert answer.prediction_set and answer.prediction_set[0] == answer.label
    defaulted = build_answers(samples, np.zeros(20), card)  # no alpha: the model's default
    assert defaulted == build_answers(samples, np.zeros(20), card, alpha=0.1)
