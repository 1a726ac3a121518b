"""The Open Inference Protocol (KServe v2 REST) beside the native API: same model, same batch.

    GET  /v2                                    server metadata (name, version, extensions)
    GET  /v2/health/live, /v2/health/ready      200 once the model is loaded and warmed up
    GET  /v2/models/{name}[/versions/{v}]       model metadata: inputs and outputs
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The model's name and version are its model store tag's (`uqserve_vgg16`,
`<version>`). An inference request carries one input: `images`, UINT8 or FP32
pixels in [0, 255] shaped [N, H, W] or [N, H, W, C] (C in 1, 3, 4), or
`files`, BYTES [N] of encoded images (PNG, JPEG, ...), which must travel as
binary data. Its `parameters` may hold `samples`, `seed` and `alpha`, as the
native API's fields. Each image's answer comes back as named output tensors
(`OUTPUTS`); the request's `outputs` picks some. The wire format is in
`service.tensors`; the checks, limits, decoder and answer builder are the
native API's own, so the same pixels and seed give the same answer as
`/predict_array`.

Errors are `{"error": "..."}`: 404 for an unknown model or version, 400 for
a malformed request, 413 past the body limit (`service.limits`), 503 when
overloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import bentoml
import keras
import numpy as np
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.images import ImageError
from models.answer import Options, Resolved
from service import jobs
from service.batching import Overloaded
from service.decoding import BadInput, check_batch
from service.errors import describe, overloaded
from service.schemas import PredictionResponse
from service.tensors import (
    HEADER_LENGTH,
    InferenceRequest,
    OutputTensor,
    ProtocolError,
    RequestedOutput,
    read_request,
    write_response,
)

EXTENSIONS = ["binary_tensor_data"]
PARAMETERS = ("samples", "seed", "alpha")  # per-request options, as the native API's fields
TRANSPORT = ("binary_data_output",)  # request parameters about the wire format
PER_IMAGE = ("confidence", "predictive_entropy", "aleatoric", "epistemic")  # FP32 [N]
OUTPUTS = {  # name: (datatype, per class); which the model has: `model_outputs`
    "probabilities": ("FP32", True),
    "variance": ("FP32", True),
    **{name: ("FP32", False) for name in PER_IMAGE},
    "uncertain": ("BOOL", False),
    "label": ("BYTES", False),
    "class_index": ("INT64", False),
    "prediction_set": ("BOOL", True),  # the set as a mask over the classes (calibrated models)
    "set_size": ("INT64", False),
    "ood_score": ("FP32", False),  # models with a density
    "out_of_distribution": ("BOOL", False),
}


def _error(message: str, status: int = 400) -> JSONResponse:
    """The protocol's error body, `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=status)


def _service() -> Any:
    """The `ApiService` instance of this worker (the model, its card, settings and batch)."""
    return bentoml.get_current_service()


def _name_and_version(api: Any) -> tuple[str, str]:
    """The served model's protocol name and version: its model store tag's two halves."""
    name, _, version = str(api.tag).partition(":")
    return name, version


def _unknown_model(api: Any, request: Request) -> JSONResponse | None:
    """A 404 naming what is served, when the path's model name or version is not it."""
    name, version = _name_and_version(api)
    asked, asked_version = request.path_params["name"], request.path_params.get("version")
    if asked == name and asked_version in (None, version):
        return None
    wanted = asked if asked_version is None else f"{asked} version {asked_version}"
    return _error(f"model {wanted} is not served; this server serves {name} version {version}",
                  404)  # fmt: skip


def model_outputs(api: Any) -> list[str]:
    """The outputs this model gives: sets only with guarantees, OOD only with a density."""
    absent = set()
    if api.card.guarantees is None:
        absent |= {"prediction_set", "set_size"}
    if api.density is None:
        absent |= {"ood_score", "out_of_distribution"}
    if api.card.ood_threshold is None:  # a score but no threshold: the native answer's null
        absent.add("out_of_distribution")
    return [name for name in OUTPUTS if name not in absent]


async def server_metadata(request: Request) -> JSONResponse:
    """GET /v2: the server's name, version (the bento's; "not available" from source) and
    protocol extensions."""
    version = bentoml.server_context.bento_version
    return JSONResponse({"name": "uqserve", "version": version, "extensions": EXTENSIONS})


async def live(request: Request) -> JSONResponse:
    """GET /v2/health/live: the process answers."""
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    """GET /v2/health/ready (and a model's /ready): routes answer only after warm-up."""
    if "name" in request.path_params and (missing := _unknown_model(_service(), request)):
        return missing
    return JSONResponse({"ready": True} | ({"name": request.path_params["name"]}
                                           if "name" in request.path_params else {}))  # fmt: skip


async def model_metadata(request: Request) -> JSONResponse:
    """GET /v2/models/{name}: inputs and outputs with name, datatype and shape (-1: any)."""
    api = _service()
    if missing := _unknown_model(api, request):
        return missing
    name, version = _name_and_version(api)
    classes = len(api.card.class_names)
    outputs = [
        {
            "name": out,
            "datatype": OUTPUTS[out][0],
            "shape": [-1, classes] if OUTPUTS[out][1] else [-1],
        }
        for out in model_outputs(api)
    ]
    inputs = [
        {"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, -1]},
        {"name": "files", "datatype": "BYTES", "shape": [-1]},
    ]
    return JSONResponse({"name": name, "versions": [version],
                         "platform": f"keras_{keras.backend.backend()}",
                         "inputs": inputs, "outputs": outputs})  # fmt: skip


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}/infer: decode and check off the event loop, batch, encode."""
    api = _service()
    if missing := _unknown_model(api, request):
        return missing
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        return _error(f"Content-Encoding: {encoding} is not supported; send the body as is", 415)
    try:
        body = await request.body()
    except ClientDisconnect:  # gone, or refused mid-body by `service.limits` (its 413 is sent)
        return Response(status_code=400)
    try:
        prepared = await anyio.to_thread.run_sync(
            _prepare, api, body, request.headers.get(HEADER_LENGTH)
        )
        answer = await api.predict_jobs(prepared.jobs, prepared.resolved)
    except ProtocolError as error:
        return _error(str(error), error.status)
    except (BadInput, ImageError) as error:
        return _error(str(error))
    except Overloaded:
        return overloaded(api.settings.max_latency_ms)
    return _respond(api, prepared, answer)


@dataclass(frozen=True)
class _Prepared:
    """A decoded and checked request: its jobs, options, id, and the outputs it wants."""

    jobs: list[jobs.ImageJob]
    resolved: Resolved
    id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary data)


def _prepare(api: Any, body: bytes, header_length: str | None) -> _Prepared:
    """Blocking: the request's tensors -> images, options and outputs, every check the native
    API's (limits, decoding, options)."""
    decoded = read_request(body, header_length, api.settings.max_images)
    request = decoded.request
    _check_named(api, request.model_name, request.model_version)
    if len(request.inputs) != 1:
        raise ProtocolError(
            f"inputs: expected one input, images or files, received {len(request.inputs)}"
        )
    options, outputs = _options(request.parameters), _outputs(api, request)  # before decoding
    images = _images(api, request.inputs[0].name, request.inputs[0].datatype, decoded.values[0])
    request_jobs, resolved = api.prepare_request(images, options)
    return _Prepared(request_jobs, resolved, request.id, outputs)


def _options(parameters: dict[str, Any]) -> Options:
    """The request's parameters -> the native API's options (same checks, same messages)."""
    unknown = set(parameters) - set(PARAMETERS) - set(TRANSPORT)
    if unknown:
        raise ProtocolError(f"parameters: unknown {sorted(unknown)}; "
                            f"this model reads {list(PARAMETERS)}")  # fmt: skip
    try:
        return Options(**{key: parameters[key] for key in PARAMETERS if key in parameters})
    except ValidationError as error:
        raise ProtocolError(f"parameters.{describe(error.errors(include_url=False))}") from None


def _check_named(api: Any, name: str | None, version: str | None) -> None:
    """A request's own `model_name` or `model_version`, when given, must be the model served."""
    served, served_version = _name_and_version(api)
    if name not in (None, served) or version not in (None, "", served_version):
        raise ProtocolError(f"model_name/model_version: {name} {version} is not the model "
                            f"served, {served} version {served_version}")  # fmt: skip


def _images(
    api: Any, name: str, datatype: str, value: np.ndarray | list[bytes]
) -> list[np.ndarray]:
    """The input tensor -> decoded pixels per image, checked as the native API checks them."""
    settings = api.settings
    if name == "images" and datatype in ("UINT8", "FP32"):
        array = check_batch(np.asarray(value, np.float32), name, settings.max_images,
                            settings.max_pixels)  # fmt: skip
        return list(array)
    if name == "files" and datatype == "BYTES":
        if not value:
            raise ProtocolError("files: expected at least one image file, received none")
        blobs: list[bytes] = list(value)  # type: ignore[arg-type]
        return api.decode_files([(len(b), _reader(b)) for b in blobs], "files")
    raise ProtocolError(
        f"inputs: expected images (UINT8 or FP32) or files (BYTES), received {name} ({datatype})"
    )


def _reader(blob: bytes) -> Callable[[], bytes]:
    """`decode_files` reads each file when its size has passed; here it is already in memory."""
    return lambda: blob


def _outputs(api: Any, request: InferenceRequest) -> list[tuple[str, bool]]:
    """(name, as binary) for each output asked for; all the model's outputs when none are.

    An output's only parameter is `binary_data`; any other (Triton's
    `classification`, shared memory) is a 400 rather than silently ignored.
    """
    available = model_outputs(api)
    default_binary = request.parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise ProtocolError("parameters.binary_data_output: expected true or false")
    if not request.outputs:
        return [(name, default_binary) for name in available]
    names = [output.name for output in request.outputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"outputs: each output at most once, received {names}")
    return [_output(output, available, default_binary) for output in request.outputs]


def _output(
    output: RequestedOutput, available: list[str], default_binary: bool
) -> tuple[str, bool]:
    """One requested output, checked -> (name, as binary)."""
    if output.name not in available:
        raise ProtocolError(f"outputs: {output.name!r} is not an output of this model "
                            f"({', '.join(available)})")  # fmt: skip
    parameters = output.parameters or {}
    if unknown := sorted(set(parameters) - {"binary_data"}):
        raise ProtocolError(f"outputs.{output.name}.parameters: {unknown} not supported; "
                            "only binary_data")  # fmt: skip
    binary = parameters.get("binary_data", default_binary)
    if not isinstance(binary, bool):
        raise ProtocolError(f"outputs.{output.name}.binary_data: expected true or false")
    return output.name, binary


def _respond(api: Any, prepared: _Prepared, answer: PredictionResponse) -> Response:
    """The answers as the requested output tensors, JSON or binary."""
    name, version = _name_and_version(api)
    tensors = output_tensors(answer, list(api.card.class_names))
    header: dict[str, Any] = {"model_name": name, "model_version": version}
    if prepared.id is not None:
        header["id"] = prepared.id
    used = {"samples": answer.samples, "seed": answer.seed, "alpha": answer.alpha}
    header["parameters"] = {k: v for k, v in used.items() if v is not None}  # no alpha: no sets
    body, header_length = write_response(
        header, [(tensors[out], binary) for out, binary in prepared.outputs]
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})  # fmt: skip


def output_tensors(answer: PredictionResponse, classes: list[str]) -> dict[str, OutputTensor]:
    """A response's predictions -> every output tensor, named as in `OUTPUTS`."""
    p = answer.predictions

    def column(field: str, dtype: str) -> np.ndarray:
        return np.array([getattr(item, field) for item in p], dtype)

    tensors = {  # a request holds at least one image: no empty (0, C) shapes to guard
        "probabilities": column("probabilities", "float32"),  # (N, C)
        "variance": column("variance", "float32"),
        **{field: column(field, "float32") for field in PER_IMAGE},
        "uncertain": column("uncertain", "bool"),
        "class_index": column("class_index", "int64"),
        "set_size": np.array([item.set_size or 0 for item in p], np.int64),
        "prediction_set": np.array(
            [[c in (item.prediction_set or ()) for c in classes] for item in p], bool
        ),
        "ood_score": np.array(
            [np.nan if item.ood_score is None else item.ood_score for item in p], np.float32
        ),
        "out_of_distribution": np.array([bool(item.out_of_distribution) for item in p], bool),
    }
    out = {key: OutputTensor(key, OUTPUTS[key][0], value) for key, value in tensors.items()}
    out["label"] = OutputTensor("label", "BYTES", [item.label.encode() for item in p])
    return out


routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
]
