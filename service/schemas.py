"""Pydantic request and response models: what /docs.json describes.

The answer itself (`ImagePrediction`, `PredictionResponse`) is defined with
its builder in `models.answer`, which `uqserve predict` uses too.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import attrs
import numpy as np
from bentoml.validators import TensorSchema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictFloat,
    StrictInt,
)
from pydantic_core import core_schema

from models.answer import Alpha, ImagePrediction, PredictionResponse, Samples, Seed

Pixel = Union[StrictInt, StrictFloat]  # noqa: UP007 (pydantic needs a runtime union here)
PixelLists = Union[  # noqa: UP007 (2-D too: refused with a hint by `check_array`)
    list[list[Pixel]], list[list[list[Pixel]]], list[list[list[list[Pixel]]]]
]


@attrs.frozen(unsafe_hash=True)
class PixelTensor(TensorSchema):
    """BentoML's NumPy tensor field, strict about what it turns into numbers.

    The schema says `"type": "tensor"`, so BentoML's clients send a NumPy
    array as nested lists. On the way in, an array, or nested lists of JSON
    numbers (pydantic's strict types: no strings, booleans or nulls, which
    NumPy would quietly convert), rectangular, else a 400 naming `images`.
    Shapes are checked by `service.decoding.check_array`.
    """

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        lists = handler.generate_schema(PixelLists)
        arrays = core_schema.is_instance_schema(np.ndarray)
        return core_schema.no_info_after_validator_function(
            self.validate,
            core_schema.union_schema(
                [arrays, lists],
                custom_error_type="pixels",
                custom_error_message="expected nested lists of numbers (no strings, booleans "
                "or nulls), batch axis first: (N, H, W) or (N, H, W, C)",
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return super().__get_pydantic_json_schema__(core_schema.any_schema(), handler)

    def validate(self, obj: Any) -> np.ndarray:
        try:
            array = np.asarray(obj)
        except (ValueError, TypeError):
            raise ValueError("expected a rectangular nested list of numbers") from None
        if array.dtype.kind not in "iuf":
            raise ValueError(f"expected numbers, received {_kind(array)}")
        return array.astype(np.float32, copy=False)


def _kind(array: np.ndarray) -> str:
    """What a non-numeric array holds, for an error message."""
    names = {"b": "booleans", "U": "strings", "S": "bytes", "O": "a ragged list or nulls"}
    return names.get(array.dtype.kind, f"dtype {array.dtype}")


PixelBatch = Annotated[np.ndarray, PixelTensor("numpy-array", dtype="float32")]


class ArrayRequest(BaseModel):
    """A batch of pixel arrays in [0, 255], batch axis first: (N, H, W) or (N, H, W, C)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    images: PixelBatch = Field(
        description="A batch of images, batch axis first: (N, H, W) grayscale or (N, H, W, C) "
        "with C in 1, 3, 4; pixels in [0, 255]. One image is a batch of one: [image]."
    )
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
    computed_at: str = Field(description="When `sha256` was computed (ISO 8601, UTC).")
    age_s: float = Field(
        description="Seconds since then: at most UQSERVE_DIGEST_INTERVAL_S, as the digest is "
        "computed at most once per interval and served from memory in between."
    )


__all__ = [
    "Alpha",
    "ArrayRequest",
    "ImagePrediction",
    "ModelMetadata",
    "PixelBatch",
    "PredictionResponse",
    "Samples",
    "Seed",
    "WeightsDigest",
]
