"""End to end: build the bento, serve it as a container would (`bentoml serve <tag>`), call it.

Also the concurrency check through BentoML's real adaptive batching: many
threads send different images at once, each gets the answer its image gets
alone, and the batches formed hold more than one request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from deploy.processes import BENTOML, free_port
from tests.service_helpers import png
from tests.serving import ROOT, batch_counts, predict_file

pytestmark = pytest.mark.e2e


def test_built_bento_answers_predict(server, tag):
    body = predict_file(server, png(1))
    assert body["model"] == tag
    prediction = body["predictions"][0]
    assert abs(sum(prediction["probabilities"]) - 1.0) < 1e-6
    assert min(prediction["variance"]) >= 0.0
    assert httpx.get(f"{server}/metadata").json()["model"] == tag


def test_concurrent_requests_are_batched_and_never_mixed(server):
    blobs = [png(200 + i) for i in range(16)]
    alone = [predict_file(server, blob)["predictions"] for blob in blobs]
    images_before, batches_before = batch_counts(server)
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda i: predict_file(server, blobs[i % 16]), range(48)))
    for index, body in enumerate(together):
        assert body["predictions"] == alone[index % 16]  # BN stats unchanged, no mixing
    images_after, batches_after = batch_counts(server)
    assert images_after - images_before == 48  # every image ran exactly once
    assert batches_after - batches_before < 48  # some batches held several requests


def test_the_service_log_carries_no_tensorflow_start_up_noise(served_bento):
    base, log = served_bento
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200  # workers have loaded TF
    text = log.read_text()
    assert "uqserve" in text or "Starting production" in text, text[-2000:]  # a real log
    for noise in ("cuInit", "absl::InitializeLog", "cuda drivers", "oneDNN custom operations"):
        assert noise not in text, noise
    assert text.count("API keys are off: every route is open") == 1  # said once, at start-up


def test_missing_model_stops_start_up_naming_the_tag_and_the_fix():
    env = {**os.environ, "UQSERVE_MODEL": "no_such_model:latest"}
    done = subprocess.run(
        [sys.executable, "-c", "import service.service"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no_such_model:latest" in done.stderr
    assert "make train" in done.stderr


def test_corrupt_model_file_stops_start_up_naming_the_file(tag):
    import bentoml

    from models.card import MODEL_FILE
    from tests.service_helpers import export_tiny

    broken = export_tiny("uqserve_broken")
    path = bentoml.models.get(broken).path_of(MODEL_FILE)
    with open(path, "r+b") as handle:
        handle.truncate(1000)  # a download cut short
    env = {**os.environ, "UQSERVE_MODEL": broken}
    done = subprocess.run(
        [BENTOML, "serve", "service.service:ApiService", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert broken in done.stderr and "model.keras is not a Keras archive" in done.stderr
