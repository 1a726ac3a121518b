"""Pydantic request and response models: what /docs.json describes.

The answer itself (`ImagePrediction`, `PredictionResponse`) is defined with
its builder in `models.answer`, which `uqserve predict` uses too.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from models.answer import Alpha, ImagePrediction, PredictionResponse, Samples, Seed

Pixel = Union[StrictInt, StrictFloat]  # noqa: UP007 (pydantic needs a runtime union here)
PixelArray = Union[  # noqa: UP007
    list[list[Pixel]], list[list[list[Pixel]]], list[list[list[list[Pixel]]]]
]


class ArrayRequest(BaseModel):
    """Pixel arrays in [0, 255], shaped (H, W), (H, W, C) or (N, H, W, C)."""

    model_config = ConfigDict(extra="forbid")

    images: PixelArray
    samples: Samples | None = None
    seed: Seed | None = None
    alpha: Alpha | None = None


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
    temperature: float = Field(
        description="Each MC dropout sample is tempered by this before averaging (1: not tempered)."
    )
    uncertain_threshold: float | None
    ood_threshold: float | None
    guarantees: dict[str, Any] | None = Field(
        description="Prediction sets and risk-controlled acceptance: method, calibration size, "
        "alpha range, the acceptance rule (score, target risk, delta, threshold, why none) and "
        "the figures measured on the test split; per calibration (mc: the default T, single: T=1)."
    )
    splits: dict[str, str]
    metrics: dict[str, float]
    keras_backend: str = Field(
        description="The Keras backend computing the answers: tensorflow or jax "
        "(UQSERVE_KERAS_BACKEND). Same model, same answers in distribution, other random draws."
    )


class WeightsDigest(BaseModel):
    """SHA-256 of the served weights (BN statistics included) now and when loaded."""

    sha256: str = Field(description="Digest of the weights in memory now.")
    loaded_sha256: str = Field(description="Digest right after loading, before any request.")
    unchanged: bool = Field(description="True when serving has not changed a single bit.")


__all__ = [
    "Alpha",
    "ArrayRequest",
    "ImagePrediction",
    "ModelMetadata",
    "PixelArray",
    "PredictionResponse",
    "Samples",
    "Seed",
    "WeightsDigest",
]
