"""The built bento served with API keys: every route, the clients, the hostile requests.

`keyed_server` (conftest) serves the session's bento with `API_KEY` and the
admin key `ADMIN_KEY`, and the test limits. Fuzzing with keys is in
`tests/test_fuzz.py`.
"""

from __future__ import annotations

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import ADMIN_KEY, API_KEY
from tests.service_helpers import png
from tests.test_service_bad_input import ARRAY_CASES, FILE_CASES

pytestmark = pytest.mark.e2e
WRONG = "not-the-key-" + "x" * 16


def _request(base: str, method: str, path: str, key: str | None, **kwargs) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{base}{path}", headers=headers, timeout=120, **kwargs)


def _routes(tag: str) -> list[tuple[str, str, dict]]:
    name = tag.split(":")[0]
    infer = {"json": {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2],
                                  "data": [0, 1, 2, 3]}]}}  # fmt: skip
    return [
        ("GET", "/metadata", {}), ("GET", "/docs.json", {}), ("GET", "/schema.json", {}),
        ("GET", "/", {}), ("GET", "/metrics", {}), ("GET", "/v2", {}),
        ("GET", f"/v2/models/{name}", {}), ("GET", f"/v2/models/{name}/ready", {}),
        ("POST", "/predict", {"files": {"files": ("a.png", png(3), "image/png")}}),
        ("POST", "/predict_array", {"json": {"images": [[[0, 1], [2, 3]]]}}),
        ("POST", f"/v2/models/{name}/infer", infer),
    ]  # fmt: skip


def test_every_route_with_no_key_a_wrong_key_and_the_right_key(keyed_server, tag):
    base, _ = keyed_server
    for method, path, kwargs in _routes(tag):
        for key in (None, WRONG):
            response = _request(base, method, path, key, **kwargs)
            assert response.status_code == 401, (path, key, response.text)
            assert response.headers["www-authenticate"] == 'Bearer realm="uqserve"'
            assert "authorization" in response.json()["error"]
        for key in (API_KEY, ADMIN_KEY):
            assert _request(base, method, path, key, **kwargs).status_code == 200, (path, key)


def test_probes_stay_open_and_the_admin_route_needs_the_admin_key(keyed_server):
    base, _ = keyed_server
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert _request(base, "GET", path, None).status_code == 200, path
    assert _request(base, "POST", "/weights_digest", None, json={}).status_code == 401
    assert _request(base, "POST", "/weights_digest", API_KEY, json={}).status_code == 403
    digest = _request(base, "POST", "/weights_digest", ADMIN_KEY, json={})
    assert digest.status_code == 200 and digest.json()["unchanged"] is True


def test_the_log_says_keys_are_on_and_never_shows_one(keyed_server):
    _, log = keyed_server
    text = log.read_text()
    assert "API keys are on: 1 key(s), 1 admin key(s)" in text
    assert API_KEY not in text and ADMIN_KEY not in text


def test_clients_pass_the_key(keyed_server, tag):
    base, _ = keyed_server
    pixels = np.zeros((2, 8, 8), np.uint8)
    with bentoml.SyncHTTPClient(base, token=API_KEY, timeout=120) as client:
        answer = client.predict_array(images=pixels, seed=1, samples=3)
    assert len(answer["predictions"]) == 2
    headers = {"Authorization": f"Bearer {API_KEY}"}
    client = triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=120)
    tensor = triton.InferInput("images", [2, 8, 8], "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(tag.split(":")[0], [tensor], headers=headers,
                          parameters={"seed": 1, "samples": 3})  # fmt: skip
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"),
        np.float32([p["probabilities"] for p in answer["predictions"]]),
    )
    with pytest.raises(triton.InferenceServerException, match="API key"):
        client.infer(tag.split(":")[0], [tensor])
    client.close()


def test_hostile_requests_get_a_401_without_a_key_and_their_own_4xx_with_one(keyed_server):
    """The bad-input matrix, with keys on: refused before parsing without a key, and answered
    as with keys off (a 4xx naming the problem, never a 5xx) with one."""
    base, _ = keyed_server
    for case, blobs, data, named in FILE_CASES:
        files = [("files", (f"f{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
        assert _request(base, "POST", "/predict", None, files=files, data=data).status_code == 401
        response = _request(base, "POST", "/predict", API_KEY, files=files, data=data)
        assert 400 <= response.status_code < 500 and response.status_code != 401, case
        assert named in response.text, (case, response.text)
    for case, body, named in ARRAY_CASES:
        assert _request(base, "POST", "/predict_array", None, json=body).status_code == 401
        response = _request(base, "POST", "/predict_array", API_KEY, json=body)
        assert 400 <= response.status_code < 500 and response.status_code != 401, case
        assert named in response.text, (case, response.text)
