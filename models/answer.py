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
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from models import uncertainty
from models.card import ModelCard
from models.density import FeatureDensity
from models.mc_dropout import ImageSeed, MCDropoutPredictor

MAX_SEED = 2**53 - 1  # largest request seed: the service's job rows carry seeds in float64
Samples = Annotated[StrictInt, Field(ge=1, description="Monte Carlo dropout samples.")]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED, description="Makes sampling reproducible.")]


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
    uncertain: bool = Field(description="Epistemic uncertainty above the model's threshold.")
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
    predictions: list[ImagePrediction]


def random_seed() -> int:
    """A fresh seed for a request that brought none (returned with the answer)."""
    return int(np.random.default_rng().integers(MAX_SEED))


def sample_and_score(
    predictor: MCDropoutPredictor,
    density: FeatureDensity | None,
    images: np.ndarray,
    samples: Sequence[int],
    streams: Sequence[ImageSeed],
) -> tuple[list[np.ndarray], np.ndarray]:
    """Preprocessed images (B, H, W, 3) -> per-image samples [(T_i, C)] and OOD scores (B,).

    The deterministic part runs once; the OOD score (NaN without a density)
    comes from the same pass's embeddings, at no extra cost. Scores are
    float32, as the service's job rows carry them, so every caller rounds alike.
    """
    draws, embeddings = predictor.sample_each(images, samples, streams)  # [(T_i, C)], (B, D)
    if density is None:
        return draws, np.full(len(images), np.nan, dtype=np.float32)
    return draws, (-density.log_density(embeddings)).astype(np.float32)


def build_answers(
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
    answers = []
    for i in range(len(samples)):
        best = int(mean[i].argmax())
        score = float(ood_scores[i])
        answers.append(
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
                ood_score=None if np.isnan(score) else score,
                out_of_distribution=_is_ood(score, card.ood_threshold),
            )
        )
    return answers


def _is_ood(score: float, threshold: float | None) -> bool | None:
    """Score above the model's threshold; None when the model has no density or threshold."""
    if threshold is None or np.isnan(score):
        return None
    return score > threshold
