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
import pytest

from tests.conftest import SERVICE_LIMITS
from tests.service_helpers import png
from tests.serving import served

pytestmark = pytest.mark.e2e
BLOB = png(1)
FILES = [("files", (f"{i}.png", BLOB, "image/png")) for i in range(4)]
HEAVY = {"samples": "50", "seed": "1"}  # the test model's limit (conftest SERVICE_LIMITS)
RACE = 0.2  # seconds; see test_sigterm_lets_in_flight_requests_finish


def _flood(base: str, users: int, until: threading.Event | float, results: list) -> None:
    """`users` threads posting HEAVY requests until the deadline or event; (start, end, outcome)."""

    def user() -> None:
        with httpx.Client(timeout=120) as client:
            while not (until.is_set() if isinstance(until, threading.Event) else
                       time.monotonic() > until):  # fmt: skip
                start = time.monotonic()
                try:
                    response = client.post(f"{base}/predict", files=FILES, data=HEAVY)
                    results.append((start, time.monotonic(), response.status_code, response))
                except httpx.HTTPError as error:
                    results.append((start, time.monotonic(), type(error).__name__, None))
                    if isinstance(error, httpx.ConnectError):
                        return

    threads = [threading.Thread(target=user) for _ in range(users)]
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
    with served(bento, tag, tmp_path, **env) as (base, _):
        expected = _reference(base)
        results: list = []
        _flood(base, users=48, until=time.monotonic() + 8, results=results)
        outcomes = Counter(r[2] for r in results)
        assert set(outcomes) <= {200, 503}, outcomes  # no other error, no dropped connection
        assert outcomes[503] > 0, f"nothing was shed: {outcomes}"
        for _, _, status, response in results:
            if status == 503:
                assert "overloaded" in response.json()["error"]
                assert response.headers["retry-after"] == "1"
            else:
                assert response.json()["predictions"] == expected  # never a mixed-up answer
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
