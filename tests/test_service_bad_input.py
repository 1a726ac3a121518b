"""Every bad input gets a 4xx with a message naming the problem, never a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.service_helpers import encode, png, zero_width_png

GOOD = png(1)
JPEG = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
TINY_BOMB = encode(Image.new("1", (2000, 2000)), "PNG")  # a few KB, 4 million pixels
PIL_BOMB = encode(Image.new("1", (14000, 14000)), "PNG")  # past Pillow's own bomb limit
GIF = encode(Image.new("P", (30, 20)), "GIF")


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
    ("seed a float", [GOOD], {"seed": "1.5"}, "seed"),
    ("samples astronomically large", [GOOD], {"samples": str(10**30)}, "samples"),
    ("samples huge", [GOOD], {"samples": str(10**12)}, "exceeds the limit of 50"),
    ("zero-sized image", [zero_width_png()], {}, "files[0]"),
    ("truncated GIF", [GIF[: len(GIF) // 2]], {}, "cannot decode"),
    ("PNG signature only", [GOOD[:8]], {}, "files[0]"),
    ("second file bad", [GOOD, b"junk"], {}, "files[1]: not a supported image"),
    ("thousands of images", [GOOD[:40]] * 2000, {}, "files"),
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


def test_oversized_body_is_refused_before_parsing(client):
    response = _post_files(client, [GOOD, np.random.bytes(1_200_000)])
    assert response.status_code == 413
    assert "request body: " in _message(response) and "limit of 1000000 bytes" in _message(response)


def test_oversized_chunked_body_without_length_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b"[" * 50_000

    response = client.post(
        "/predict_array", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "exceeds the limit of 1000000 bytes" in _message(response)


def test_non_numeric_content_length_is_refused(client):
    response = client.post(
        "/predict_array", content=b"{}", headers={"content-type": "application/json",
                                                  "content-length": "lots"}
    )  # fmt: skip
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("route", "body", "content_type"),
    [
        ("/predict", b'{"images": [[1, 2], [3, 4]]}', "application/json"),
        ("/predict", GOOD, "image/png"),
        ("/predict", b"", "multipart/form-data; boundary=xyz"),
        ("/predict_array", b"images=1", "application/x-www-form-urlencoded"),
        ("/predict_array", b"[[1, 2], [3, 4]]", "text/plain"),
        ("/predict_array", b"", "application/json"),
        ("/predict_array", b"[" * 20_000 + b"]" * 20_000, "application/json"),
        ("/predict_array", b'{"images": {"a": 1}}', "application/json"),
        ("/predict_array", b'{"images": null}', "application/json"),
        ("/predict_array", b'{"images": [[[1, 2], [3, 4]]], "samples": true}', "application/json"),
    ],
    ids=[
        "json to /predict", "raw png to /predict", "empty multipart", "form to /predict_array",
        "text/plain", "empty json body", "deeply nested json", "images an object",
        "images null", "samples true",
    ],
)  # fmt: skip
def test_wrong_content_or_shape_of_body(client, route, body, content_type):
    response = client.post(route, content=body, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"], response.text[:300]  # a message, not just a status


def test_animated_gif_uses_its_first_frame(client):
    frames = [Image.new("RGB", (30, 20), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    first = encode(frames[0], "PNG")
    answers = [
        _post_files(client, [blob], {"samples": "4", "seed": "3"}).json()["predictions"][0]
        for blob in (animated, first)
    ]
    assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-5)


def test_no_files_at_all(client):
    response = client.post("/predict", data={"samples": "3"})  # urlencoded, not a form upload
    assert response.status_code == 415
    assert "expected multipart/form-data" in _message(response)
    empty_form = b'--b\r\nContent-Disposition: form-data; name="samples"\r\n\r\n3\r\n--b--\r\n'
    response = client.post(
        "/predict", content=empty_form, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400
    assert "files" in _message(response)


def test_a_url_sent_urlencoded_is_refused_not_fetched(client):
    response = client.post("/predict", data={"files": "http://127.0.0.1:9/x.png"})
    assert response.status_code == 415
    assert "content-type: expected multipart/form-data" in _message(response)


def test_a_form_without_boundary_or_with_a_huge_text_field_is_refused(client):
    response = client.post(
        "/predict", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400 and "without a boundary" in _message(response)
    big = b'--b\r\nContent-Disposition: form-data; name="samples"\r\n\r\n' + b"9" * 200_000
    response = client.post(
        "/predict", content=big + b"\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )  # fmt: skip
    assert response.status_code == 400 and "text field longer than" in _message(response)


ONE = [[[1, 2], [3, 4]]]  # a batch of one 2x2 grayscale image
ARRAY_CASES = [
    ("rank 1", {"images": [1, 2, 3]}, "images"),
    ("one image without its batch axis", {"images": [[1, 2], [3, 4]]}, "batch of one: [image]"),
    (
        "one colour image without its batch axis",
        {"images": np.zeros((8, 8, 3)).tolist()},
        "ambiguous",
    ),
    ("rank 5", {"images": np.zeros((1, 1, 2, 2, 3)).tolist()}, "images"),
    ("ragged", {"images": [[[1, 2], [3]]]}, "images"),
    ("strings", {"images": [[["a", "b"], ["c", "d"]]]}, "images"),
    ("booleans", {"images": [[[True, False], [True, True]]]}, "images"),
    ("booleans among numbers", {"images": [[[True, 2], [3, 4]]]}, "no strings, booleans"),
    ("nulls", {"images": [[[None, 1], [1, 1]]]}, "images"),
    ("an object", {"images": [[{"a": 1}]]}, "images"),
    ("out of range", {"images": [[[300.0, 1.0], [1.0, 1.0]]]}, "[0, 255]"),
    ("negative", {"images": [[[-1.0, 1.0], [1.0, 1.0]]]}, "[0, 255]"),
    ("two channels", {"images": np.zeros((1, 4, 4, 2)).tolist()}, "channels"),
    ("too many images", {"images": np.zeros((5, 4, 4, 3)).tolist()}, "limit of 4"),
    ("too many pixels", {"images": np.zeros((1, 400, 300)).tolist()}, "pixels"),
    ("empty", {"images": []}, "images"),
    ("no images", {"images": [[]]}, "images"),
    ("samples a string", {"images": ONE, "samples": "ten"}, "samples"),
    ("samples too many", {"images": ONE, "samples": 1000}, "limit of 50"),
    ("seed a float", {"images": ONE, "seed": 1.5}, "seed"),
    ("unknown field", {"images": ONE, "temperature": 2}, "temperature"),
    ("missing images", {"samples": 3}, "images"),
]


@pytest.mark.parametrize(("case", "body", "named"), ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_bad_array_request(client, case, body, named):
    response = client.post("/predict_array", json=body)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert named in _message(response), response.text


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values(client, token):
    body = '{"images": [[[1.0, 2.0], [3.0, ' + token + "]]]}"
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
    before = _post_files(client, [GOOD], {"samples": "4", "seed": "2"}).json()
    for case in FILE_CASES:
        _post_files(client, case[1], case[2])
    for case in ARRAY_CASES:
        client.post("/predict_array", json=case[1])
    response = _post_files(client, [GOOD], {"samples": "4", "seed": "2"})
    assert response.status_code == 200
    assert response.json()["predictions"] == before["predictions"]
    assert client.post("/weights_digest", json={}).json()["unchanged"] is True


def test_validation_errors_name_the_field_and_match_the_published_schema(client):
    response = client.post("/predict_array", json={"images": ONE, "samples": 0})
    body = response.json()
    assert response.status_code == 400
    assert body["error"].startswith("samples: ") and isinstance(body["detail"], str)


def test_a_url_in_the_files_field_is_refused_not_fetched(client):
    body = b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\nhttp://127.0.0.1:9/x\r\n--b--\r\n'
    response = client.post(
        "/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400
    assert "files: expected file uploads, received a text field" in _message(response)
