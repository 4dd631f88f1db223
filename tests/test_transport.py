"""gptkit/serving/transport.py on its own: a tiny handler on 127.0.0.1, raw bytes over a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Generator, Iterator
from typing import ClassVar

import pytest

from gptkit.serving.openai_schema import ApiError
from gptkit.serving.transport import (
    MAX_BODY_BYTES,
    ApiHandler,
    ApiServer,
    ClientGone,
    is_loopback,
)

TIMEOUT = 10  # seconds any one exchange may take
TOO_LARGE = b'{"error": {"message": "the request body is %d bytes; at most 65536 are accepted", "type": "invalid_request_error", "param": null, "code": null}}'


class Probe(ApiHandler):
    """POST: the body's length as JSON. GET /ticks: one event, then ticks it never sends, until the client leaves."""

    ticks_closed: ClassVar[threading.Event] = threading.Event()  # the tick generator's clean-up ran
    outcome: ClassVar[list[str]] = []  # how do_GET's stream ended

    def do_POST(self) -> None:
        try:
            self.send_json(200, {"length": len(self.read_body())})
        except ApiError as err:
            self.send_api_error(err)

    def do_GET(self) -> None:
        self.start_events()
        try:
            for n in self.while_connected(self._ticks()):
                if n == 0:
                    self.send_event({"n": 0})
                time.sleep(0.005)
            self.outcome.append("ran out")
        except ClientGone:
            self.outcome.append("gone")

    def _ticks(self) -> Generator[int, None, None]:
        try:
            yield from range(2000)  # 10 s at most, were the hang-up never seen
        finally:
            self.ticks_closed.set()


@pytest.fixture()
def server() -> Iterator[ApiServer]:
    server = ApiServer(("127.0.0.1", 0), Probe, log_requests=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)


def connect(server: ApiServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=TIMEOUT)


def read_reply(sock: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length reply: (status line and headers, body)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-reply: {head!r}"
        head += chunk
    head, body = head.split(b"\r\n\r\n", 1)
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        body += sock.recv(4096)
    return head, body


def post(length: int, body: bytes = b"", headers: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (headers, length, body)


def test_body_up_to_the_limit_is_read(server: ApiServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(MAX_BODY_BYTES, b"x" * MAX_BODY_BYTES))
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b'{"length": 65536}'


def test_oversized_body_is_drained_413_and_the_connection_kept(server: ApiServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(MAX_BODY_BYTES + 1, b"x" * (MAX_BODY_BYTES + 1)))
        head, body = read_reply(sock)
        assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n") and body == TOO_LARGE % (MAX_BODY_BYTES + 1)
        assert b"Connection: close" not in head
        sock.sendall(post(2, b"{}"))  # the dropped body was not taken for this request
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b'{"length": 2}'


def test_body_too_large_to_drain_413_and_close(server: ApiServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(5_000_000))
        head, body = read_reply(sock)
        assert head.startswith(b"HTTP/1.1 413 ") and b"\r\nConnection: close" in head and body == TOO_LARGE % 5_000_000
        assert sock.recv(1) == b""


def test_expect_100_continue(server: ApiServer) -> None:
    with connect(server) as sock:  # too large: refused before the body is sent
        sock.sendall(post(70_000, headers=b"Expect: 100-continue\r\n"))
        head, body = read_reply(sock)
        assert head.startswith(b"HTTP/1.1 413 ") and b"\r\nConnection: close" in head and body == TOO_LARGE % 70_000
    with connect(server) as sock:  # small enough: asked to go on
        sock.sendall(post(2, headers=b"Expect: 100-continue\r\n"))
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b'{"length": 2}'


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"411 Length Required", b"send the body with a Content-Length, not chunked"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400 Bad Request", b"bad Content-Length header"),
    ],
)
def test_bodies_without_a_usable_length(server: ApiServer, request_bytes: bytes, status: bytes, message: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 " + status + b"\r\n") and b"\r\nConnection: close" in head
    assert body == b'{"error": {"message": "%s", "type": "invalid_request_error", "param": null, "code": null}}' % message


def test_a_client_that_leaves_is_seen_without_a_write(server: ApiServer) -> None:
    Probe.ticks_closed.clear()
    Probe.outcome.clear()
    with connect(server) as sock:
        sock.sendall(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"\n\n\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "closed before the first event"
            received += chunk
    head, first = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked" in head
    assert first == b'10\r\ndata: {"n": 0}\n\n\r\n'  # one chunk of 0x10 bytes: one event
    assert Probe.ticks_closed.wait(5), "the generation ran on after the client left"
    assert Probe.outcome == ["gone"]


def test_is_loopback() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.com")] == [False] * 4
