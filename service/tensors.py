"""The Open Inference Protocol's REST wire format (KServe v2): tensors in, tensors out.

A request body is JSON, or, with the binary tensor data extension (what
`tritonclient` sends by default), a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw bytes of each binary input, in the order of `inputs`:

    {"id": "7", "parameters": {"samples": 30, "seed": 0},
     "inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 28, 28],
                 "parameters": {"binary_data_size": 1568}}],
     "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}
    <1568 bytes: the pixels, row-major>

A tensor's `data` is a row-major JSON list (flat or nested), or its raw
little-endian bytes (`binary_data_size` of them). A BYTES element is a JSON
string, or in binary a 4-byte little-endian length and then its bytes.

A response is built the same way: an output asked for with
`"parameters": {"binary_data": true}` (or every output, when the request's
parameters say `"binary_data_output": true`) carries `binary_data_size` instead
of `data`, and its bytes follow the JSON header, whose length the response's
`Inference-Header-Content-Length` header gives.

Every malformed request is a `ProtocolError` with the status to answer and
a message naming the field: the protocol's `{"error": "..."}`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from service.errors import describe

HEADER_LENGTH = "inference-header-content-length"
MAX_RANK = 8  # most dimensions a tensor's shape may have
MAX_DIM = 2**31 - 1  # largest size of one dimension
READS = ("UINT8", "FP32")  # the numeric input datatypes; BYTES besides
NUMPY = {  # the protocol's datatypes this service reads or writes
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
}


class ProtocolError(ValueError):
    """A request refused in the protocol's form: `status` and a message for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InputTensor(BaseModel):
    """One input tensor as the request describes it (its data is decoded by `read_request`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutput(BaseModel):
    """An output the client asks for, and whether it wants it as binary data."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The JSON part of an inference request."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = None  # the KServe SDK sends it; must be the path's if given
    model_version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


class Decoded(NamedTuple):
    """A request and its inputs' values: an array, or a list of bytes for BYTES."""

    request: InferenceRequest
    values: list[np.ndarray | list[bytes]]


def read_request(body: bytes, header_length: str | None, max_items: int) -> Decoded:
    """An inference request body (and its `Inference-Header-Content-Length`) -> its tensors.

    `max_items` bounds the elements of a BYTES input (one per image file),
    checked on its shape before its bytes are split.
    """
    size = len(body) if header_length is None else _header_size(header_length, len(body))
    try:
        request = InferenceRequest.model_validate_json(body[:size])
    except ValidationError as error:
        raise ProtocolError(f"request: {describe(error.errors(include_url=False))}") from None
    binary, offset, values = memoryview(body)[size:], 0, []
    for tensor in request.inputs:
        length = _binary_size(tensor)
        if length is None:
            values.append(_from_json(tensor))
            continue
        if offset + length > len(binary):
            raise ProtocolError(
                f"inputs.{tensor.name}: binary_data_size {length} runs past the body's end"
            )
        values.append(_from_bytes(tensor, binary[offset : offset + length], max_items))
        offset += length
    if offset != len(binary):
        raise ProtocolError(f"request: {len(binary) - offset} bytes after the last binary input")
    return Decoded(request, values)


def _header_size(value: str, body_size: int) -> int:
    """The JSON header's length: ASCII digits, at most the body's size."""
    if not (value.isascii() and value.isdigit() and len(value) <= 20) or int(value) > body_size:
        raise ProtocolError(
            f"Inference-Header-Content-Length: expected a byte count up to the body's "
            f"{body_size}, received {value!r}"
        )
    return int(value)


def _binary_size(tensor: InputTensor) -> int | None:
    """The tensor's `binary_data_size`, or None when its data is in the JSON. It is an input's
    only parameter: any other (Triton's shared memory) is a 400, not ignored."""
    if unknown := sorted(set(tensor.parameters or {}) - {"binary_data_size"}):
        raise ProtocolError(f"inputs.{tensor.name}.parameters: {unknown} not supported; "
                            "only binary_data_size")  # fmt: skip
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"inputs.{tensor.name}: binary_data_size must be a byte count")
    if tensor.data is not None:
        raise ProtocolError(f"inputs.{tensor.name}: both data and binary_data_size")
    return size


def _elements(tensor: InputTensor) -> int:
    """The element count its shape declares (shape checked: at most MAX_RANK sizes, each in
    [0, MAX_DIM])."""
    if len(tensor.shape) > MAX_RANK:
        raise ProtocolError(f"inputs.{tensor.name}: shape has {len(tensor.shape)} dimensions, "
                            f"more than {MAX_RANK}")  # fmt: skip
    if any(dim < 0 or dim > MAX_DIM for dim in tensor.shape):
        raise ProtocolError(f"inputs.{tensor.name}: shape {tensor.shape} has a size below 0 "
                            f"or above {MAX_DIM}")  # fmt: skip
    return math.prod(tensor.shape)


def _reshape(tensor: InputTensor, flat: np.ndarray) -> np.ndarray:
    """The flat values in the tensor's shape (element count already checked)."""
    try:
        return flat.reshape(tensor.shape)
    except ValueError as error:  # NumPy's own limits: an empty array of absurd dimensions
        raise ProtocolError(f"inputs.{tensor.name}: shape {tensor.shape}: {error}") from None


def _dtype(tensor: InputTensor) -> np.dtype:
    """The NumPy dtype of a numeric input's datatype; a 400 for a datatype not read here."""
    if tensor.datatype not in READS:
        raise ProtocolError(
            f"inputs.{tensor.name}: datatype {tensor.datatype!r} is not one this service "
            f"reads ({', '.join([*READS, 'BYTES'])})"
        )
    return NUMPY[tensor.datatype]


def _from_bytes(tensor: InputTensor, raw: memoryview, max_items: int) -> np.ndarray | list[bytes]:
    """A binary input's raw bytes -> its array (or its BYTES elements), shape checked."""
    count = _elements(tensor)
    if tensor.datatype == "BYTES":
        if count > max_items:
            raise ProtocolError(
                f"inputs.{tensor.name}: {count} elements exceeds the limit of {max_items}"
            )
        return _split_bytes(tensor.name, bytes(raw), count)
    dtype = _dtype(tensor)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"inputs.{tensor.name}: shape {tensor.shape} of {tensor.datatype} needs "
            f"{count * dtype.itemsize} bytes, received binary_data_size {len(raw)}"
        )
    return _reshape(tensor, np.frombuffer(raw, dtype))


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """BYTES elements, each a 4-byte little-endian length and then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"inputs.{name}: a BYTES element's length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"inputs.{name}: a BYTES element runs past its tensor's end")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
        if len(elements) > count:
            break
    if len(elements) != count:
        received = f"more than {count}" if len(elements) > count else str(len(elements))
        raise ProtocolError(f"inputs.{name}: shape says {count} elements, received {received}")
    return elements


def _from_json(tensor: InputTensor) -> np.ndarray | list[bytes]:
    """A JSON input's `data` (flat or nested, row-major) -> its array, shape and values checked."""
    count, name = _elements(tensor), tensor.name
    if tensor.datatype == "BYTES":
        raise ProtocolError(
            f"inputs.{name}: send BYTES (image files) as binary data (binary_data_size); "
            "a JSON string cannot hold a file's bytes"
        )
    dtype = _dtype(tensor)
    try:
        flat = np.asarray(tensor.data).reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError(f"inputs.{name}: data must be a rectangular list of numbers") from None
    if flat.size != count:
        raise ProtocolError(f"inputs.{name}: shape {tensor.shape} needs {count} values, "
                            f"received {flat.size}")  # fmt: skip
    if flat.size and (flat.dtype.kind not in ("iu" if dtype.kind == "u" else "iuf")
                      or _has_booleans(tensor.data)):  # fmt: skip
        raise ProtocolError(f"inputs.{name}: data must be {tensor.datatype} values")
    if dtype.kind == "u" and flat.size and (flat.min() < np.iinfo(dtype).min
                                             or flat.max() > np.iinfo(dtype).max):  # fmt: skip
        raise ProtocolError(f"inputs.{name}: a value out of the range of {tensor.datatype}")
    return _reshape(tensor, flat.astype(dtype))


def _has_booleans(values: Any) -> bool:
    """Whether JSON values NumPy read as numbers hold a true or false (which it reads as 1, 0)."""
    is_boolean = np.frompyfunc(lambda value: isinstance(value, bool), 1, 1)
    return bool(np.any(is_boolean(np.asarray(values, dtype=object))))


class OutputTensor(NamedTuple):
    """One output of a response: its name, datatype and value (BYTES: a list of bytes)."""

    name: str
    datatype: str
    value: np.ndarray | list[bytes]


def write_response(
    header: dict[str, Any], outputs: list[tuple[OutputTensor, bool]]
) -> tuple[bytes, int | None]:
    """The response body for `header` (model_name, model_version, id, parameters) and the
    outputs, each (tensor, as binary) -> (body, JSON header length; None if all JSON)."""
    described, chunks = [], []
    for tensor, binary in outputs:
        shape = [len(tensor.value)] if isinstance(tensor.value, list) else list(tensor.value.shape)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if binary:
            raw = _to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(tensor)
        described.append(entry)
    head = json.dumps({**header, "outputs": described}).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def _to_bytes(tensor: OutputTensor) -> bytes:
    """An output's binary data: raw little-endian values, or length-prefixed BYTES elements."""
    if isinstance(tensor.value, list):
        return b"".join(struct.pack("<I", len(item)) + item for item in tensor.value)
    return np.ascontiguousarray(tensor.value, NUMPY[tensor.datatype]).tobytes()


def _to_json(tensor: OutputTensor) -> list[Any]:
    """An output's JSON data: its values flat, row-major (BYTES as strings)."""
    if isinstance(tensor.value, list):
        return [item.decode() for item in tensor.value]
    return tensor.value.reshape(-1).tolist()
