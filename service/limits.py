"""Refuse an oversized or malformed request before BentoML parses it.

An ASGI middleware in front of every route. A declared `Content-Length` over
the byte limit gets a 413 at once. Otherwise the body is checked as it
streams: its size, and, for a multipart form, every part's headers (through
python-multipart's streaming parser, the one Starlette uses). Past a limit, or
at a part that is not allowed, the middleware answers itself (413 or 400) and
tells the app the client has gone, so nothing more is read, parsed or written.

Why the form checks: BentoML 1.4 turns Starlette's "too many files" and
malformed-form errors into 500s, and it treats a *text* value of a file field
as a URL to download, which is both a server-side request forgery risk and,
without uvloop, a crash. Here `files` must be file uploads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
FORM_FIELDS = 2  # samples and seed, besides one part per file
FILE_FIELDS = (b"files",)
MAX_FIELD_BYTES = 64 * 1024  # a form's text value (samples, seed); Starlette 500s past 1 MiB
CONTENT_TYPES = {  # what each prediction route accepts; anything else is a 415
    "/predict": b"multipart/form-data",
    "/predict_array": b"application/json",
}


class FormError(ValueError):
    """A multipart form the service refuses; the message is for the client."""


class FormInspector:
    """Feeds a multipart body to python-multipart and checks each part's headers."""

    def __init__(self, boundary: bytes, max_parts: int) -> None:
        self.max_parts, self.parts = max_parts, 0
        self._field, self._value, self._headers = b"", b"", {}
        self.error: str | None = None
        self._field_bytes, self._text_part = 0, False
        callbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_header_field": self._add_field,
            "on_header_value": self._add_value,
            "on_header_end": self._end_header,
            "on_headers_finished": self._check_part,
        }
        self.parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk; raise FormError at the first part that is not allowed."""
        try:
            self.parser.write(chunk)
        except MultipartParseError as error:
            raise FormError(f"request body: malformed multipart form ({error})") from None
        if self.error is not None:
            raise FormError(self.error)

    def _begin(self) -> None:
        self.parts += 1
        self._headers = {}
        if self.parts > self.max_parts and self.error is None:
            self.error = f"files: more than the limit of {self.max_parts - FORM_FIELDS} images"

    def _add_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _add_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _end_header(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _check_part(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"")
        self._text_part, self._field_bytes = b"filename" not in options, 0
        if name in FILE_FIELDS and self._text_part and self.error is None:
            self.error = f"{name.decode()}: expected file uploads, received a text field"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._text_part:
            return
        self._field_bytes += end - start
        if self._field_bytes > MAX_FIELD_BYTES and self.error is None:
            self.error = f"form: a text field longer than {MAX_FIELD_BYTES} bytes"


class RequestLimits:
    """ASGI middleware: 413 past `max_bytes` of body, 400 past `max_files` form files."""

    def __init__(self, app: App, max_bytes: int, max_files: int) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
            if value < 1:
                raise ValueError(f"Invalid value for `{name}`: expected >= 1, received {value}")
        self.app = app
        self.max_bytes = max_bytes
        self.max_parts = max_files + FORM_FIELDS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        wrong_type = _wrong_type(scope, headers.get(b"content-type", b""))
        if wrong_type is not None:
            await _refuse(send, *wrong_type)
        elif declared is not None and not declared.isdigit():
            await _refuse(send, 400, "Content-Length: not a number of bytes")
        elif declared is not None and int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_big(f"{int(declared)} bytes"))
        else:
            guard = _Guard(self, _boundary(headers.get(b"content-type", b"")), receive, send)
            await self.app(scope, guard.receive, guard.send)

    def _too_big(self, size: str) -> str:
        """The 413 message: what was received and the limit."""
        return f"request body: {size} exceeds the limit of {self.max_bytes} bytes"


class _Guard:
    """Checks one request's body as it streams; answers first when something is refused."""

    def __init__(self, limits: RequestLimits, boundary: bytes | None, receive: Receive,
                 send: Send) -> None:  # fmt: skip
        self.limits, self.size, self.refused = limits, 0, False
        self.form = None if boundary is None else FormInspector(boundary, limits.max_parts)
        self._receive, self._send = receive, send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or self.refused:
            return message
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limits.max_bytes:
            return await self._refuse(413, self.limits._too_big("more bytes than allowed"))
        try:
            if self.form is not None:
                self.form.feed(chunk)
        except FormError as error:
            return await self._refuse(400, str(error))
        return message

    async def send(self, message: Message) -> None:
        if not self.refused:  # once refused, whatever the app says goes nowhere
            await self._send(message)

    async def _refuse(self, status: int, error: str) -> Message:
        self.refused = True
        await _refuse(self._send, status, error)
        return {"type": "http.disconnect"}


def _wrong_type(scope: Scope, content_type: bytes) -> tuple[int, str] | None:
    """(status, why) when a prediction route refuses this content type, else None.

    BentoML would hand a urlencoded body to its multipart parser, and
    download a `files=<URL>` value; only the route's own type gets through.
    """
    expected = CONTENT_TYPES.get(scope.get("path", ""))
    if expected is None or scope.get("method") != "POST":
        return None
    kind, options = parse_options_header(content_type)
    if kind.lower() != expected:
        received = kind.decode(errors="replace") or "none"
        return 415, f"content-type: expected {expected.decode()}, received {received}"
    if expected.startswith(b"multipart/") and not options.get(b"boundary"):
        return 400, "content-type: multipart/form-data without a boundary"
    return None


def _boundary(content_type: bytes) -> bytes | None:
    """The boundary of a multipart form upload, else None."""
    kind, options = parse_options_header(content_type)
    if not kind.lower().startswith(b"multipart/"):
        return None
    return options.get(b"boundary") or None


async def _refuse(send: Send, status: int, error: str) -> None:
    """Answer `status` with `{"error": error}`, the body every refusal of the service has."""
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
