"""Clients nobody here wrote, against the built bento served in a subprocess.

`tritonclient.http` and the KServe SDK's REST client speak the Open Inference
Protocol to `/v2`; BentoML's own `SyncHTTPClient` and `AsyncHTTPClient` send
NumPy arrays to `/predict_array`. Every answer must equal `/predict_array`'s
for the same pixels and seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.serving import ROOT

pytestmark = pytest.mark.e2e
SEED, SAMPLES = 5, 6
PIXELS = np.random.default_rng(12).integers(0, 256, (3, 8, 8)).astype(np.uint8)  # 3 digits
KSERVE = Path(os.environ.get("UQSERVE_KSERVE_PYTHON", ROOT / ".venv-kserve" / "bin" / "python"))
CHECKED = ("probabilities", "variance", "epistemic", "uncertain", "label", "class_index")


def _native(server: str, pixels: np.ndarray, seed: int = SEED) -> dict[str, list]:
    """`/predict_array`'s answer for the pixels, as the outputs' columns."""
    body = {"images": pixels.tolist(), "seed": seed, "samples": SAMPLES}
    response = httpx.post(f"{server}/predict_array", json=body, timeout=120)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    return {name: [p[name] for p in predictions] for name in CHECKED}


def _assert_equal(outputs: dict[str, list], native: dict[str, list]) -> None:
    for name in CHECKED:
        if name in ("probabilities", "variance", "epistemic"):
            expected = np.float32(native[name])
            np.testing.assert_array_equal(np.float32(outputs[name]), expected, err_msg=name)
        else:
            assert list(outputs[name]) == native[name], name


def _triton_infer(client, model: str, pixels: np.ndarray, binary: bool, seed: int = SEED):
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in CHECKED]
    result = client.infer(model, [tensor], outputs=outputs,
                          parameters={"seed": seed, "samples": SAMPLES})  # fmt: skip
    columns = {name: result.as_numpy(name).tolist() for name in CHECKED}
    columns["label"] = [_text(label) for label in result.as_numpy("label")]
    return columns


def _text(label: bytes | str) -> str:
    """A BYTES element: bytes from binary data, str from JSON (tritonclient's as_numpy)."""
    return label.decode() if isinstance(label, bytes) else label


def test_tritonclient(server, tag, bento):
    name, version = tag.split(":")
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=120)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    assert not client.is_model_ready("nope")
    server_metadata = client.get_server_metadata()
    assert "binary_tensor_data" in server_metadata["extensions"]
    assert server_metadata["version"] == bento.split(":")[1]  # the bento's version
    metadata = client.get_model_metadata(name, version)
    assert metadata["versions"] == [version]
    assert {"probabilities", "ood_score", "prediction_set"} <= {
        o["name"] for o in metadata["outputs"]
    }
    native = _native(server, PIXELS)
    for binary in (False, True):
        _assert_equal(_triton_infer(client, name, PIXELS, binary), native)
    options = {"seed": SEED, "samples": SAMPLES}
    default = client.infer(name, [_uint8_input(PIXELS)], parameters=options)  # all, binary
    np.testing.assert_array_equal(
        default.as_numpy("probabilities"), np.float32(native["probabilities"])
    )
    assert default.as_numpy("ood_score").shape == (3,)
    with pytest.raises(triton.InferenceServerException, match="is not served"):
        client.infer("nope", [_uint8_input(PIXELS)])
    client.close()


def _uint8_input(pixels: np.ndarray):
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def test_protocol_and_native_requests_batch_together_without_mixing_answers(server, tag):
    """Concurrent v2 and native requests, each with its own pixels: each gets its lone answer."""
    name = tag.split(":")[0]
    images = [np.full((1, 8, 8), 30 * i, np.uint8) for i in range(8)]
    alone = [_native(server, image, seed=i) for i, image in enumerate(images)]

    def call(i: int) -> dict[str, list]:
        if i % 2:
            return _native(server, images[i], seed=i)
        client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=120)
        try:
            return _triton_infer(client, name, images[i], binary=True, seed=i)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(call, range(8)))
    for answer, expected in zip(together, alone, strict=True):
        _assert_equal(answer, expected)


@pytest.mark.skipif(
    not KSERVE.exists(), reason=f"no KServe SDK at {KSERVE}: run `make kserve-client`"
)
def test_kserve_sdk_rest_client(server, tag, tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, PIXELS)
    run = subprocess.run(
        [str(KSERVE), str(ROOT / "tests" / "kserve_client.py"), server, tag.split(":")[0],
         str(pixels), str(SEED), str(SAMPLES)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    native = _native(server, PIXELS)
    _assert_equal(seen["json"], native)
    _assert_equal(seen["binary"], native)


def _columns(predictions: list) -> dict[str, list]:
    rows = [p if isinstance(p, dict) else p.model_dump() for p in predictions]
    return {name: [row[name] for row in rows] for name in CHECKED}


def test_bentoml_sync_client_sends_numpy(server):
    native = _native(server, PIXELS)
    with bentoml.SyncHTTPClient(server, timeout=120) as client:
        for pixels in (PIXELS, PIXELS[..., None], PIXELS.astype(np.float32)):
            answer = client.predict_array(images=pixels, seed=SEED, samples=SAMPLES)
            _assert_equal(_columns(answer["predictions"]), native)


def test_bentoml_async_client_sends_numpy(server):
    native = _native(server, PIXELS)

    async def call() -> dict:
        async with bentoml.AsyncHTTPClient(server, timeout=120) as client:
            return await client.predict_array(images=PIXELS[..., None], seed=SEED, samples=SAMPLES)

    answer = asyncio.run(call())
    _assert_equal(_columns(answer["predictions"]), native)
