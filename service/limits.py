"""Refuse an oversized request before anything parses it.

An ASGI middleware in front of every route. A declared `Content-Length` over
the byte limit gets a 413 at once. A body sent without one (chunked) is
counted as it streams, and so are the parts of a multipart form: past either
limit the middleware answers itself (413 or 400) and tells the app the client
has gone, so nothing more is read, parsed or written to disk.

The part count matters because Starlette refuses a form of more than 1000
files with an exception that BentoML 1.4 turns into a 500; with this limit
such a form never reaches it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
FORM_FIELDS = 3  # samples, seed and the closing delimiter, besides one part per file


class RequestLimits:
    """ASGI middleware: 413 past `max_bytes` of body, 400 past `max_files` form files."""

    def __init__(self, app: App, max_bytes: int, max_files: int) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
            if value < 1:
                raise ValueError(f"Invalid value for `{name}`: expected >= 1, received {value}")
        self.app = app
        self.max_bytes = max_bytes
        self.max_files = max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _refuse(send, 400, "Content-Length: not a number of bytes")
        elif declared is not None and int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_big(f"{int(declared)} bytes"))
        else:
            guard = _Guard(self, _boundary(headers.get(b"content-type", b"")), receive, send)
            await self.app(scope, guard.receive, guard.send)

    def _too_big(self, size: str) -> str:
        return f"request body: {size} exceeds the limit of {self.max_bytes} bytes"


class _Guard:
    """Counts one request's body bytes and form parts; answers first when one is over."""

    def __init__(self, limits: RequestLimits, delimiter: bytes | None, receive: Receive,
                 send: Send) -> None:  # fmt: skip
        self.limits, self.delimiter = limits, delimiter
        self._receive, self._send = receive, send
        self.size, self.parts, self.tail, self.refused = 0, 0, b"", False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or self.refused:
            return message
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limits.max_bytes:
            return await self._refuse(413, self.limits._too_big("more bytes than allowed"))
        if self.delimiter is not None:
            window = self.tail + chunk
            self.parts += window.count(self.delimiter)
            self.tail = window[-(len(self.delimiter) - 1) :]
            if self.parts > self.limits.max_files + FORM_FIELDS:
                limit = self.limits.max_files
                return await self._refuse(400, f"files: more than the limit of {limit} images")
        return message

    async def send(self, message: Message) -> None:
        if not self.refused:  # once refused, whatever the app says goes nowhere
            await self._send(message)

    async def _refuse(self, status: int, error: str) -> Message:
        self.refused = True
        await _refuse(self._send, status, error)
        return {"type": "http.disconnect"}


def _boundary(content_type: bytes) -> bytes | None:
    """The multipart delimiter (b'--' + boundary) of a form upload, else None."""
    if not content_type.lower().startswith(b"multipart/"):
        return None
    for parameter in content_type.split(b";")[1:]:
        key, _, value = parameter.strip().partition(b"=")
        if key.lower() == b"boundary" and value.strip(b'"'):
            return b"--" + value.strip(b'"')
    return None


async def _refuse(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
