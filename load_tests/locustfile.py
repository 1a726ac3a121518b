"""Locust users for uqserve: a mix of /predict (one and several images) and /predict_array.

Every response is checked; anything but a correct answer counts as a failure.
Images are real: scikit-learn's bundled digits written as PNG files under
`payloads/` next to this file (made on first use, see `payloads.py`).

    locust -f load_tests/locustfile.py --host http://127.0.0.1:3000
"""

from __future__ import annotations

import json
import random

from locust import FastHttpUser, between, events, task

from load_tests.payloads import SAMPLES, make_payloads, pixel_arrays

PATHS = make_payloads()
FILES = [p.read_bytes() for p in PATHS]
ARRAYS = [a.tolist() for a in pixel_arrays(PATHS)]


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


class ServiceUser(FastHttpUser):
    """One client: mostly single images, some batches, some JSON arrays.

    FastHttpUser (geventhttpclient): Locust shares the machine with the
    service, and it used a fifth less CPU per request than HttpUser here.
    """

    wait_time = between(0.0, 0.2)

    def on_start(self) -> None:
        self.classes = len(self.client.get("/metadata").json()["class_names"])

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


@events.quitting.add_listener
def _fail_on_errors(environment, **_kwargs) -> None:
    """Exit non-zero if any request failed."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
