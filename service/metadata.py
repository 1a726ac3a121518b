"""GET /metadata (what the served model is and what it accepts) and POST /weights_digest.

Plain Starlette routes beside BentoML's API: under load a call through
BentoML's API machinery cost the predictions several times what one of these
does (docs/reliability.md, API keys), and the admin route must stay cheap
however often it is called.
"""

from __future__ import annotations

import bentoml
import keras
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.schemas import ModelMetadata, WeightsDigest


async def metadata(request: Request) -> JSONResponse:
    """The model tag, classes, input shape, sampling limits and test metrics."""
    api = bentoml.get_current_service()
    card, settings = api.card, api.settings
    body = ModelMetadata(
        model=api.tag,
        class_names=list(card.class_names),
        input_shape=list(card.input_shape),
        default_samples=card.mc_samples,
        max_samples=settings.max_samples,
        max_images=settings.max_images,
        max_pixels=settings.max_pixels,
        max_file_bytes=settings.max_file_bytes,
        max_request_bytes=settings.max_request_bytes,
        temperature=card.temperature,
        uncertain_threshold=card.uncertain_threshold,
        ood_threshold=card.ood_threshold,
        guarantees=None if card.guarantees is None else card.guarantees.summary(),
        splits=card.splits,
        metrics=card.metrics,
        keras_backend=keras.backend.backend(),
    )
    return JSONResponse(body.model_dump())


async def weights_digest(request: Request) -> JSONResponse:
    """SHA-256 of the served weights, computed at most once per UQSERVE_DIGEST_INTERVAL_S (the
    last result in between, with its time), and at load: serving must never change them."""
    digest = bentoml.get_current_service().digest
    now = await digest.get()
    body = WeightsDigest(sha256=now.sha256, loaded_sha256=digest.loaded.sha256,
                         unchanged=now.sha256 == digest.loaded.sha256,
                         computed_at=now.computed_at, age_s=digest.age(now))  # fmt: skip
    return JSONResponse(body.model_dump())


metadata_routes = [
    Route("/metadata", metadata, methods=["GET"]),
    Route("/weights_digest", weights_digest, methods=["POST"]),
]
