"""The request-limits middleware on its own: bytes and form parts counted as they stream."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from service.limits import DRAIN_CAP, Drain, RequestLimits

BOUNDARY = b"xyz"


def _exchange(body_chunks: list[bytes], headers: list[tuple[bytes, bytes]],
              scope: dict | None = None, **limits: int) -> tuple[list[dict], int]:  # fmt: skip
    """Send the chunks through the middleware to an app that echoes the body's length.

    Returns every message the middleware sent and how many body messages nobody read.
    """
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
            await middleware({"type": "http", "headers": headers, **(scope or {})}, receive, send)

    asyncio.run(main())
    return sent, len(messages)


def _run(body_chunks: list[bytes], headers: list[tuple[bytes, bytes]], **limits: int):
    """(status, body) of the middleware's or the app's answer."""
    sent, _ = _exchange(body_chunks, headers, **limits)
    return sent[0]["status"], sent[1]["body"]


def _closes(start: dict) -> bool:
    return (b"connection", b"close") in start["headers"]


MULTIPART = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of (field name, file name or None for a text field, content)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--xyz\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n"
        out += content + b"\r\n"
    return out + b"--xyz--\r\n"


def _split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_a_form_within_limits_reaches_the_app_whole():
    body = _form(("files", "a.png", b"\x89PNG..."), ("samples", None, b"3"))
    status, answer = _run(_split(body, 7), MULTIPART, max_bytes=1000, max_files=4)
    assert (status, answer) == (200, b"%d" % len(body))


def test_parts_split_across_chunks_are_counted():
    three = _form(*[("files", f"{i}.png", b"data") for i in range(3)])
    assert _run(_split(three, 5), MULTIPART, max_bytes=10_000, max_files=1)[0] == 200  # 3 <= 1 + 2
    four = _form(*[("files", f"{i}.png", b"data") for i in range(4)])
    status, body = _run(_split(four, 5), MULTIPART, max_bytes=10_000, max_files=1)
    assert status == 400
    assert "more than the limit of 1 images" in json.loads(body)["error"]


def test_a_text_value_for_files_is_refused_not_fetched():
    body = _form(("files", None, b"http://169.254.169.254/latest/meta-data"))
    status, answer = _run([body], MULTIPART, max_bytes=1000, max_files=4)
    assert status == 400
    assert json.loads(answer)["error"] == "files: expected file uploads, received a text field"


def test_a_malformed_form_is_refused():
    status, answer = _run([b"garbage before any boundary\r\n"], MULTIPART, max_bytes=1000,
                          max_files=4)  # fmt: skip
    assert status == 400 and b"malformed multipart form" in answer


def test_a_chunked_body_over_the_limit_is_refused_with_413():
    status, body = _run([b"a" * 600, b"a" * 600], [], max_bytes=1000, max_files=4)
    assert status == 413
    assert "exceeds the limit of 1000 bytes" in json.loads(body)["error"]


def test_a_declared_length_over_the_limit_is_refused_unread():
    headers = [(b"content-length", b"5000")]  # past the drain bound, 4 times 1000
    status, body = _run([b"tiny"], headers, max_bytes=1000, max_files=4)
    assert status == 413 and b"5000 bytes" in body
    sent, unread = _exchange([b"tiny"], headers, max_bytes=1000, max_files=4)
    assert unread == 1 and _closes(sent[0])


def test_a_refusal_mid_body_answers_drains_the_rest_then_closes():
    sent, unread = _exchange([b"a" * 600] * 5, [], max_bytes=1000, max_files=4)
    assert unread == 0  # all of the body was read, the app saw only the first 1200 bytes
    start, answer, end = sent
    assert start["status"] == 413 and _closes(start)
    assert answer["more_body"] and b"exceeds the limit of 1000 bytes" in answer["body"]
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_refusal_on_the_last_chunk_keeps_the_connection():
    sent, unread = _exchange([b"a" * 600, b"a" * 600], [], max_bytes=1000, max_files=4)
    assert unread == 0 and len(sent) == 2 and not _closes(sent[0])


def test_a_declared_length_within_the_drain_bound_is_drained():
    headers = [(b"content-length", b"3000")]
    sent, unread = _exchange([b"a" * 1000] * 3, headers, max_bytes=1000, max_files=4)
    assert unread == 0 and sent[0]["status"] == 413 and _closes(sent[0])


def test_expect_continue_is_refused_without_reading():
    headers = [(b"content-length", b"3000"), (b"expect", b"100-Continue")]
    sent, unread = _exchange([b"a" * 1000] * 3, headers, max_bytes=1000, max_files=4)
    assert unread == 3 and sent[0]["status"] == 413 and _closes(sent[0])  # receive never called


def test_a_refusal_without_a_body_keeps_the_connection():
    scope = {"path": "/predict_array", "method": "POST"}
    headers = [(b"content-type", b"text/plain")]
    sent, _ = _exchange([b""], headers, scope, max_bytes=1000, max_files=4)
    assert sent[0]["status"] == 415 and not _closes(sent[0])


def test_a_wrong_content_type_with_a_body_is_drained():
    scope = {"path": "/predict_array", "method": "POST"}
    headers = [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")]
    sent, unread = _exchange([b"a" * 10] * 3, headers, scope, max_bytes=1000, max_files=4)
    assert unread == 0 and sent[0]["status"] == 415 and _closes(sent[0])


def _endless(chunk: bytes, calls: list[int]):
    async def receive():
        calls.append(1)
        return {"type": "http.request", "body": chunk, "more_body": True}

    return receive


def test_drain_stops_past_its_byte_bound():
    calls: list[int] = []
    assert asyncio.run(Drain(100)(_endless(b"a" * 50, calls))) is False
    assert len(calls) == 3  # 150 bytes > 100


def test_drain_stops_at_its_time_bound():
    async def never():
        await asyncio.Event().wait()

    assert asyncio.run(Drain(100, seconds=0.05)(never)) is False
    assert asyncio.run(Drain(100, idle_seconds=0.05)(never)) is False


def test_drain_reports_a_body_that_ends():
    messages = [{"type": "http.request", "body": b"a" * 50, "more_body": m} for m in (True, False)]

    async def receive():
        return messages.pop(0)

    assert asyncio.run(Drain(100)(receive)) is True


def test_the_default_drain_bound_is_a_multiple_of_the_limit_with_a_cap():
    assert RequestLimits(lambda *a: None, 50_000_000, 1).drain.max_bytes == 200_000_000
    assert Drain.for_limit(10**9).max_bytes == DRAIN_CAP


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="Invalid value for `max_files`"):
        RequestLimits(lambda *a: None, max_bytes=10, max_files=0)
