"""Every bad input gets a 4xx with a message naming the problem, never a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.service_helpers import encode, png

GOOD = png(1)
JPEG = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
TINY_BOMB = encode(Image.new("1", (2000, 2000)), "PNG")  # a few KB, 4 million pixels
PIL_BOMB = encode(Image.new("1", (14000, 14000)), "PNG")  # past Pillow's own bomb limit


def _post_files(client, blobs, data=None):
    files = [("files", (f"f{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    return client.post("/predict", files=files, data=data or {})


FILE_CASES = [
    ("not an image", [b"hello, I am text"], {}, "not a supported image"),
    ("truncated PNG", [GOOD[: len(GOOD) // 2]], {}, "cannot decode"),
    ("truncated JPEG", [JPEG[: len(JPEG) // 2]], {}, "cannot decode"),
    ("empty upload", [b""], {}, "empty upload"),
    ("too many pixels", [TINY_BOMB], {}, "exceeds the limit of 100000 pixels"),
    ("decompression bomb", [PIL_BOMB], {}, "decompression bomb"),
    ("too many images", [GOOD] * 5, {}, "5 images exceeds the limit of 4"),
    ("file too big", [np.random.bytes(400_000)], {}, "bytes exceeds the limit"),
    ("samples zero", [GOOD], {"samples": "0"}, "samples"),
    ("samples too many", [GOOD], {"samples": "51"}, "exceeds the limit of 50"),
    ("samples negative", [GOOD], {"samples": "-3"}, "samples"),
    ("samples a string", [GOOD], {"samples": "many"}, "samples"),
    ("samples a float", [GOOD], {"samples": "2.5"}, "samples"),
    ("samples a boolean", [GOOD], {"samples": "true"}, "samples"),
    ("seed negative", [GOOD], {"seed": "-1"}, "seed"),
    ("seed too large", [GOOD], {"seed": str(2**60)}, "seed"),
    ("seed a string", [GOOD], {"seed": "abc"}, "seed"),
]


def _message(response) -> str:
    return json.dumps(response.json())


@pytest.mark.parametrize(
    ("case", "blobs", "data", "named"), FILE_CASES, ids=[c[0] for c in FILE_CASES]
)
def test_bad_file_request(client, case, blobs, data, named):
    response = _post_files(client, blobs, data)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert named in _message(response), response.text


def test_no_files_at_all(client):
    response = client.post("/predict", data={"samples": "3"})
    assert response.status_code == 400
    assert "files" in _message(response)


ARRAY_CASES = [
    ("rank 1", {"images": [1, 2, 3]}, "images"),
    ("rank 5", {"images": np.zeros((1, 1, 2, 2, 3)).tolist()}, "images"),
    ("ragged", {"images": [[1, 2], [3]]}, "images"),
    ("strings", {"images": [["a", "b"], ["c", "d"]]}, "images"),
    ("booleans", {"images": [[True, False], [True, True]]}, "images"),
    ("out of range", {"images": [[300.0, 1.0], [1.0, 1.0]]}, "[0, 255]"),
    ("negative", {"images": [[-1.0, 1.0], [1.0, 1.0]]}, "[0, 255]"),
    ("two channels", {"images": np.zeros((1, 4, 4, 2)).tolist()}, "channels"),
    ("too many images", {"images": np.zeros((5, 4, 4, 3)).tolist()}, "limit of 4"),
    ("too many pixels", {"images": np.zeros((400, 300)).tolist()}, "pixels"),
    ("empty", {"images": []}, "images"),
    ("samples a string", {"images": [[1, 2], [3, 4]], "samples": "ten"}, "samples"),
    ("samples too many", {"images": [[1, 2], [3, 4]], "samples": 1000}, "limit of 50"),
    ("seed a float", {"images": [[1, 2], [3, 4]], "seed": 1.5}, "seed"),
    ("unknown field", {"images": [[1, 2], [3, 4]], "temperature": 2}, "temperature"),
    ("missing images", {"samples": 3}, "images"),
]


@pytest.mark.parametrize(("case", "body", "named"), ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_bad_array_request(client, case, body, named):
    response = client.post("/predict_array", json=body)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert named in _message(response), response.text


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values(client, token):
    body = '{"images": [[1.0, 2.0], [3.0, ' + token + "]]}"
    response = client.post(
        "/predict_array", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert "images" in _message(response)


def test_not_json_at_all(client):
    response = client.post(
        "/predict_array", content=b"\x00\x01garbage", headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500


def test_service_still_answers_correctly_afterwards(client):
    for case in FILE_CASES[:6]:
        _post_files(client, case[1], case[2])
    response = _post_files(client, [GOOD], {"samples": "4", "seed": "2"})
    assert response.status_code == 200
    probabilities = response.json()["predictions"][0]["probabilities"]
    assert abs(sum(probabilities) - 1.0) < 1e-6
