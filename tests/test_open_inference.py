"""The Open Inference Protocol (KServe v2 REST) in-process, encoded and parsed by tritonclient.

`tritonclient.http.InferenceServerClient.generate_request_body` and
`parse_response_body` are the client's own wire format, JSON and binary; the
answers must equal the native API's for the same pixels, file and seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from adapters.model_store import StoredModel
from tests.service_helpers import CLASSES, png

HEADER = "Inference-Header-Content-Length"
FLOATS = ("confidence", "predictive_entropy", "aleatoric", "epistemic", "ood_score")


def _path(tag: str, suffix: str = "infer") -> str:
    name, version = tag.split(":")
    return f"/v2/models/{name}/versions/{version}/{suffix}"


def _input(array: np.ndarray, datatype: str, binary: bool, name: str = "images") -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _infer(client, tag, inputs, outputs=None, parameters=None):
    """POST a tritonclient-encoded request; the parsed InferResult of a 200."""
    body, json_size = InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=parameters
    )
    headers = {} if json_size is None else {HEADER: str(json_size)}
    response = client.post(_path(tag), content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get(HEADER)
    return InferenceServerClient.parse_response_body(
        response.content, header_length=None if length is None else int(length)
    )


def _native(client, images: np.ndarray, seed: int, samples: int) -> list[dict]:
    body = {"images": images.tolist(), "seed": seed, "samples": samples}
    response = client.post("/predict_array", json=body)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _assert_same(result, native: list[dict]) -> None:
    """Every output tensor of `result` equals the native answer's field, image by image."""
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), np.float32([p["probabilities"] for p in native])
    )
    np.testing.assert_array_equal(
        result.as_numpy("variance"), np.float32([p["variance"] for p in native])
    )
    for name in FLOATS:
        np.testing.assert_array_equal(result.as_numpy(name), np.float32([p[name] for p in native]))
    for name in ("uncertain", "out_of_distribution", "class_index", "set_size"):
        assert result.as_numpy(name).tolist() == [p[name] for p in native], name
    assert [label.decode() for label in result.as_numpy("label")] == [p["label"] for p in native]
    sets = result.as_numpy("prediction_set")
    assert [[CLASSES[c] for c in np.flatnonzero(row)] for row in sets] == [
        sorted(p["prediction_set"], key=CLASSES.index) for p in native
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize(
    ("shape", "datatype"), [((3, 8, 8), "UINT8"), ((2, 10, 12, 3), "FP32"), ((1, 9, 7, 4), "UINT8")]
)
def test_infer_equals_predict_array(client, tag, shape, datatype, binary):
    pixels = np.random.default_rng(3).integers(0, 256, shape)
    array = pixels.astype(np.uint8 if datatype == "UINT8" else np.float32)
    result = _infer(client, tag, [_input(array, datatype, binary)],
                    parameters={"samples": 5, "seed": 11})  # fmt: skip
    _assert_same(result, _native(client, pixels, seed=11, samples=5))
    response = result.get_response()
    assert response["parameters"]["seed"] == 11 and response["parameters"]["samples"] == 5
    assert result.as_numpy("probabilities").shape == (shape[0], len(CLASSES))
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-6)


def test_files_equal_predict(client, tag):
    blobs = [png(21), png(22, size=(30, 16))]
    files = _input(np.array(blobs, dtype=np.object_), "BYTES", binary=True, name="files")
    result = _infer(client, tag, [files], parameters={"samples": 4, "seed": 2})
    form = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    native = client.post("/predict", files=form, data={"samples": "4", "seed": "2"})
    assert native.status_code == 200, native.text
    _assert_same(result, native.json()["predictions"])


def test_outputs_selected_and_mixed_json_and_binary(client, tag):
    array = np.full((2, 8, 8), 40, np.uint8)
    outputs = [InferRequestedOutput("epistemic", binary_data=False),
               InferRequestedOutput("label", binary_data=True)]  # fmt: skip
    result = _infer(client, tag, [_input(array, "UINT8", True)], outputs=outputs,
                    parameters={"seed": 1, "alpha": 0.5})  # fmt: skip
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["epistemic", "label"]
    assert "data" in response["outputs"][0] and "data" not in response["outputs"][1]
    assert response["parameters"]["alpha"] == 0.5
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (2,)


def test_metadata_health_and_server(client, tag):
    name, version = tag.split(":")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{name}/ready").status_code == 200
    assert client.get(_path(tag, "ready")).status_code == 200
    server = client.get("/v2").json()
    assert server["name"] == "uqserve" and "binary_tensor_data" in server["extensions"]
    metadata = client.get(f"/v2/models/{name}").json()
    assert metadata == client.get(f"/v2/models/{name}/versions/{version}").json()
    assert metadata["name"] == name and metadata["versions"] == [version]
    assert [i["name"] for i in metadata["inputs"]] == ["images", "files"]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, len(CLASSES)]
    assert outputs["label"]["datatype"] == "BYTES" and outputs["uncertain"]["datatype"] == "BOOL"
    card = StoredModel.open(tag).card
    assert ("prediction_set" in outputs) == (card.guarantees is not None)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/{name}/versions/0/ready",
        "/v2/models/{name}/versions/0",
    ],
)
def test_unknown_model_or_version_is_a_404(client, tag, path):
    response = client.get(path.format(name=tag.split(":")[0]))
    assert response.status_code == 404
    assert "is not served" in response.json()["error"]


def test_infer_on_an_unknown_version_is_a_404(client, tag):
    name = tag.split(":")[0]
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2],
                        "data": [1, 2, 3, 4]}]}  # fmt: skip
    response = client.post(f"/v2/models/{name}/versions/0/infer", json=body)
    assert response.status_code == 404 and "version 0" in response.json()["error"]


def _images(data=None, shape=(1, 2, 2), datatype="UINT8", **extra) -> dict:
    tensor = {"name": "images", "datatype": datatype, "shape": list(shape),
              "data": [1, 2, 3, 4] if data is None else data}  # fmt: skip
    return {"inputs": [tensor], **extra}


BAD_JSON = [
    ("not json", b"{images", "request"),
    ("no inputs", {"parameters": {}}, "inputs"),
    ("two inputs", {"inputs": _images()["inputs"] * 2}, "expected one input"),
    ("unknown input", {"inputs": [{**_images()["inputs"][0], "name": "x"}]}, "received x"),
    ("wrong datatype", _images(datatype="INT32"), "datatype 'INT32'"),
    ("bool datatype", _images(data=[True] * 4, datatype="BOOL"), "datatype 'BOOL'"),
    ("too few values", _images(data=[1, 2, 3]), "needs 4 values"),
    ("negative shape", _images(shape=(1, -2, -2)), "below 0"),
    ("strings", _images(data=["a", "b", "c", "d"]), "UINT8 values"),
    ("booleans among numbers", _images(data=[True, 2, 3, 4]), "UINT8 values"),
    ("65 dimensions", _images(data=[1], shape=[1] * 65), "more than 8"),
    ("a size of 10**30", _images(data=[], shape=(0, 10**30)), "above"),
    (
        "an input parameter",
        {"inputs": [{**_images()["inputs"][0], "parameters": {"shared_memory_region": "x"}}]},
        "['shared_memory_region'] not supported",
    ),
    ("floats as UINT8", _images(data=[1.5, 2, 3, 4]), "UINT8 values"),
    ("UINT8 over 255", _images(data=[300, 2, 3, 4]), "out of the range"),
    ("FP32 over 255", _images(data=[300.0, 2, 3, 4], datatype="FP32"), "[0, 255]"),
    ("rank 2", _images(shape=(2, 2)), "expected a batch"),
    ("rank 5", _images(data=[1] * 4, shape=(1, 1, 2, 2, 1)), "expected a batch"),
    ("two channels", _images(data=[1] * 8, shape=(1, 2, 2, 2)), "channels"),
    ("no images", _images(data=[], shape=(0, 2, 2)), "at least one image"),
    ("too many images", _images(data=[1] * 20, shape=(5, 2, 2)), "limit of 4"),
    ("too many pixels", _images(data=[1] * 160000, shape=(1, 400, 400)), "pixels"),
    (
        "files in JSON",
        {"inputs": [{"name": "files", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        "binary data",
    ),
    ("another model_name", _images(model_name="other"), "is not the model served"),
    ("unknown parameter", _images(parameters={"sample": 3}), "unknown ['sample']"),
    ("samples a string", _images(parameters={"samples": "3"}), "samples"),
    ("samples over the limit", _images(parameters={"samples": 51}), "limit of 50"),
    ("alpha out of range", _images(parameters={"alpha": 1.5}), "alpha"),
    ("seed negative", _images(parameters={"seed": -1}), "seed"),
    ("unknown output", _images(outputs=[{"name": "logits"}]), "'logits' is not an output"),
    ("an output twice", _images(outputs=[{"name": "label"}] * 2), "at most once"),
    (
        "classification",
        _images(outputs=[{"name": "probabilities", "parameters": {"classification": 2}}]),
        "['classification'] not",
    ),
    (
        "binary_data not a bool",
        _images(outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
        "true or false",
    ),
]


@pytest.mark.parametrize(("why", "body", "names"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_a_bad_request_is_a_400_naming_the_problem(client, tag, why, body, names):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(_path(tag), content=content)
    assert response.status_code == 400, response.text
    assert names in response.json()["error"]


def _binary(header: dict, payload: bytes, length: str | bytes | None = None):
    head = json.dumps(header).encode()
    return head + payload, {HEADER: str(len(head)) if length is None else length}


def _refused(client, tag, tensor: dict, payload: bytes) -> str:
    """POST one binary input tensor and its payload; the error message of the 400 it must get."""
    content, headers = _binary({"inputs": [tensor]}, payload)
    response = client.post(_path(tag), content=content, headers=headers)
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _files(count: int, payload: bytes) -> dict:
    return {"name": "files", "datatype": "BYTES", "shape": [count],
            "parameters": {"binary_data_size": len(payload)}}  # fmt: skip


BAD_BINARY = [
    ("size short of the shape", 3, b"\x01\x02\x03", "needs 4 bytes"),
    ("size past the body", 8, b"\x01\x02\x03\x04", "past the body's end"),
    ("bytes after the inputs", 4, b"\x01\x02\x03\x04\x05", "after the last binary input"),
    ("size not a number", "4", b"\x01\x02\x03\x04", "byte count"),
]


@pytest.mark.parametrize(("why", "size", "payload", "names"), BAD_BINARY,
                         ids=[c[0] for c in BAD_BINARY])  # fmt: skip
def test_bad_binary_data_is_a_400(client, tag, why, size, payload, names):
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 2, 2],
              "parameters": {"binary_data_size": size}}  # fmt: skip
    assert names in _refused(client, tag, tensor, payload)


def test_an_empty_tensor_of_absurd_shape_is_a_400(client, tag):
    """Zero elements, so zero bytes match, but NumPy cannot make the shape: a 400, not a 500."""
    tensor = {"name": "images", "datatype": "FP32", "shape": [0] + [2**31 - 1] * 7,
              "parameters": {"binary_data_size": 0}}  # fmt: skip
    assert "shape" in _refused(client, tag, tensor, b"")


def test_outputs_empty_means_every_output(client, tag):
    content = json.dumps(_images(outputs=[])).encode()
    response = client.post(_path(tag), content=content)
    assert response.status_code == 200, response.text
    names = [o["name"] for o in response.json()["outputs"]]
    assert names == [o["name"] for o in client.get(_path(tag, "")[:-1]).json()["outputs"]]


@pytest.mark.parametrize(
    "elements", [b"\x00\x00\x00\x00" * 5, b"\x00\x00\x00\x00" * 100_000], ids=["5 of 4", "100000"]
)
def test_more_files_than_the_limit_are_a_400_before_splitting(client, tag, elements):
    error = _refused(client, tag, _files(len(elements) // 4, elements), elements)
    assert "exceeds the limit of 4" in error


def test_more_bytes_elements_than_the_shape_are_a_400(client, tag):
    elements = b"\x00\x00\x00\x00" * 100_000  # zero-length elements: shape says 1
    error = _refused(client, tag, _files(1, elements), elements)
    assert "shape says 1 elements, received more than 1" in error


@pytest.mark.parametrize(
    "length", ["-1", "abc", "100000", b"\xb2", "9" * 4301], ids=["-1", "abc", "big", "²", "long"]
)
def test_a_bad_header_length_is_a_400(client, tag, length):
    content, headers = _binary(_images(), b"", length=length)
    response = client.post(_path(tag), content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


@pytest.mark.parametrize(
    ("elements", "names"),
    [
        (b"\x05\x00\x00\x00ab", "past its tensor's end"),
        (b"\x02\x00", "cut short"),
        (b"\x03\x00\x00\x00abc", "files[0]: not a supported image"),
    ],
)
def test_bad_files_are_a_400(client, tag, elements, names):
    assert names in _refused(client, tag, _files(1, elements), elements)


def test_a_compressed_body_is_a_415(client, tag):
    response = client.post(_path(tag), content=b"\x1f\x8b", headers={"content-encoding": "gzip"})
    assert response.status_code == 415
    assert "Content-Encoding: gzip" in response.json()["error"]


def test_a_body_over_the_limit_is_a_413(client, tag):
    response = client.post(_path(tag), content=b"x" * 1_000_001)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


def test_predict_array_reads_a_grayscale_batch(client):
    """Three 8x8 digits as (3, 8, 8): three answers, as for (3, 8, 8, 1); the first as alone."""
    digits = np.random.default_rng(5).integers(0, 256, (3, 8, 8))
    together = _native(client, digits, seed=4, samples=3)
    assert len(together) == 3
    assert together == _native(client, digits[..., None], seed=4, samples=3)  # (N, H, W, 1)
    assert together[0] == _native(client, digits[:1], seed=4, samples=3)[0]


@pytest.mark.parametrize(
    ("shape", "names"),
    [((8, 8, 3), "ambiguous"), ((28, 28, 1), "ambiguous"), ((8, 8), "batch of one: [image]")],
)
def test_predict_array_refuses_what_is_ambiguous(client, shape, names):
    response = client.post("/predict_array", json={"images": np.zeros(shape).tolist()})
    assert response.status_code == 400, response.text
    assert names in response.json()["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)
TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["images", "files", "x"]),
     "datatype": st.sampled_from(["UINT8", "FP32", "BYTES", "BOOL", "INT64"]),
     "shape": st.lists(st.integers(-2, 5) | st.integers(0, 10**30), max_size=70)},
    optional={"data": JSON, "parameters": st.dictionaries(
        st.sampled_from(["binary_data_size", "x"]), st.integers(-2, 40) | JSON, max_size=2)},
)  # fmt: skip
REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(TENSOR, max_size=2)},
    optional={"parameters": st.dictionaries(st.sampled_from(["samples", "seed", "alpha",
                                                             "binary_data_output", "x"]),
                                            JSON, max_size=3),
              "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(
                  ["label", "probabilities", "x"])}, optional={"parameters": JSON}), max_size=2),
              "id": JSON},
)  # fmt: skip


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(request=REQUEST, tail=st.binary(max_size=48), header=st.none() | st.integers(-1, 400))
def test_no_request_yields_a_5xx(client, tag, request, tail, header):
    """Generated requests, JSON and binary, valid or not: a 200 or a 4xx with a message."""
    head = json.dumps(request).encode()
    headers = {} if header is None else {HEADER: str(header)}
    response = client.post(_path(tag), content=head + tail if header is not None else head,
                           headers=headers)  # fmt: skip
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]
