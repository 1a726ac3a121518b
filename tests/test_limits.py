"""The request-limits middleware on its own: bytes and form parts counted as they stream."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from service.limits import RequestLimits

BOUNDARY = b"xyz"


def _run(body_chunks: list[bytes], headers: list[tuple[bytes, bytes]], **limits: int):
    """Send the chunks through the middleware to an app that echoes the body's length."""
    received: list[bytes] = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client gone")  # what Starlette does, in effect
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(b"".join(received))})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
        for i, c in enumerate(body_chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def main():
        middleware = RequestLimits(app, **limits)
        with contextlib.suppress(ConnectionError):
            await middleware({"type": "http", "headers": headers}, receive, send)

    asyncio.run(main())
    return sent[0]["status"], sent[1]["body"]


MULTIPART = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]


def test_a_body_within_limits_reaches_the_app_whole():
    chunks = [b"--xyz\r\npart\r\n", b"--xyz\r\npart\r\n--xyz--"]
    status, body = _run(chunks, MULTIPART, max_bytes=1000, max_files=4)
    assert (status, body) == (200, b"%d" % sum(map(len, chunks)))


def test_delimiters_split_across_chunks_are_counted():
    chunks = [b"--x", b"yz\r\na\r\n--", b"xy", b"z\r\nb\r\n--xyz--"]  # 3 delimiters
    assert _run(chunks, MULTIPART, max_bytes=1000, max_files=1)[0] == 200
    status, body = _run(chunks * 2, MULTIPART, max_bytes=1000, max_files=1)  # 6 > 1 + 3
    assert status == 400
    assert "more than the limit of 1 images" in json.loads(body)["error"]


def test_a_chunked_body_over_the_limit_is_refused_with_413():
    status, body = _run([b"a" * 600, b"a" * 600], [], max_bytes=1000, max_files=4)
    assert status == 413
    assert "exceeds the limit of 1000 bytes" in json.loads(body)["error"]


def test_a_declared_length_over_the_limit_is_refused_unread():
    headers = [(b"content-length", b"5000")]
    status, body = _run([b"tiny"], headers, max_bytes=1000, max_files=4)
    assert status == 413 and b"5000 bytes" in body


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="Invalid value for `max_files`"):
        RequestLimits(lambda *a: None, max_bytes=10, max_files=0)
