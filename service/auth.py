"""Optional API keys: `Authorization: Bearer <key>` on every route but the health probes.

Keys come from `UQSERVE_API_KEYS` (comma-separated) and/or a file named by
`UQSERVE_API_KEYS_FILE` (one per line, `#` comments; a mounted Kubernetes
Secret), admin keys from `UQSERVE_ADMIN_KEYS` / `UQSERVE_ADMIN_KEYS_FILE`.
With none set the service is open, as a model server behind a gateway
usually is, and says so once at start-up.

With keys set, an ASGI middleware in front of the service's own middlewares
(the body limits included) and of every route answers, before any of the
body is read or parsed (BentoML's metrics, tracing, access-log and timeout
middlewares run first):

    /livez, /readyz, /v2/health/live, /v2/health/ready    open (probes)
    /metrics                                              open if UQSERVE_METRICS_OPEN=true
    /weights_digest (admin routes)                        an admin key, else 401 / 403
    everything else                                       any key (an admin key too), else 401

A 401 carries `WWW-Authenticate: Bearer realm="uqserve"`. Keys are compared
in constant time (`hmac.compare_digest`, every key tried), and never appear
in a log, an error or a response. `/docs.json` declares the bearer scheme.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.limits import App, Drain, Message, Receive, Scope, Send, refuse_unread

VARIABLES = ("UQSERVE_API_KEYS", "UQSERVE_API_KEYS_FILE", "UQSERVE_ADMIN_KEYS",
             "UQSERVE_ADMIN_KEYS_FILE", "UQSERVE_METRICS_OPEN")  # fmt: skip
OPEN = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})
ADMIN = frozenset({"/weights_digest"})
MIN_KEY_LENGTH = 16
PLACEHOLDER = "REPLACE-"  # the example Secret's keys start so, and are refused
CHALLENGE = (b"www-authenticate", b'Bearer realm="uqserve"')
REFUSED_DRAIN = Drain(1024 * 1024, seconds=5.0, idle_seconds=2.0)  # past it: closed unread
SCHEME = {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}}


class KeySettingError(ValueError):
    """A key setting the service refuses; the message names the variable, never the key."""


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys (empty: the service is open); their values never print."""

    keys: tuple[bytes, ...] = field(default=(), repr=False)
    admin: tuple[bytes, ...] = field(default=(), repr=False)
    metrics_open: bool = False

    @property
    def enabled(self) -> bool:
        """Whether any key is set: the service requires one."""
        return bool(self.keys or self.admin)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys:
        """The keys of UQSERVE_API_KEYS[_FILE] and UQSERVE_ADMIN_KEYS[_FILE] (KeySettingError)."""
        environ = os.environ if environ is None else environ
        metrics = environ.get("UQSERVE_METRICS_OPEN", "false").strip().lower()
        if metrics not in ("true", "false"):
            raise KeySettingError(
                f"UQSERVE_METRICS_OPEN: expected true or false, received {metrics!r}"
            )
        return cls(_read(environ, "UQSERVE_API_KEYS"), _read(environ, "UQSERVE_ADMIN_KEYS"),
                   metrics == "true")  # fmt: skip

    def describe(self) -> str:
        """One log line: on or off, and how many keys (never which)."""
        if not self.enabled:
            return ("API keys are off: every route is open to anyone who can reach the port "
                    "(set UQSERVE_API_KEYS or UQSERVE_API_KEYS_FILE to require a key)")  # fmt: skip
        metrics = "open" if self.metrics_open else "behind a key"
        return (f"API keys are on: {len(self.keys)} key(s), {len(self.admin)} admin key(s); "
                f"/metrics {metrics}")  # fmt: skip


def _read(environ: Mapping[str, str], name: str) -> tuple[bytes, ...]:
    """The keys of `name` (comma-separated) and of the file `name`_FILE (one per line)."""
    values = [k.strip() for k in environ.get(name, "").split(",") if k.strip()]
    for index, key in enumerate(values):
        _check(key, f"{name} (key {index + 1} of {len(values)})")
    source = f"{name}_FILE"
    if path := environ.get(source, "").strip():
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:
            raise KeySettingError(f"{source}: cannot read {path} ({error.strerror})") from None
        found = [k.strip() for k in lines if k.strip() and not k.strip().startswith("#")]
        if not found:  # a Secret with every line commented out must not turn the keys off
            raise KeySettingError(f"{source}: {path} holds no key")
        for index, key in enumerate(found):
            _check(key, f"{source} (key {index + 1} of {len(found)} in {path})")
        values += found
    return tuple(key.encode() for key in values)


def _check(key: str, where: str) -> None:
    """Refuse a short key, one with spaces or commas, or the example's placeholder."""
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() or c == "," for c in key):
        raise KeySettingError(f"Invalid value for {where}: expected at least {MIN_KEY_LENGTH} "
                              "characters without spaces or commas")  # fmt: skip
    if key.startswith(PLACEHOLDER):
        raise KeySettingError(f"Invalid value for {where}: the example Secret's placeholder; "
                              "put a real key in the Secret")  # fmt: skip


def _matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether `given` is one of `keys`, comparing with each in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def _route_path(scope: Scope) -> str:
    """The path the router matches: `path` less the `root_path` a proxy or mount put before it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _bearer(headers: dict[bytes, bytes]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    return token.strip() or None if scheme.lower() == b"bearer" else None


class Authenticate:
    """ASGI middleware: the key check (see the module), answered before the body is read.

    `drain` bounds how much of a refused body is read so that the client can
    read its 401 (`service.limits.Drain`); by default `REFUSED_DRAIN`, small: a
    client without a key gets little of the server's time.
    """

    def __init__(self, app: App, keys: ApiKeys, drain: Drain | None = None) -> None:
        self.app, self.keys, self.drain = app, keys, drain or REFUSED_DRAIN
        self.open = OPEN | ({"/metrics"} if keys.metrics_open else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an allowed request on; answer any other before reading its body."""
        if scope["type"] == "lifespan" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a WebSocket: no route takes one; refused, not let past
            await send({"type": "websocket.close", "code": 1008})
            return
        path, headers = _route_path(scope), dict(scope.get("headers") or [])
        refusal = None if path in self.open else self._refusal(path, headers)
        if refusal is not None:
            status, error = refusal
            extra = (CHALLENGE,) if status == 401 else ()
            await refuse_unread(headers, receive, send, status, error, self.drain, extra)
        elif path == "/docs.json":
            await self.app(scope, receive, _declaring_the_scheme(send, self.open))
        else:
            await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(401 or 403, why) when the request's key does not open `path`, else None."""
        token = _bearer(headers)
        if token is None:
            return 401, "authorization: send an API key as `Authorization: Bearer <key>`"
        admin = _matches(token, self.keys.admin)
        if path in ADMIN:
            if admin:
                return None
            if _matches(token, self.keys.keys):
                return 403, f"{path}: an admin route; this key is not an admin key"
            return 401, "authorization: the API key is not valid"
        if admin or _matches(token, self.keys.keys):
            return None
        return 401, "authorization: the API key is not valid"


def _declaring_the_scheme(send: Send, open_paths: set[str] | frozenset[str]) -> Send:
    """`send`, with the OpenAPI document's body rewritten to declare the bearer scheme."""
    held: list[Message] = []

    async def rewriting(message: Message) -> None:
        if message["type"] == "http.response.start":
            held.append(message)
            return
        held.append(message)
        if message.get("more_body"):
            return
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        if start["status"] == 200:
            body = _with_scheme(body, open_paths)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return rewriting


def _with_scheme(body: bytes, open_paths: set[str] | frozenset[str]) -> bytes:
    """An OpenAPI document with `components.securitySchemes.bearer`, global `security`, and
    none on the open paths' operations."""
    try:
        spec = json.loads(body)
    except ValueError:
        return body
    spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEME)
    spec["security"] = [{"bearer": []}]
    for path, operations in spec.get("paths", {}).items():
        if path in open_paths and isinstance(operations, dict):
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation["security"] = []
    return json.dumps(spec).encode()
