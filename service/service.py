"""The uqserve BentoML services.

`ApiService` (HTTP-facing): validation, decoding, preprocessing, the answer
(`models.answer`). `ModelService`: holds the Keras model and samples MC
dropout with adaptive batching (a sync API: Keras blocks). Both are thin
shells over `models/` and `adapters/`.

The API service's endpoints are async: decoding and preprocessing (blocking,
Keras) run in worker threads via `anyio.to_thread`, and the model service is
awaited with `to_async`, its idempotent call retried on a dropped connection
(BentoML 1.4.40's client; see `ApiService._sample`).

    bentoml serve service.service:ApiService      # from source
    bentoml serve uqserve:latest                  # from a built bento
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from starlette.responses import JSONResponse

from adapters.images import ImageError, decode_image
from adapters.model_store import StoredModel, require_model
from models.answer import (
    Alpha,
    Options,
    Resolved,
    build_answers,
    resolve_options,
    sample_and_score,
)
from models.card import ModelCard
from models.conformal import AlphaError
from models.density import limit_blas_threads
from models.fingerprint import weights_digest
from models.preprocessing import Preprocessor
from service import jobs
from service.decoding import BadInput, check_array
from service.errors import ValidationErrors
from service.limits import RequestLimits
from service.metadata import metadata_app
from service.metrics import observe
from service.schemas import (
    ArrayRequest,
    PixelArray,
    PredictionResponse,
    Samples,
    Seed,
    WeightsDigest,
)
from service.settings import ServiceSettings

SETTINGS = ServiceSettings.from_env()
MODEL_CALL_ATTEMPTS = 3
require_model(SETTINGS.model)  # fail start-up (and `bentoml build`) with a clear message


@bentoml.service(
    name="uqserve_model",
    workers=SETTINGS.workers,
    resources={"gpu": SETTINGS.gpu} if SETTINGS.gpu else {"cpu": "1"},
    traffic={"timeout": SETTINGS.request_timeout_s},
    # The API service's client to this service would recycle its HTTP session
    # every 100 requests or 300 s, closing it under calls in flight
    # (bentoml/BentoML#5540). A retry mends that while serving, but not during
    # shutdown, when this service takes no new connection. One session, kept.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class ModelService:
    """The Keras model behind an adaptive batch: job rows in, OOD scores and samples out."""

    bento_model = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        limit_blas_threads()  # once, for the process: OpenBLAS's spinning threads cost TF cores
        stored = StoredModel.of(self.bento_model)
        self.card: ModelCard = stored.card
        self.predictor = stored.predictor(SETTINGS.base_dtype)
        self.density = stored.density()
        self.loaded_digest = weights_digest(*self.predictor.served_models)

    @bentoml.on_startup
    def warm_up(self) -> None:
        """Trace the model for any batch size and predict once, before the service is ready."""
        self.predictor.warm_up(self.card.input_shape)
        image = np.zeros((1, *self.card.input_shape), dtype=np.float32)
        self.sample(jobs.pack(image, seed=0, samples=2))

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def sample(self, rows: np.ndarray) -> np.ndarray:
        """Sample every image of the (possibly merged) batch; see `service.jobs`."""
        images, streams, samples = jobs.unpack(rows, self.card.input_shape)
        observe.batch(len(images))
        draws, scores = sample_and_score(
            self.predictor, self.density, images, samples.tolist(), streams
        )
        return jobs.join_answer(draws, scores)

    @bentoml.api
    def weights_digest(self) -> WeightsDigest:
        """Digest of the weights in memory, to compare with the one taken at load."""
        now = weights_digest(*self.predictor.served_models)
        return WeightsDigest(sha256=now, loaded_sha256=self.loaded_digest,
                             unchanged=now == self.loaded_digest)  # fmt: skip


def _bad(error: BadInput | ImageError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=400)


def _overloaded() -> JSONResponse:
    """503 with a reason and a hint, when adaptive batching cannot meet the latency budget."""
    error = (
        "overloaded: the model service cannot answer within the latency budget of "
        f"{SETTINGS.max_latency_ms} ms (UQSERVE_MAX_LATENCY_MS); retry later"
    )
    return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "1"})


@bentoml.asgi_app(metadata_app, path="/")
@bentoml.service(name="uqserve", traffic={"timeout": SETTINGS.request_timeout_s})
class ApiService:
    """HTTP front door: `/predict` (image files), `/predict_array` (JSON), `GET /metadata`."""

    model_service = bentoml.depends(ModelService)
    bento_model = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        stored = StoredModel.of(self.bento_model)
        self.tag, self.card = stored.tag, stored.card
        self.settings = SETTINGS
        self.preprocess = Preprocessor(self.card.model.preprocessing)  # compiled

    @bentoml.on_startup
    def warm_up(self) -> None:
        """Trace preprocessing for any image, so the first request does not pay for it."""
        self.preprocess.warm_up()

    def _prepare(
        self, images: np.ndarray | list[np.ndarray], options: Options
    ) -> tuple[np.ndarray, Resolved]:
        """Limits, defaults and preprocessing -> (job rows, resolved options). Blocking."""
        try:
            resolved = resolve_options(self.card, options)
        except AlphaError as error:
            raise BadInput(str(error).replace("Invalid value for `alpha`", "alpha")) from None
        if resolved.samples > SETTINGS.max_samples:
            limit = SETTINGS.max_samples
            raise BadInput(f"samples: {resolved.samples} exceeds the limit of {limit}")
        x = self.preprocess(images)  # (n, H, W, 3)
        return jobs.pack(x, resolved.seed, resolved.samples), resolved

    async def _sample(self, rows: np.ndarray) -> np.ndarray:
        """Call the model service, retrying a dropped connection (the call is idempotent).

        A kept-alive connection can be closed by the model service just as a
        call is sent on it (`ServerDisconnectedError`), and BentoML 1.4.40's
        client, left to its defaults, closes its session under calls in flight
        ("Session is closed", bentoml/BentoML#5540; `ModelService` turns that
        recycling off). The same rows give the same answer, so a retry on a
        fresh connection is safe.
        """
        for _ in range(MODEL_CALL_ATTEMPTS - 1):
            try:
                return await self.model_service.to_async.sample(rows)
            except (aiohttp.ClientConnectionError, RuntimeError) as error:
                if isinstance(error, RuntimeError) and "closed" not in str(error):
                    raise
        return await self.model_service.to_async.sample(rows)  # last try: errors propagate

    async def _answer(self, prepare: Callable[[], tuple[np.ndarray, Resolved]]) -> Any:
        """Run the blocking `prepare` in a worker thread, sample, build the response."""
        rows, (samples, seed, alpha) = await anyio.to_thread.run_sync(prepare)
        try:
            answer = await self._sample(rows)
        except ServiceUnavailable:  # the model service shed the request: past the budget
            return _overloaded()
        scores, draws = jobs.split_answer(answer, samples, self.card.model.num_classes)
        predictions = build_answers(draws, scores, self.card, alpha)  # draws: (n, T, C)
        observe.predictions(predictions, samples)
        return PredictionResponse(
            model=self.tag, samples=samples, seed=seed, alpha=alpha, predictions=predictions
        )

    def _read(self, files: list[Path]) -> list[np.ndarray]:
        if len(files) > SETTINGS.max_images:
            raise BadInput(f"files: {len(files)} images exceeds the limit of {SETTINGS.max_images}")
        images = []
        for index, path in enumerate(files):
            name = f"files[{index}]"
            size = path.stat().st_size
            if size > SETTINGS.max_file_bytes:
                raise BadInput(
                    f"{name}: {size} bytes exceeds the limit of {SETTINGS.max_file_bytes}"
                )
            images.append(decode_image(path.read_bytes(), name, SETTINGS.max_pixels))
        return images

    @bentoml.api(route="/predict")
    async def predict(
        self,
        files: list[Path],
        samples: Samples | None = None,
        seed: Seed | None = None,
        alpha: Alpha | None = None,
    ) -> PredictionResponse:
        """Image files (PNG, JPEG, BMP, GIF, WebP) as a multipart form."""
        options = Options(samples=samples, seed=seed, alpha=alpha)
        try:
            return await self._answer(lambda: self._prepare(self._read(files), options))
        except (BadInput, ImageError) as error:
            return _bad(error)

    @bentoml.api(route="/predict_array", input_spec=ArrayRequest)
    async def predict_array(
        self,
        images: PixelArray,
        samples: Samples | None = None,
        seed: Seed | None = None,
        alpha: Alpha | None = None,
    ) -> PredictionResponse:
        """Pixel arrays in [0, 255]: (H, W), (H, W, C) or (N, H, W, C)."""
        options = Options(samples=samples, seed=seed, alpha=alpha)

        def prepare() -> tuple[np.ndarray, Resolved]:
            array = check_array(images, SETTINGS.max_images, SETTINGS.max_pixels)
            return self._prepare(array, options)

        try:
            return await self._answer(prepare)
        except (BadInput, ImageError) as error:
            return _bad(error)

    @bentoml.api(route="/weights_digest")
    async def weights_digest(self) -> WeightsDigest:
        """SHA-256 of the served weights now and at load: serving must never change them."""
        return await self.model_service.to_async.weights_digest()


ApiService.add_asgi_middleware(ValidationErrors)
ApiService.add_asgi_middleware(
    RequestLimits, max_bytes=SETTINGS.max_request_bytes, max_files=SETTINGS.max_images
)
