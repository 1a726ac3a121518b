"""API keys on their own: reading them, the middleware's answers, and the digest cache."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from service.auth import ADMIN, OPEN, ApiKeys, Authenticate, KeySettingError
from service.digest import DigestCache
from service.limits import Drain

KEY, OTHER, ADMIN_KEY = "k" * 20, "o" * 20, "a" * 20
ROUTES = ["/predict", "/predict_array", "/metadata", "/v2/models/m/infer", "/v2",
          "/docs.json", "/schema.json", "/", "/metrics", *sorted(OPEN), *sorted(ADMIN)]  # fmt: skip


def _call(keys: ApiKeys, path: str, token: str | None, body: bytes = b"") -> tuple[int, dict, bool]:
    """One request through the middleware to an app that reads the body and answers 200;
    -> (status, response headers, whether the app ran)."""
    ran, sent = [], []

    async def app(scope, receive, send):
        ran.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", str(len(body)).encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(Authenticate(app, keys, Drain(1000))(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), bool(ran)


ON = ApiKeys((KEY.encode(),), (ADMIN_KEY.encode(),))


def _call_with(keys: ApiKeys, path: str, authorization: bytes) -> int:
    """The status for one GET with this exact Authorization header."""
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path,
             "headers": [(b"authorization", authorization)]}  # fmt: skip
    asyncio.run(Authenticate(app, keys, Drain(1000))(scope, None, send))
    return sent[0]["status"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_without_with_a_wrong_and_with_a_right_key(path):
    open_route, admin_route = path in OPEN, path in ADMIN
    for token in (None, OTHER, "Bearer", ""):
        status, headers, ran = _call(ON, path, token, b"x" * 10)
        assert (status, ran) == ((200, True) if open_route else (401, False)), (token, status)
        if not open_route:
            assert headers[b"www-authenticate"] == b'Bearer realm="uqserve"'
    assert _call(ON, path, KEY)[0] == (403 if admin_route else 200)
    assert _call(ON, path, ADMIN_KEY)[0] == 200  # an admin key opens every route


def test_without_keys_every_route_is_open():
    off = ApiKeys()
    assert not off.enabled and "off" in off.describe()
    for path in ROUTES:
        assert _call(off, path, None) == (200, {}, True)


def test_metrics_can_be_left_open():
    keys = ApiKeys((KEY.encode(),), (), metrics_open=True)
    assert _call(keys, "/metrics", None)[0] == 200
    assert _call(keys, "/metadata", None)[0] == 401


def _refused(scope: dict) -> list[dict]:
    """Every message the middleware (keys `ON`) sends for `scope`, to an app that must not run."""
    sent = []

    async def app(scope, receive, send):
        raise AssertionError("the app ran")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(Authenticate(app, ON, Drain(1000))(scope, receive, send))
    return sent


def test_another_scheme_is_a_401_naming_bearer_and_never_showing_the_key():
    scope = {"type": "http", "method": "GET", "path": "/metadata",
             "headers": [(b"authorization", b"Basic " + KEY.encode())]}  # fmt: skip
    sent = _refused(scope)
    body = b"".join(m.get("body", b"") for m in sent)
    assert sent[0]["status"] == 401 and KEY.encode() not in body
    assert "Bearer" in json.loads(body)["error"]


def test_keys_from_variables_and_a_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{OTHER}\n\n{KEY}\n")
    environ = {"UQSERVE_API_KEYS": f" {ADMIN_KEY} ", "UQSERVE_API_KEYS_FILE": str(path),
               "UQSERVE_METRICS_OPEN": "true"}  # fmt: skip
    keys = ApiKeys.from_env(environ)
    assert keys.keys == (ADMIN_KEY.encode(), OTHER.encode(), KEY.encode())
    assert keys.metrics_open and keys.enabled
    assert KEY not in repr(keys) and KEY not in keys.describe()
    assert "3 key(s), 0 admin key(s)" in keys.describe()


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"UQSERVE_API_KEYS": "short"}, "UQSERVE_API_KEYS (key 1 of 1"),
        ({"UQSERVE_ADMIN_KEYS": f"{KEY},with space in it!!"}, "UQSERVE_ADMIN_KEYS (key 2 of 2)"),
        ({"UQSERVE_API_KEYS": "REPLACE-WITH-A-REAL-KEY-0000"}, "placeholder"),
        ({"UQSERVE_API_KEYS_FILE": "/no/such/file"}, "UQSERVE_API_KEYS_FILE: cannot read"),
        ({"UQSERVE_METRICS_OPEN": "yes"}, "UQSERVE_METRICS_OPEN"),
    ],
)
def test_a_bad_key_setting_names_the_variable_never_the_key(environ, names):
    with pytest.raises(KeySettingError) as raised:
        ApiKeys.from_env(environ)
    assert names in str(raised.value)
    for key in (k for value in environ.values() for k in value.split(",")):
        if key.startswith(("short", "REPLACE", "with")):
            assert key not in str(raised.value)


@pytest.mark.parametrize("text", ["", "\n", "# every key revoked\n\n"])
def test_a_key_file_without_a_key_stops_start_up_rather_than_opening(tmp_path, text):
    (tmp_path / "keys").write_text(text)
    with pytest.raises(KeySettingError, match="holds no key"):
        ApiKeys.from_env({"UQSERVE_API_KEYS_FILE": str(tmp_path / "keys")})


def test_a_bad_key_in_the_file_is_named_by_the_file(tmp_path):
    (tmp_path / "keys").write_text(f"{KEY}\nshort\n")
    with pytest.raises(KeySettingError, match=r"UQSERVE_API_KEYS_FILE \(key 2 of 2 in "):
        ApiKeys.from_env(
            {"UQSERVE_API_KEYS": OTHER, "UQSERVE_API_KEYS_FILE": str(tmp_path / "keys")}
        )


def test_a_root_path_does_not_hide_the_admin_route():
    """Behind a proxy or mount that sets root_path, the admin route is still the admin route."""
    scope = {"type": "http", "method": "POST", "path": "/api/weights_digest", "root_path": "/api",
             "headers": [(b"authorization", b"Bearer " + KEY.encode())]}  # fmt: skip
    assert _refused(scope)[0]["status"] == 403


def test_a_websocket_is_refused_with_keys_on():
    sent = _refused({"type": "websocket", "path": "/x", "headers": []})
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_lowercase_bearer_and_spaces_are_read():
    assert _call(ON, "/metadata", None)[0] == 401
    status = _call_with(ON, "/metadata", b"bearer   " + KEY.encode())
    assert status == 200


def test_docs_json_declares_the_bearer_scheme():
    sent = []

    async def app(scope, receive, send):
        paths = {"/livez": {"get": {}}, "/predict": {"post": {}}}
        body = json.dumps({"openapi": "3.0.2", "paths": paths}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/docs.json",
             "headers": [(b"authorization", b"Bearer " + KEY.encode())]}  # fmt: skip
    asyncio.run(Authenticate(app, ON, Drain(1000))(scope, None, send))
    spec = json.loads(sent[1]["body"])
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/livez"]["get"]["security"] == []  # the probes stay open
    assert "security" not in spec["paths"]["/predict"]["post"]  # the global one holds
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_the_digest_is_computed_at_most_once_per_interval():
    """A fake clock: within the interval every caller gets the last digest; past it, 200
    concurrent callers share one new hash; at interval 0 every call hashes, one at a time."""
    calls, lock, now = [], threading.Lock(), [0.0]

    def compute() -> str:
        with lock:
            calls.append(1)
            return f"digest-{len(calls)}"

    async def flood(cache: DigestCache, n: int) -> list[str]:
        return [d.sha256 for d in await asyncio.gather(*(cache.get() for _ in range(n)))]

    cache = DigestCache(compute, interval_s=60, clock=lambda: now[0])  # one hash at load
    assert set(asyncio.run(flood(cache, 200))) == {"digest-1"} and len(calls) == 1
    now[0] = 59.9
    assert set(asyncio.run(flood(cache, 200))) == {"digest-1"} and len(calls) == 1
    now[0] = 60.0
    assert set(asyncio.run(flood(cache, 200))) == {"digest-2"} and len(calls) == 2
    assert cache.age(cache.loaded) == 60.0 and cache.loaded.computed_at
    fresh = DigestCache(compute, interval_s=0)  # every call hashes, one at a time
    assert asyncio.run(flood(fresh, 5)) == [f"digest-{i}" for i in range(4, 9)]
