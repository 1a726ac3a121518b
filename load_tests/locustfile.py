"""Locust users for uqserve: /predict (one and several images), /predict_array, and the
Open Inference Protocol's /v2/models/<name>/infer as `tritonclient` sends it (binary data).

Every response is checked; anything but a correct answer counts as a failure.
With `UQSERVE_API_KEY` set (and `UQSERVE_ADMIN_KEY` for `DigestFlood`), every
request carries it as `Authorization: Bearer <key>`.
Images are real: scikit-learn's bundled digits written as PNG files under
`payloads/` next to this file (made on first use, see `payloads.py`).

    locust -f load_tests/locustfile.py --host http://127.0.0.1:3000
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from locust import FastHttpUser, between, constant, events, task
from tritonclient.http import InferenceServerClient, InferInput

from load_tests.payloads import SAMPLES, make_payloads, pixel_arrays

PATHS = make_payloads()
FILES = [p.read_bytes() for p in PATHS]
PIXELS = pixel_arrays(PATHS)  # (H, W) uint8 each
API_KEY, ADMIN_KEY = os.environ.get("UQSERVE_API_KEY"), os.environ.get("UQSERVE_ADMIN_KEY")
FLOOD_USERS = int(os.environ.get("UQSERVE_DIGEST_FLOOD_USERS", "0"))
FLOOD_PATH = os.environ.get("UQSERVE_FLOOD_PATH", "/weights_digest")  # /livez: a control


def bearer(key: str | None) -> dict[str, str] | None:
    """The Authorization header for `key` (None: the service has no keys)."""
    return None if key is None else {"Authorization": f"Bearer {key}"}


ARRAYS = [[a.tolist()] for a in PIXELS]  # a batch of one, (1, H, W)
V2 = "/v2/models/[model]/infer"
HEADER = "Inference-Header-Content-Length"


def infer_body(pixels: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 request for one image, as tritonclient encodes it by default: binary input,
    every output binary; -> (body, headers)."""
    tensor = InferInput("images", [1, *pixels.shape], "UINT8")
    tensor.set_data_from_numpy(pixels[None].astype(np.uint8))
    body, json_size = InferenceServerClient.generate_request_body(
        [tensor], parameters={"samples": SAMPLES}
    )
    return body, {HEADER: str(json_size)}


BODIES = [infer_body(a) for a in PIXELS]


def check(response, images: int, classes: int) -> None:
    """Mark the response failed unless it is a complete, valid answer for `images` images."""
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {response.text[:200]}")
        return
    try:
        predictions = response.json()["predictions"]
    except (ValueError, KeyError):
        response.failure(f"not a prediction response: {response.text[:200]}")
        return
    if len(predictions) != images:
        response.failure(f"{len(predictions)} predictions for {images} images")
        return
    for p in predictions:
        probabilities, variance = p["probabilities"], p["variance"]
        if len(probabilities) != classes or len(variance) != classes:
            response.failure(f"expected {classes} classes, got {len(probabilities)}")
        elif abs(sum(probabilities) - 1.0) > 1e-4:
            response.failure(f"probabilities sum to {sum(probabilities)}")
        elif min(variance) < 0.0:
            response.failure("negative variance")
        else:
            continue
        return
    response.success()


def check_v2(response, classes: int) -> None:
    """Mark a v2 response failed unless its tensors are a complete, valid answer for one image."""
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {response.text[:200]}")
        return
    try:
        length = response.headers.get(HEADER)
        result = InferenceServerClient.parse_response_body(
            response.content, header_length=None if length is None else int(length)
        )
        probabilities, variance = result.as_numpy("probabilities"), result.as_numpy("variance")
        index, label = result.as_numpy("class_index"), result.as_numpy("label")
    except Exception as error:  # anything unreadable is a failed answer
        response.failure(f"not an inference response: {error!r}")
        return
    if (
        probabilities is None
        or probabilities.shape != (1, classes)
        or variance.shape != (1, classes)
    ):
        response.failure(
            f"expected probabilities (1, {classes}), got {getattr(probabilities, 'shape', None)}"
        )
    elif abs(float(probabilities.sum()) - 1.0) > 1e-4 or variance.min() < 0.0:
        response.failure("probabilities that do not sum to 1, or a negative variance")
    elif int(index[0]) != int(probabilities.argmax()) or len(label) != 1:
        response.failure("class_index is not the most probable class")
    else:
        response.success()


class ServiceUser(FastHttpUser):
    """One client: mostly single images, some batches, some JSON arrays, some v2 requests.

    FastHttpUser (geventhttpclient): Locust shares the machine with the
    service, and it used a fifth less CPU per request than HttpUser here.
    """

    wait_time = between(0.0, 0.2)
    default_headers = bearer(API_KEY)

    def on_start(self) -> None:
        metadata = self.client.get("/metadata").json()
        self.classes = len(metadata["class_names"])
        self.infer_path = f"/v2/models/{metadata['model'].split(':')[0]}/infer"

    def _post_files(self, count: int, name: str) -> None:
        chosen = random.sample(range(len(FILES)), count)
        files = [("files", (f"digit{i}.png", FILES[i], "image/png")) for i in chosen]
        data = {"samples": str(SAMPLES)}
        with self.client.post("/predict", files=files, data=data, name=name,
                              catch_response=True) as response:  # fmt: skip
            check(response, count, self.classes)

    @task(6)
    def one_image(self) -> None:
        self._post_files(1, "/predict [1 image]")

    @task(2)
    def several_images(self) -> None:
        self._post_files(4, "/predict [4 images]")

    @task(2)
    def array(self) -> None:
        body = json.dumps({"images": random.choice(ARRAYS), "samples": SAMPLES})
        headers = {"content-type": "application/json"}
        with self.client.post("/predict_array", data=body, headers=headers,
                              catch_response=True) as response:  # fmt: skip
            check(response, 1, self.classes)

    @task(2)
    def open_inference(self) -> None:
        body, headers = random.choice(BODIES)
        with self.client.post(self.infer_path, data=body, headers=headers, name=V2,
                              catch_response=True) as response:  # fmt: skip
            check_v2(response, self.classes)


class DigestFlood(FastHttpUser):
    """An admin polling `POST /weights_digest` ten times a second, per user: each call used to
    hash every weight; now it is served from memory between hashes (UQSERVE_DIGEST_INTERVAL_S).
    Runs only with UQSERVE_DIGEST_FLOOD_USERS > 0 (its `fixed_count`). UQSERVE_FLOOD_PATH
    names another route to poll (GET), as a control: what any request costs."""

    fixed_count = FLOOD_USERS
    weight = 1 if FLOOD_USERS else 0
    wait_time = constant(0.1)
    default_headers = bearer(ADMIN_KEY or API_KEY)

    @task
    def digest(self) -> None:
        digest = FLOOD_PATH == "/weights_digest"
        request = self.client.post(FLOOD_PATH, json={}, catch_response=True) if digest else (
            self.client.get(FLOOD_PATH, catch_response=True))  # fmt: skip
        with request as response:
            if response.status_code != 200 or (
                digest and response.json().get("unchanged") is not True
            ):
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            else:
                response.success()


@events.quitting.add_listener
def _fail_on_errors(environment, **_kwargs) -> None:
    """Exit non-zero if any request failed."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
