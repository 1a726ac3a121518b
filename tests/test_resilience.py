"""Overload and shutdown of the served bento: shed fast, recover, drain in-flight requests.

Each test serves the session's bento in its own `bentoml serve` subprocess.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput

from tests.conftest import SERVICE_LIMITS
from tests.service_helpers import png
from tests.serving import served

pytestmark = pytest.mark.e2e
BLOB = png(1)
FILES = [("files", (f"{i}.png", BLOB, "image/png")) for i in range(4)]
HEAVY = {"samples": "50", "seed": "1"}  # the test model's limit (conftest SERVICE_LIMITS)
RACE = 0.2  # seconds; see test_sigterm_lets_in_flight_requests_finish


def _v2_request() -> tuple[bytes, dict[str, str]]:
    """The same four files and options as an Open Inference Protocol request (binary data)."""
    files = InferInput("files", [4], "BYTES")
    files.set_data_from_numpy(np.array([BLOB] * 4, dtype=np.object_))
    body, size = InferenceServerClient.generate_request_body(
        [files], parameters={"samples": 50, "seed": 1}
    )
    return body, {"Inference-Header-Content-Length": str(size)}


V2_BODY, V2_HEADERS = _v2_request()


def _post(client: httpx.Client, base: str, path: str) -> httpx.Response:
    """HEAVY on /predict, or the same request on the v2 `path` when one is given."""
    if path == "/predict":
        return client.post(f"{base}/predict", files=FILES, data=HEAVY)
    return client.post(f"{base}{path}", content=V2_BODY, headers=V2_HEADERS)


def _v2_probabilities(response: httpx.Response) -> list[list[float]]:
    """A v2 answer's probabilities (binary outputs, tritonclient's parser)."""
    length = int(response.headers["Inference-Header-Content-Length"])
    result = InferenceServerClient.parse_response_body(response.content, header_length=length)
    return result.as_numpy("probabilities").tolist()


def _flood(base: str, users: int, until: threading.Event | float, results: list,
           v2: str | None = None) -> None:  # fmt: skip
    """`users` threads posting HEAVY requests until the deadline or event; (start, end, outcome).

    With a `v2` infer path, every other user sends the same request there.
    """

    def user(path: str) -> None:
        with httpx.Client(timeout=120) as client:
            while not (until.is_set() if isinstance(until, threading.Event) else
                       time.monotonic() > until):  # fmt: skip
                start = time.monotonic()
                try:
                    response = _post(client, base, path)
                    results.append((start, time.monotonic(), response.status_code, response))
                except httpx.HTTPError as error:
                    results.append((start, time.monotonic(), type(error).__name__, None))
                    if isinstance(error, httpx.ConnectError):
                        return

    paths = [v2 if v2 and i % 2 else "/predict" for i in range(users)]
    threads = [threading.Thread(target=user, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _reference(base: str) -> list[dict]:
    response = httpx.post(f"{base}/predict", files=FILES, data=HEAVY, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_overload_is_shed_with_503_and_the_service_recovers(bento, tag, tmp_path):
    env = {**SERVICE_LIMITS, "UQSERVE_MAX_LATENCY_MS": "200"}
    v2 = f"/v2/models/{tag.split(':')[0]}/infer"
    with served(bento, tag, tmp_path, **env) as (base, _):
        expected = _reference(base)
        probabilities = [np.float32(p["probabilities"]).tolist() for p in expected]
        results: list = []
        _flood(base, users=48, until=time.monotonic() + 8, results=results, v2=v2)
        outcomes = Counter((r[2], r[3] is not None and r[3].url.path == v2) for r in results)
        assert {status for status, _ in outcomes} <= {200, 503}, outcomes  # nothing dropped
        assert outcomes[(503, False)] > 0 and outcomes[(503, True)] > 0, f"not shed: {outcomes}"
        for _, _, status, response in results:
            if status == 503:
                assert "overloaded" in response.json()["error"]
                assert response.headers["retry-after"] == "1"
            elif response.url.path == v2:  # never a mixed-up answer, native or v2
                assert _v2_probabilities(response) == probabilities
            else:
                assert response.json()["predictions"] == expected
        assert _reference(base) == expected  # recovered
        assert httpx.post(f"{base}/weights_digest", json={}).json()["unchanged"] is True


def test_sigterm_lets_in_flight_requests_finish(bento, tag, tmp_path):
    env = {**SERVICE_LIMITS, "UQSERVE_MAX_LATENCY_MS": "60000"}
    with served(bento, tag, tmp_path, **env) as (base, process):
        expected = _reference(base)
        results: list = []
        stop = threading.Event()
        flood = threading.Thread(target=_flood, args=(base, 16, stop, results))
        flood.start()
        time.sleep(3)
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)  # what a container runtime sends PID 1
        process.wait(timeout=120)
        stop.set()
        flood.join()
    # A request whose client started it a moment before SIGTERM may not have
    # reached the server yet; those started RACE s earlier surely had.
    before = [r for r in results if r[0] < sent - RACE]
    assert any(r[1] > sent for r in before), "no request was in flight at SIGTERM"
    assert process.returncode == 0
    failed = [
        (status, round(start - sent, 3), round(end - sent, 3))
        for start, end, status, _ in before
        if status != 200
    ]
    assert not failed, f"requests sent before SIGTERM that failed (status, start, end): {failed}"
    assert all(r[3].json()["predictions"] == expected for r in before)
