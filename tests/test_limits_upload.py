"""The request-limits middleware behind a real uvicorn server: refusals a real client can read.

A client that writes its whole body before reading (urllib) must get the 413,
not a reset; one that sends `Expect: 100-continue` must get it without
uploading; one that sends far more than the drain bound, or forever, must be
cut off. Socket timeouts are a safety net only: nothing here times the server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import uvicorn

from deploy.processes import bind_free_port
from service.limits import Drain, RequestLimits

# The roomy server: 8 MB of body, a 32 MB drain bound. Its bodies are well past what the kernel
# buffers on loopback (about 2.5 MB here): a client must be read for its whole upload to fit.
LIMIT = 8_000_000
# Its drain waits longer than any socket here: a client it drained when it should not, or
# answered only after draining, would hang the test until SAFETY runs out.
ROOMY_DRAIN = Drain(4 * LIMIT, seconds=60.0, idle_seconds=60.0)
TIGHT = 1_000  # the tight server: 1 kB of body, a 4 kB drain bound, half a second to drain
TIGHT_DRAIN = Drain(4 * TIGHT, seconds=0.5, idle_seconds=0.25)
SAFETY = 10.0  # seconds any socket may block before the test fails


async def echo_length(scope, receive, send):
    """Reads the whole body, raising if the client has gone, as Starlette does; answers its size."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = b"%d" % size
    headers = [(b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@contextlib.contextmanager
def _serve(app: RequestLimits) -> Iterator[int]:
    """Run `app` under uvicorn (h11, as BentoML runs it) in a thread; yield its port."""
    sock = bind_free_port()  # kept bound: no other process can take it meanwhile
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        timeout_keep_alive=60,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SAFETY
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(SAFETY)
        sock.close()


@pytest.fixture(scope="module")
def roomy() -> Iterator[int]:
    with _serve(RequestLimits(echo_length, LIMIT, max_files=4, drain=ROOMY_DRAIN)) as port:
        yield port


@pytest.fixture(scope="module")
def tight() -> Iterator[int]:
    with _serve(
        RequestLimits(echo_length, max_bytes=TIGHT, max_files=4, drain=TIGHT_DRAIN)
    ) as port:
        yield port


def _post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """POST with urllib, which writes the whole body before it reads anything."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=SAFETY) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=SAFETY)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw socket: (status, lower-cased headers, body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response; received {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed (end of stream or reset); False if it says more."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _headers(path: str, extra: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def test_urllib_reads_the_413_for_a_declared_body_over_the_limit(roomy):
    pixels = b"[" + b"0," * 12_000_000 + b"0]"  # 24 MB of JSON, 3 times the limit
    status, body = _post(roomy, "/predict_array", pixels, "application/json")
    assert status == 413
    error = json.loads(body)["error"]
    assert error == f"request body: {len(pixels)} bytes exceeds the limit of {LIMIT} bytes"


def test_a_chunked_upload_over_the_limit_reads_its_413(roomy):
    connection = http.client.HTTPConnection("127.0.0.1", roomy, timeout=SAFETY)
    chunks = (b"0," * 50_000 for _ in range(240))  # 24 MB, no Content-Length
    connection.request(
        "POST",
        "/predict_array",
        body=chunks,
        encode_chunked=True,
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert (response.status, response.getheader("connection")) == (413, "close")
    assert f"exceeds the limit of {LIMIT} bytes" in json.loads(response.read())["error"]
    connection.close()


def test_expect_continue_over_the_limit_gets_413_without_the_body(roomy):
    with _connect(roomy) as sock:
        declared = 2 * LIMIT  # within the drain bound: drained, were it not for the Expect
        expect = f"Content-Length: {declared}\r\nExpect: 100-continue\r\n"
        sock.sendall(_headers("/predict_array", "Content-Type: application/json\r\n" + expect))
        status, headers, body = _read_response(sock)  # no body sent: a server waiting for it hangs
        assert (status, headers["connection"]) == (413, "close")
        assert f"{declared} bytes exceeds the limit" in json.loads(body)["error"]
        assert _closed_by_server(sock)


def test_expect_continue_within_the_limit_gets_100_then_is_served(roomy):
    with _connect(roomy) as sock:
        sock.sendall(
            _headers(
                "/predict_array",
                "Content-Type: application/json\r\nContent-Length: 5\r\nExpect: 100-continue\r\n",
            )
        )
        assert _read_response(sock)[0] == 100
        sock.sendall(b"[1,2]")
        assert _read_response(sock)[::2] == (200, b"5")


def test_a_body_within_the_limit_reaches_the_app_whole(roomy):
    body = b"[" + b"0," * 400_000 + b"0]"
    assert _post(roomy, "/predict_array", body, "application/json") == (200, b"%d" % len(body))


def test_a_wrong_content_type_with_a_large_body_reads_its_415(roomy):
    status, body = _post(roomy, "/predict_array", b"x" * 3 * LIMIT, "text/plain")
    assert status == 415
    assert (
        json.loads(body)["error"] == "content-type: expected application/json, received text/plain"
    )


def test_a_large_malformed_form_reads_its_400(roomy):
    body = b"garbage before any boundary\r\n" + b"x" * (LIMIT - 100)
    status, answer = _post(roomy, "/predict", body, "multipart/form-data; boundary=xyz")
    assert status == 400 and "malformed multipart form" in json.loads(answer)["error"]


def test_a_declared_length_past_the_drain_bound_is_answered_and_closed_unread(tight):
    with _connect(tight) as sock:
        sock.sendall(_headers("/x", f"Content-Length: {100 * TIGHT}\r\n"))
        status, headers, _ = _read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert _closed_by_server(sock)  # without having waited for one byte of the body


def test_a_chunked_body_past_the_drain_bound_is_cut_off(tight):
    chunk = b"%x\r\n%s\r\n" % (65536, b"0" * 65536)
    with _connect(tight) as sock:
        sock.sendall(_headers("/x", "Transfer-Encoding: chunked\r\n"))
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # not a timeout: closed
            for _ in range(1024):  # 64 MiB, 16 000 times the drain bound
                sock.sendall(chunk)


def test_a_client_that_trickles_forever_is_cut_off(tight):
    with _connect(tight) as sock:
        sock.sendall(_headers("/x", "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"%x\r\n%s\r\n" % (2 * TIGHT, b"0" * 2 * TIGHT))
        status, headers, _ = _read_response(sock)  # the refusal comes before the draining
        assert (status, headers["connection"]) == (413, "close")
        closed = False
        for _ in range(
            TIGHT_DRAIN.max_bytes // 10 - 100
        ):  # 10 bytes at a time: never the byte bound
            with contextlib.suppress(OSError):
                sock.sendall(b"a\r\n0123456789\r\n")
            if select.select([sock], [], [], 0.02)[0]:
                closed = _closed_by_server(sock)
                break
        assert closed


def test_the_refusal_comes_before_the_rest_of_the_body(roomy):
    with _connect(roomy) as sock:
        sock.sendall(_headers("/x", f"Content-Length: {2 * LIMIT}\r\n"))
        sock.sendall(b"0" * 10)  # then nothing: the server is still waiting to drain the rest
        status, headers, body = _read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert f"{2 * LIMIT} bytes exceeds the limit of {LIMIT} bytes" in json.loads(body)["error"]


def test_a_client_that_stalls_is_cut_off(tight):
    with _connect(tight) as sock:
        sock.sendall(_headers("/x", f"Content-Length: {3 * TIGHT}\r\n"))
        sock.sendall(b"0" * 10)  # then nothing
        status, headers, _ = _read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert _closed_by_server(sock)
