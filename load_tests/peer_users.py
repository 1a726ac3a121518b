"""Locust users for the peer comparison: one PNG digit per request, as many clients as asked.

`UqserveUser` asks uqserve's `/predict` for `PEER_SAMPLES` MC samples;
`PeerUser` asks the plain service (`peer_service.py`) for its deterministic
answer. Both check every answer; `peer_bench.py` names the class to run.

    locust -f load_tests/peer_users.py PeerUser --host http://127.0.0.1:3000
"""

from __future__ import annotations

import random

from locust import FastHttpUser, task
from locust.contrib.fasthttp import ResponseContextManager

# Importing locustfile also registers its listener: Locust exits non-zero if a request failed.
from load_tests.locustfile import FILES, check

PEER_SAMPLES = 100  # uqserve's MC samples per request in the comparison


def _one_file(field: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    index = random.randrange(len(FILES))
    return [(field, (f"digit{index}.png", FILES[index], "image/png"))]


class UqserveUser(FastHttpUser):
    """One client of uqserve: one image per `/predict`, T = PEER_SAMPLES, no think time."""

    def on_start(self) -> None:
        self.classes = len(self.client.get("/metadata").json()["class_names"])

    @task
    def one_image(self) -> None:
        data = {"samples": str(PEER_SAMPLES)}
        with self.client.post("/predict", files=_one_file("files"), data=data,
                              name="one image", catch_response=True) as response:  # fmt: skip
            check(response, 1, self.classes)


class PeerUser(FastHttpUser):
    """One client of the plain service: one image per `/classify`, no think time."""

    @task
    def one_image(self) -> None:
        with self.client.post("/classify", files=_one_file("images"),
                              name="one image", catch_response=True) as response:  # fmt: skip
            check_rows(response)


def check_rows(response: ResponseContextManager) -> None:
    """Fail the response unless it is one row of probabilities summing to 1."""
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {response.text[:200]}")
        return
    try:
        rows = response.json()
        total = sum(rows[0])
    except (ValueError, TypeError, IndexError, KeyError):
        response.failure(f"not a list of probability rows: {response.text[:200]}")
        return
    if len(rows) != 1 or abs(total - 1.0) > 1e-4:
        response.failure(f"expected one row summing to 1, got {response.text[:200]}")
        return
    response.success()
