"""Refuse an oversized or malformed request before BentoML parses it.

An ASGI middleware in front of every route. A declared `Content-Length` over
the byte limit gets a 413 at once. Otherwise the body is checked as it
streams: its size, and, for a multipart form, every part's headers (through
python-multipart's streaming parser, the one Starlette uses). Past a limit, or
at a part that is not allowed, the middleware answers itself (413 or 400) and
tells the app the client has gone, so nothing more is parsed or written.

A refusal sent while the client is still uploading must not close the
connection under it: a client that writes its whole body before reading (such
as Python's `urllib`) then sees a broken pipe or a reset, never the answer.
So, as nginx's lingering close does, the middleware answers, then reads and
discards the rest of the body within bounds (`Drain`), then ends the response
with `Connection: close`. uvicorn (h11 and httptools alike) answers
`receive()` with `http.disconnect` once the response is complete, and closes
the transport as soon as a `Connection: close` response is complete, so the
draining has to happen between the answer's first bytes and its end. A client
that sent `Expect: 100-continue` has sent no body yet and gets the refusal
without one being asked for (uvicorn writes `100 Continue` only at the first
`receive()`, which is never called then).

Why the form checks: BentoML 1.4 turns Starlette's "too many files" and
malformed-form errors into 500s, and it treats a *text* value of a file field
as a URL to download, which is both a server-side request forgery risk and,
without uvloop, a crash. Here `files` must be file uploads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

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
DRAIN_FACTOR = 4  # a refused body is read to its end up to this many times max_bytes more...
DRAIN_CAP = 256 * 1024 * 1024  # ...and never more than this, whatever max_bytes is
DRAIN_SECONDS = 30.0  # nginx's lingering_time
DRAIN_IDLE_SECONDS = 5.0  # nginx's lingering_timeout
CLOSE = (b"connection", b"close")
Headers = tuple[tuple[bytes, bytes], ...]


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


@dataclass(frozen=True)
class Drain:
    """How much of a refused request's body is read and thrown away before the connection closes.

    Bytes: by default `min(DRAIN_FACTOR * max_bytes, DRAIN_CAP)` beyond what was
    read when refusing (200 MB for the default 50 MB limit). An honest client
    that overshoots does so by a small factor (a few images too many, or float
    pixels spelled out in JSON); reading that costs bandwidth and time but no
    memory, as every chunk is dropped, and lets the client read its 413. The
    cap bounds what one refused request can cost (256 MiB is about 2 s of a
    1 Gbit/s link) however high max_bytes is set. Time: `seconds` in all and
    `idle_seconds` without data, as nginx's lingering_time (30 s) and
    lingering_timeout (5 s), so a slow or stalled client cannot hold the
    worker. Past any bound the connection is closed unread.
    """

    max_bytes: int
    seconds: float = DRAIN_SECONDS
    idle_seconds: float = DRAIN_IDLE_SECONDS

    @classmethod
    def for_limit(cls, max_bytes: int) -> Drain:
        """The default bounds for a body limit of `max_bytes`."""
        return cls(min(DRAIN_FACTOR * max_bytes, DRAIN_CAP))

    async def __call__(self, receive: Receive) -> bool:
        """Read and discard body messages; True if the body ended within the bounds."""
        loop = asyncio.get_running_loop()
        deadline, discarded = loop.time() + self.seconds, 0
        while (left := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_seconds, left))
            except asyncio.TimeoutError:
                return False
            if message["type"] != "http.request":  # the client has gone
                return False
            discarded += len(message.get("body", b""))
            if discarded > self.max_bytes:
                return False
            if not message.get("more_body", False):
                return True
        return False


class RequestLimits:
    """ASGI middleware: 413 past `max_bytes` of body, 400 past `max_files` form files.

    `drain` bounds how much of a refused body is read so that the client can
    read the refusal; by default `Drain.for_limit(max_bytes)`.
    """

    def __init__(self, app: App, max_bytes: int, max_files: int,
                 drain: Drain | None = None) -> None:  # fmt: skip
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
            if value < 1:
                raise ValueError(f"Invalid value for `{name}`: expected >= 1, received {value}")
        self.app = app
        self.max_bytes = max_bytes
        self.max_parts = max_files + FORM_FIELDS
        self.drain = Drain.for_limit(max_bytes) if drain is None else drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers)
        if refusal is None:
            guard = _Guard(self, _boundary(headers.get(b"content-type", b"")), receive, send)
            await self.app(scope, guard.receive, guard.send)
            return
        await refuse_unread(headers, receive, send, *refusal, self.drain)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(status, why) when the request is refused on its headers alone, else None."""
        wrong_type = _wrong_type(scope, headers.get(b"content-type", b""))
        declared = headers.get(b"content-length")
        if wrong_type is not None:
            return wrong_type
        if declared is not None and not declared.isdigit():
            return 400, "Content-Length: not a number of bytes"
        if declared is not None and int(declared) > self.max_bytes:
            return 413, self.too_big(f"{int(declared)} bytes")
        return None

    def too_big(self, size: str) -> str:
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
            too_big = self.limits.too_big("more bytes than allowed")
            return await self._refuse(413, too_big, message)
        try:
            if self.form is not None:
                self.form.feed(chunk)
        except FormError as error:
            return await self._refuse(400, str(error), message)
        return message

    async def send(self, message: Message) -> None:
        if not self.refused:  # once refused, whatever the app says goes nowhere
            await self._send(message)

    async def _refuse(self, status: int, error: str, message: Message) -> Message:
        """Answer in the app's place, draining whatever body is left; the app sees a disconnect."""
        self.refused = True
        if message.get("more_body", False):
            await _refuse_draining(self._receive, self._send, status, error, self.limits.drain)
        else:  # the body has ended: nothing to drain, the connection can be kept
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


async def refuse_unread(headers: dict[bytes, bytes], receive: Receive, send: Send, status: int,
                        error: str, drain: Drain,
                        extra: Headers = ()) -> None:  # fmt: skip
    """Answer `status` with `{"error": error}` (and `extra` headers) to a request none of
    whose body has been read: kept, drained within `drain` or closed (`_unread_body`)."""
    plan = _unread_body(headers, drain)
    if plan == "drain":
        await _refuse_draining(receive, send, status, error, drain, extra)
    else:
        await _refuse(send, status, error, close=plan == "close", extra=extra)


def _unread_body(headers: dict[bytes, bytes], drain: Drain) -> Literal["keep", "close", "drain"]:
    """What to do with the body of a request refused before any of it was read.

    "keep": there is no body, the connection can serve another request.
    "close": answer and close without reading, when the client waits for
    `100 Continue` (RFC 9110 section 10.1.1 lets a server close rather than
    read), when the declared length is past the drain bound, or when it is not
    a number (no way to find the body's end). "drain": answer, then drain.
    """
    chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
    declared = None if chunked else headers.get(b"content-length", b"0")  # None: unknown
    if declared is not None and declared.isdigit() and int(declared) == 0:
        return "keep"
    if headers.get(b"expect", b"").lower() == b"100-continue":
        return "close"
    if declared is not None and (not declared.isdigit() or int(declared) > drain.max_bytes):
        return "close"
    return "drain"


async def _refuse(send: Send, status: int, error: str, *, close: bool = False,
                  more_body: bool = False, extra: Headers = ()) -> None:  # fmt: skip
    """Answer `status` with `{"error": error}`, the body every refusal of the service has.

    `close` adds `Connection: close`; `more_body` leaves the response open, for
    `_refuse_draining` to end.
    """
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra]  # fmt: skip
    if close:
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def _refuse_draining(receive: Receive, send: Send, status: int, error: str,
                           drain: Drain, extra: Headers = ()) -> None:  # fmt: skip
    """Answer at once, drain the rest of the body within `drain`'s bounds, then end the answer.

    The whole refusal is written first, so a client that reads while it sends
    has it at once; the response ends, with `Connection: close`, only after
    the draining, because the server stops reading and closes the connection
    as soon as it ends: closing with unread data makes the kernel reset the
    connection, and the client may lose the answer.
    """
    await _refuse(send, status, error, close=True, more_body=True, extra=extra)
    await drain(receive)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
