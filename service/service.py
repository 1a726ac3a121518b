"""The uqserve BentoML service.

One service, one process per worker: HTTP, validation, decoding, and the
Keras model behind an adaptive batch (`service.batching`, BentoML's own
dispatcher). A thin shell over `models/` and `adapters/`: the answers are
built by `models.answer`, exactly as `uqserve predict` builds them.

The endpoints are async and the event loop never blocks: reading and
decoding run in a worker thread (`anyio.to_thread`), and so does each batch
(`service.jobs`: preprocessing and one compiled sampling call in the batch
slot, then the OOD score while the next batch runs).

    bentoml serve service.service:ApiService      # from source
    bentoml serve uqserve:latest                  # from a built bento
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from adapters.images import ImageError, decode_image
from adapters.model_store import StoredModel, require_model
from models.answer import (
    Alpha,
    Options,
    Resolved,
    build_answers,
    resolve_options,
    warm_up_scores,
)
from models.conformal import AlphaError
from models.density import limit_blas_threads
from models.fingerprint import weights_digest
from models.preprocessing import Preprocessor
from service import jobs, open_inference
from service.auth import ApiKeys, Authenticate
from service.batching import Batcher, Overloaded
from service.decoding import BadInput, check_array
from service.digest import DigestCache
from service.errors import ValidationErrors, overloaded
from service.limits import RequestLimits
from service.metadata import metadata_routes
from service.metrics import observe
from service.schemas import (
    ArrayRequest,
    PixelBatch,
    PredictionResponse,
    Samples,
    Seed,
)
from service.settings import ServiceSettings

SETTINGS = ServiceSettings.from_env()
KEYS = ApiKeys.from_env()  # a bad key setting stops start-up, naming the variable
require_model(SETTINGS.model)  # fail start-up (and `bentoml build`) with a clear message


def _bad(error: BadInput | ImageError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=400)


@bentoml.asgi_app(Starlette(routes=[*metadata_routes, *open_inference.routes]), path="/")
@bentoml.service(
    name="uqserve",
    workers=SETTINGS.workers,
    **({"resources": {"gpu": SETTINGS.gpu}} if SETTINGS.gpu else {}),
    traffic={"timeout": SETTINGS.request_timeout_s},
)
class ApiService:
    """`/predict` (image files), `/predict_array` (JSON), `GET /metadata`, `/weights_digest`,
    and the Open Inference Protocol under `/v2` (`service.open_inference`)."""

    bento_model = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        limit_blas_threads()  # once, for the process: OpenBLAS's spinning threads cost TF cores
        stored = StoredModel.of(self.bento_model)
        self.tag, self.card = stored.tag, stored.card
        self.settings = SETTINGS
        self.predictor = stored.predictor(SETTINGS.base_dtype, SETTINGS.max_batch_size)
        self.density = stored.density()
        self.preprocess = Preprocessor(self.card.model.preprocessing)  # compiled
        self.digest = DigestCache(
            lambda: weights_digest(*self.predictor.served_models), SETTINGS.digest_interval_s
        )
        logging.getLogger("bentoml").info(KEYS.describe())
        self.batch: Batcher[jobs.ImageJob, jobs.Sampled, jobs.ImageAnswer] = Batcher(
            self._sample, self._score, SETTINGS.max_batch_size, SETTINGS.max_latency_ms,
            observe.batch,
        )  # fmt: skip

    @bentoml.on_startup
    def warm_up(self) -> None:
        """Trace preprocessing and the model for any batch and T up to the limit, and
        score every batch size, before the service is ready (JAX compiles per shape)."""
        self.preprocess.warm_up()
        self.predictor.warm_up(self.card.input_shape, max_samples=SETTINGS.max_samples)
        batch = jobs.request_jobs([np.zeros((8, 8), np.uint8)], seed=0, samples=2)
        sampled = self._sample(batch)
        self._score(batch, sampled)
        warm_up_scores(self.density, sampled.embeddings, sampled.hidden, SETTINGS.max_batch_size)

    @bentoml.on_shutdown
    def stop_batching(self) -> None:
        """Stop the dispatcher's loop when the worker shuts down."""
        self.batch.shutdown()

    def _sample(self, batch: list[jobs.ImageJob]) -> jobs.Sampled:
        """A batch's samples (blocking: a worker thread, in the batch slot)."""
        return jobs.sample_jobs(self.preprocess, self.predictor, batch)

    def _score(self, batch: list[jobs.ImageJob], sampled: jobs.Sampled) -> list[jobs.ImageAnswer]:
        """A batch's OOD scores (blocking: a worker thread, after the slot)."""
        return jobs.answer_jobs(self.density, sampled)

    def prepare_request(
        self, images: list[np.ndarray], options: Options
    ) -> tuple[list[jobs.ImageJob], Resolved]:
        """Limits and defaults -> (the request's jobs, resolved options). Cheap."""
        try:
            resolved = resolve_options(self.card, options)
        except AlphaError as error:
            raise BadInput(str(error).replace("Invalid value for `alpha`", "alpha")) from None
        if resolved.samples > SETTINGS.max_samples:
            limit = SETTINGS.max_samples
            raise BadInput(f"samples: {resolved.samples} exceeds the limit of {limit}")
        return jobs.request_jobs(images, resolved.seed, resolved.samples), resolved

    async def _answer(self, prepare: Callable[[], tuple[list[jobs.ImageJob], Resolved]]) -> Any:
        """Run the blocking `prepare` in a worker thread, batch, answer (503 when shed)."""
        try:
            return await self.predict_jobs(*await anyio.to_thread.run_sync(prepare))
        except Overloaded:  # shed by the dispatcher: past the latency budget
            return overloaded(SETTINGS.max_latency_ms)

    async def predict_jobs(
        self, request: list[jobs.ImageJob], resolved: Resolved
    ) -> PredictionResponse:
        """A prepared request's answers, batched with others'; raises `Overloaded` if shed."""
        samples, seed, alpha = resolved
        answers = await self.batch(request)
        draws, scores = jobs.stack_answers(answers)  # (n, T, C), (n,)
        predictions = build_answers(draws, scores, self.card, alpha)
        observe.predictions(predictions, samples)
        return PredictionResponse(
            model=self.tag, samples=samples, seed=seed, alpha=alpha, predictions=predictions
        )

    def decode_files(self, files: Sequence[tuple[int, Callable[[], bytes]]],
                     field: str) -> list[np.ndarray]:  # fmt: skip
        """(size, read) per image file -> decoded pixels, the count and each size checked
        before anything is read; `field` names the input in errors."""
        if len(files) > SETTINGS.max_images:
            raise BadInput(
                f"{field}: {len(files)} images exceeds the limit of {SETTINGS.max_images}"
            )
        images = []
        for index, (size, read) in enumerate(files):
            name = f"{field}[{index}]"
            if size > SETTINGS.max_file_bytes:
                raise BadInput(
                    f"{name}: {size} bytes exceeds the limit of {SETTINGS.max_file_bytes}"
                )
            images.append(decode_image(read(), name, SETTINGS.max_pixels))
        return images

    def _read(self, files: list[Path]) -> list[np.ndarray]:
        return self.decode_files(
            [(path.stat().st_size, path.read_bytes) for path in files], "files"
        )

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
            return await self._answer(lambda: self.prepare_request(self._read(files), options))
        except (BadInput, ImageError) as error:
            return _bad(error)

    @bentoml.api(route="/predict_array", input_spec=ArrayRequest)
    async def predict_array(
        self,
        images: PixelBatch,
        samples: Samples | None = None,
        seed: Seed | None = None,
        alpha: Alpha | None = None,
    ) -> PredictionResponse:
        """A batch of pixel arrays in [0, 255], batch axis first: (N, H, W) or (N, H, W, C)."""
        options = Options(samples=samples, seed=seed, alpha=alpha)

        def prepare() -> tuple[list[jobs.ImageJob], Resolved]:
            array = check_array(images, SETTINGS.max_images, SETTINGS.max_pixels)
            return self.prepare_request(list(array), options)

        try:
            return await self._answer(prepare)
        except (BadInput, ImageError) as error:
            return _bad(error)


ApiService.add_asgi_middleware(Authenticate, keys=KEYS)
ApiService.add_asgi_middleware(ValidationErrors)
ApiService.add_asgi_middleware(
    RequestLimits, max_bytes=SETTINGS.max_request_bytes, max_files=SETTINGS.max_images
)
