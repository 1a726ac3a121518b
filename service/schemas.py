"""Pydantic request and response models: what /docs.json describes."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

Pixel = Union[StrictInt, StrictFloat]  # noqa: UP007 (pydantic needs a runtime union here)
PixelArray = Union[  # noqa: UP007
    list[list[Pixel]], list[list[list[Pixel]]], list[list[list[list[Pixel]]]]
]
SEED_MAX = 2**53 - 1  # seeds travel exactly in float64 job rows


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
        description="Negative log density of the image's base features under the training "
        "features' class-conditional Gaussians: higher is less like the training data."
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


class ArrayRequest(BaseModel):
    """Pixel arrays in [0, 255], shaped (H, W), (H, W, C) or (N, H, W, C)."""

    model_config = ConfigDict(extra="forbid")

    images: PixelArray
    samples: Annotated[StrictInt, Field(ge=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=SEED_MAX)] | None = None


class ModelMetadata(BaseModel):
    """What the served model is and what it accepts."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    class_names: list[str]
    input_shape: list[int]
    default_samples: int
    max_samples: int
    max_images: int
    max_pixels: int
    max_file_bytes: int
    max_request_bytes: int
    uncertain_threshold: float | None
    ood_threshold: float | None
    metrics: dict[str, float]


class WeightsDigest(BaseModel):
    """SHA-256 of the served weights (BN statistics included) now and when loaded."""

    sha256: str = Field(description="Digest of the weights in memory now.")
    loaded_sha256: str = Field(description="Digest right after loading, before any request.")
    unchanged: bool = Field(description="True when serving has not changed a single bit.")
