"""GET /metadata: what the served model is and what it accepts."""

from __future__ import annotations

import bentoml
import keras
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.schemas import ModelMetadata


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


metadata_routes = [Route("/metadata", metadata, methods=["GET"])]
