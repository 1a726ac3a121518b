"""The one answer builder: Monte Carlo samples -> what a user reads for each image.

`uqserve predict` and the service's `/predict` both build their answers here,
so the same image, model, T and seed give the same figures either way:

    sample_and_score   images (B, H, W, 3) -> samples [(T_i, C)], OOD scores (B,)
    build_answers      samples (n, T, C), OOD scores (n,) -> ImagePrediction per image

An image's dropout masks come from the stream (seed, index), index being its
place in the request (see `models.mc_dropout`), so a request's answer does not
depend on what else was in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from models import uncertainty
from models.card import ModelCard
from models.conformal import AlphaError, ranked_members
from models.density import OODScore
from models.mc_dropout import ImageSeed, MCDropoutPredictor

MAX_SEED = 2**53 - 1  # largest request seed: what JSON clients (JavaScript numbers) hold exactly
Samples = Annotated[StrictInt, Field(ge=1, description="Monte Carlo dropout samples.")]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED, description="Makes sampling reproducible.")]
Alpha = Annotated[  # checked by `resolve_alpha`, whose error names the model's range
    float,
    Field(
        description="Prediction sets miss the true class at most this often (default: the "
        "model's); the smallest allowed is 1/(n+1), n the model's calibration images.",
    ),
]


class Options(BaseModel):
    """What a request may ask for, under one set of rules for the service and the command line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: Samples | None = None
    seed: Seed | None = None
    alpha: Alpha | None = None


class ImagePrediction(BaseModel):
    """One image's answer: the MC-dropout predictive distribution and its uncertainty."""

    label: str = Field(description="Name of the most probable class.")
    class_index: int = Field(description="Index of that class.")
    confidence: float = Field(description="Mean sampled probability of that class.")
    probabilities: list[float] = Field(description="Mean over samples, one per class; sums to 1.")
    variance: list[float] = Field(description="Per-class variance of the sampled probabilities.")
    predictive_entropy: float = Field(description="Entropy of the mean probabilities (nats).")
    aleatoric: float = Field(description="Expected entropy of the samples (nats).")
    epistemic: float = Field(description="Mutual information (nats): model uncertainty.")
    uncertain: bool = Field(
        description="Not accepted: with a calibrated model, the answer's uncertainty score is "
        "above the threshold certified to keep the error rate among accepted answers below "
        "the model's target risk (see GET /metadata); otherwise epistemic above a percentile."
    )
    prediction_set: list[str] | None = Field(
        description="Classes that hold the true one with probability >= 1 - alpha, most "
        "probable first (None: the model has no calibration)."
    )
    set_size: int | None = Field(description="Number of classes in prediction_set.")
    ood_score: float | None = Field(
        description="Negative log density of the image's pooled base features under the "
        "training embeddings' class-conditional Gaussians: higher is less like the training data."
    )
    out_of_distribution: bool | None = Field(
        description="ood_score above the threshold stored with the model."
    )


class PredictionResponse(BaseModel):
    """Predictions for every image of a request, in request order."""

    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="Tag of the model that answered.")
    samples: int = Field(description="Monte Carlo dropout samples used.")
    seed: int = Field(description="Seed used; send it back to reproduce this answer.")
    alpha: float | None = Field(description="Miss rate the prediction sets were built for.")
    predictions: list[ImagePrediction]


def random_seed() -> int:
    """A fresh seed for a request that brought none (returned with the answer)."""
    return int(np.random.default_rng().integers(MAX_SEED))


def sample_and_score(
    predictor: MCDropoutPredictor,
    density: OODScore | None,
    images: np.ndarray,
    samples: Sequence[int],
    streams: Sequence[ImageSeed],
) -> tuple[list[np.ndarray], np.ndarray]:
    """Preprocessed images (B, H, W, 3) -> per-image samples [(T_i, C)] and OOD scores (B,).

    The deterministic part runs once; the OOD score (NaN without a density)
    comes from the same pass's embeddings, at no extra cost.
    """
    draws, embeddings, hidden = predictor.sample_each(images, samples, streams)  # [(T_i, C)], ...
    return draws, density_scores(density, embeddings, hidden)


def density_scores(
    density: OODScore | None, embeddings: np.ndarray, hidden: np.ndarray
) -> np.ndarray:
    """The OOD scores (B,) of `sample_each`'s embeddings and hidden rows; NaN without a
    density. float32, as the service serves them, so every caller rounds alike."""
    if density is None:
        return np.full(len(embeddings), np.nan, dtype=np.float32)
    return density.score({"base": embeddings, "hidden": hidden}).astype(np.float32)


def warm_up_scores(
    density: OODScore | None, embeddings: np.ndarray, hidden: np.ndarray, max_rows: int
) -> None:
    """Score 1 to `max_rows` copies of one image's features (`sample_each`'s): on JAX the
    score's operations compile once per batch size, here rather than on a request."""
    for rows in range(1, max_rows + 1):
        density_scores(density, np.repeat(embeddings[:1], rows, 0), np.repeat(hidden[:1], rows, 0))


def resolve_alpha(card: ModelCard, alpha: float | None) -> float | None:
    """The alpha a request is answered with: its own, else the model's default; None for
    a model without guarantees. Raises AlphaError naming the allowed range."""
    if card.guarantees is None:
        if alpha is not None:
            raise AlphaError(
                "Invalid value for `alpha`: this model has no calibration split, so it serves "
                "no prediction sets; retrain it with data.calibration_fraction > 0"
            )
        return None
    alpha = card.guarantees.default_alpha if alpha is None else float(alpha)
    card.guarantees.mc.sets.rank(alpha)  # AlphaError for alpha outside [1/(n+1), 1)
    return alpha


class Resolved(NamedTuple):
    """A request's options with the model's defaults filled in."""

    samples: int
    seed: int
    alpha: float | None


def resolve_options(card: ModelCard, options: Options) -> Resolved:
    """The model's T when none is asked, a fresh seed when none is sent, alpha checked
    (`resolve_alpha`): one rule for the service and the command line."""
    return Resolved(
        samples=card.mc_samples if options.samples is None else options.samples,
        seed=random_seed() if options.seed is None else options.seed,
        alpha=resolve_alpha(card, options.alpha),
    )


def build_answers(
    samples: np.ndarray,
    ood_scores: np.ndarray,
    card: ModelCard,
    alpha: float | None = None,
) -> list[ImagePrediction]:
    """One `ImagePrediction` per image of samples (n, T, C) and OOD scores (n,) (NaN: none).

    `alpha` comes from `resolve_alpha` (None: the model's default). A model
    without guarantees has no sets and keeps its old percentile flag.
    """
    mean = uncertainty.mean_probabilities(samples)  # (n, C)
    mean = mean / mean.sum(axis=1, keepdims=True)  # float32 round-off: sums to 1
    figures = {
        "variance": uncertainty.variance(samples),  # (n, C)
        "predictive_entropy": uncertainty.predictive_entropy(samples),  # (n,)
        "aleatoric": uncertainty.expected_entropy(samples),  # (n,)
        "epistemic": uncertainty.mutual_information(samples),  # (n,)
    }
    sets, accepted = _sets_and_acceptance(samples, figures["epistemic"], card, alpha)
    return [
        _answer(i, mean[i], {k: v[i] for k, v in figures.items()}, sets, accepted[i],
                float(ood_scores[i]), card)
        for i in range(len(samples))
    ]  # fmt: skip


def _sets_and_acceptance(
    samples: np.ndarray, epistemic: np.ndarray, card: ModelCard, alpha: float | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Prediction sets (n, C) (None without guarantees) and accepted (n,) for samples (n, T, C);
    `epistemic` (n,) serves the percentile flag of a model without guarantees."""
    if card.guarantees is None:
        threshold = card.uncertain_threshold
        return None, np.full(len(samples), True) if threshold is None else epistemic <= threshold
    calibrated = card.guarantees.for_samples(samples.shape[1])
    alpha = card.guarantees.default_alpha if alpha is None else alpha
    return calibrated.answer(samples, alpha)


def _answer(
    i: int,
    mean: np.ndarray,
    figures: dict[str, np.ndarray],
    sets: np.ndarray | None,
    accepted: bool,
    score: float,
    card: ModelCard,
) -> ImagePrediction:
    """Image i's answer from its mean probabilities (C,) and figures."""
    best = int(mean.argmax())
    members = None if sets is None else [card.class_names[c] for c in ranked_members(mean, sets[i])]
    return ImagePrediction(
        label=card.class_names[best],
        class_index=best,
        confidence=float(mean[best]),
        probabilities=mean.tolist(),
        variance=figures["variance"].tolist(),
        predictive_entropy=float(figures["predictive_entropy"]),
        aleatoric=float(figures["aleatoric"]),
        epistemic=float(figures["epistemic"]),
        uncertain=not bool(accepted),
        prediction_set=members,
        set_size=None if members is None else len(members),
        ood_score=None if np.isnan(score) else score,
        out_of_distribution=_is_ood(score, card.ood_threshold),
    )


def _is_ood(score: float, threshold: float | None) -> bool | None:
    """Score above the model's threshold; None when the model has no density or threshold."""
    if threshold is None or np.isnan(score):
        return None
    return score > threshold
