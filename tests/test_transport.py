"""gptkit/serving/transport.py, exchange.py and asgi_server.py on their own: a tiny app on 127.0.0.1, raw bytes over a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Generator, Iterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptkit.serving.asgi_server import ApiServer
from gptkit.serving.exchange import Exchange, RelayedReply
from gptkit.serving.transport import (
    MAX_BODY_BYTES,
    ClientGone,
    RefusedBody,
    error_reply,
    is_loopback,
    json_reply,
    read_body,
)

TIMEOUT = 10  # seconds any one exchange may take
TOO_LARGE = b'{"error": {"message": "the request body is %d bytes; at most 65536 are accepted", "type": "invalid_request_error", "param": null, "code": null}}'


class Probe:
    """POST /: the body's length as JSON. GET /ticks: one event, then ticks it never sends, until the client leaves."""

    def __init__(self) -> None:
        self.ticks_closed = threading.Event()  # the tick generator's clean-up ran
        self.outcome: list[str] = []  # how the stream's route ended

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/", self.length, methods=["POST"]), Route("/ticks", self.ticks, methods=["GET"])])

    async def length(self, request: Request) -> Response:
        try:
            return json_reply(200, {"length": len(await read_body(request))})
        except RefusedBody as refused:
            return error_reply(refused.error, close=refused.close)

    async def ticks(self, request: Request) -> Response:
        return RelayedReply(self._stream, anyio.CapacityLimiter(2))

    def _stream(self, exchange: Exchange) -> None:
        exchange.start_events()
        try:
            for n in exchange.while_connected(self._ticks()):
                if n == 0:
                    exchange.send_event({"n": 0})
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
def probe() -> Probe:
    return Probe()


@pytest.fixture()
def server(probe: Probe) -> Iterator[ApiServer]:
    server = ApiServer(("127.0.0.1", 0), probe.app(), log_requests=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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


def header_fields(head: bytes) -> dict[bytes, bytes]:
    """The reply's header fields by lower-case name (HTTP's names are case-insensitive)."""
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])}


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
        assert b"connection" not in header_fields(head)
        sock.sendall(post(2, b"{}"))  # the dropped body was not taken for this request
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b'{"length": 2}'


def test_body_too_large_to_drain_413_and_close(server: ApiServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(5_000_000))
        head, body = read_reply(sock)
        assert head.startswith(b"HTTP/1.1 413 ") and header_fields(head)[b"connection"] == b"close" and body == TOO_LARGE % 5_000_000
        assert sock.recv(1) == b""


def test_expect_100_continue(server: ApiServer) -> None:
    with connect(server) as sock:  # too large: refused before the body is sent
        sock.sendall(post(70_000, headers=b"Expect: 100-continue\r\n"))
        head, body = read_reply(sock)
        assert head.startswith(b"HTTP/1.1 413 ") and header_fields(head)[b"connection"] == b"close" and body == TOO_LARGE % 70_000
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
        # Refused by the HTTP layer, before any route: in JSON all the same.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400 Bad Request", b"the request is not valid HTTP/1.1: bad Content-Length"),
    ],
)
def test_bodies_without_a_usable_length(server: ApiServer, request_bytes: bytes, status: bytes, message: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        head, body = read_reply(sock)
    assert head.startswith(b"HTTP/1.1 " + status + b"\r\n") and header_fields(head)[b"connection"] == b"close"
    assert header_fields(head)[b"content-type"] == b"application/json"
    assert body == b'{"error": {"message": "%s", "type": "invalid_request_error", "param": null, "code": null}}' % message


def test_a_client_that_leaves_is_seen_without_a_write(server: ApiServer, probe: Probe) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"\n\n\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "closed before the first event"
            received += chunk
    head, first = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    fields = header_fields(head)
    assert (fields[b"content-type"], fields[b"cache-control"], fields[b"transfer-encoding"]) == (b"text/event-stream; charset=utf-8", b"no-cache", b"chunked")
    assert first == b'10\r\ndata: {"n": 0}\n\n\r\n'  # one chunk of 0x10 bytes: one event
    assert probe.ticks_closed.wait(5), "the generation ran on after the client left"
    assert probe.outcome == ["gone"]


def test_is_loopback() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.com")] == [False] * 4
