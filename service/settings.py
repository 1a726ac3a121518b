"""Service settings and input limits, from `UQSERVE_*` environment variables.

One frozen object, read once at import of the service module (BentoML needs
batching options when the class is declared). Every limit is enforced before
any decoding or model work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.images import MAX_PIXELS
from models.config import BaseDtype

ENV_PREFIX = "UQSERVE_"


class ServiceSettings(BaseModel):
    """What an operator can tune without touching code."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str = Field("uqserve_vgg16:latest", description="Model store tag to serve.")
    max_batch_size: int = Field(64, ge=1, description="Most images in one adaptive batch.")
    max_latency_ms: int = Field(
        10_000, ge=1, description="Adaptive batching latency budget; past it a 503 is returned."
    )
    max_samples: int = Field(200, ge=1, description="Largest `samples` a request may ask for.")
    max_images: int = Field(32, ge=1, description="Most images in one request.")
    max_pixels: int = Field(
        MAX_PIXELS, ge=1, description="Most pixels (width x height) of one image."
    )
    max_file_bytes: int = Field(20_000_000, ge=1, description="Largest uploaded file.")
    max_request_bytes: int = Field(
        50_000_000, ge=1, description="Largest request body (files or JSON), checked first."
    )
    request_timeout_s: int = Field(
        60,
        ge=1,
        description="A request still unanswered after this many seconds gets a 504. BentoML 1.4 "
        "also keeps each request's context in memory until then (its timeout timer is never "
        "cancelled), so memory levels off only after this long under steady traffic.",
    )
    workers: int = Field(1, ge=1, description="Service worker processes, each with its own model.")
    digest_interval_s: float = Field(
        60.0,
        ge=0,
        description="POST /weights_digest hashes the weights at most once per this many seconds "
        "and serves the last result, with its time, in between (0: on every call, one at a time).",
    )
    gpu: int = Field(0, ge=0, description="GPUs for the service (0: CPU).")
    base_dtype: BaseDtype = Field(
        "float32",
        description="What the frozen base computes in (Keras mixed precision). bfloat16 is "
        "much faster on CPUs with AVX512_BF16 or AMX and on GPUs, slower elsewhere; "
        "see docs/performance.md, Mixed precision.",
    )

    @model_validator(mode="after")
    def _batch_holds_a_request(self) -> ServiceSettings:
        if self.max_images > self.max_batch_size:
            raise ValueError(
                f"max_images={self.max_images} must not exceed max_batch_size={self.max_batch_size}"
            )
        if self.max_file_bytes > self.max_request_bytes:
            raise ValueError(
                f"max_file_bytes={self.max_file_bytes} must not exceed "
                f"max_request_bytes={self.max_request_bytes}"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Each field from `UQSERVE_<FIELD>` when set, else its default."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        return cls.model_validate(values)
