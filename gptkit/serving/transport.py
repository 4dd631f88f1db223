"""The HTTP mechanics under gptkit's server: bounded bodies, JSON replies, event streams, clients that leave.

`ApiServer` is the standard library's `ThreadingHTTPServer` (one thread per
connection) with an address family picked from its host and hang-ups kept out
of the log. `ApiHandler` is a request handler that routes build on: it reads a
request body of at most `MAX_BODY_BYTES` (413 past it, also before the client
sends it when asked with `Expect: 100-continue`), answers in JSON (errors in
OpenAI's shape, `ApiError`), streams server-sent events as chunks, and tells
when the client has gone. Which paths exist and what they answer is
`gptkit.serving.server`'s business, not this file's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import sys
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from gptkit.serving.openai_schema import ApiError

MAX_BODY_BYTES = 64 * 1024
DRAIN_BYTES = 1024 * 1024  # oversized bodies up to this are read and dropped, so the 413 arrives intact
DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


class ApiServer(ThreadingHTTPServer):
    """Serves `handler` on `address`, a thread per connection; `log_requests` says whether handlers log."""

    daemon_threads = True  # a stuck client must not keep the process alive at exit

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, log_requests: bool) -> None:
        # The base class always opens an IPv4 socket; "::1" or an IPv6-only name needs the family it resolves to.
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.log_requests = log_requests
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up between requests is routine, not worth a traceback.
        if not isinstance(sys.exc_info()[1], DISCONNECTED):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ApiHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; JSON and event-stream replies for the routes a subclass defines."""

    server: ApiServer
    events_started: bool  # True once an event stream's status line has gone out: errors must then be events
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle or stalled connection gives its thread back

    def handle_one_request(self) -> None:
        self.events_started = False  # per request: one handler object serves a whole kept-alive connection
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    # -- replies --

    def send_bytes(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        # Said outright when this reply ends the connection, so the client does not try to reuse it.
        closing = {"Connection": "close"} if self.close_connection else {}
        self.send_bytes(status, "application/json", json.dumps(obj).encode(), {**(headers or {}), **closing})

    def send_api_error(self, err: ApiError) -> None:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        self.send_json(err.status, err.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class answers malformed requests in HTML; API clients expect JSON.
        self.close_connection = True
        self.send_json(code, ApiError(code, message or self.responses.get(code, ("error",))[0]).body())

    def send_failure(self, err: ApiError) -> None:
        """Answer `err` however far the reply has got, and close: a JSON error, or an error event ending the stream."""
        self.close_connection = True
        with contextlib.suppress(ClientGone, *DISCONNECTED):
            if self.events_started:  # the status line is gone; OpenAI's clients raise on an error event
                self.send_event(err.body())
                self.end_events()
            else:
                self.send_api_error(err)

    # -- the request body --

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it (curl asks first for large ones).
        if self._declared_length() > MAX_BODY_BYTES:
            self.close_connection = True
            self.send_api_error(self._too_large())
            return False
        return super().handle_expect_100()

    def read_body(self) -> bytes:
        """The request's body, or ApiError: 411 if chunked, 400 for a bad Content-Length, 413 past MAX_BODY_BYTES."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        length = self._declared_length()
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length header")
        if length > MAX_BODY_BYTES:
            if length <= DRAIN_BYTES:
                # Read and drop it: closing with unread data sends a reset that can destroy our reply.
                while length > 0 and (chunk := self.rfile.read(min(MAX_BODY_BYTES, length))):
                    length -= len(chunk)
            else:
                self.close_connection = True
            raise self._too_large()
        return self.rfile.read(length)

    def _declared_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return -1

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is {self._declared_length()} bytes; at most {MAX_BODY_BYTES} are accepted")

    # -- event streams --

    def start_events(self) -> None:
        self.events_started = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, data: Any) -> None:
        """One server-sent event: `data` as JSON, or as given if bytes (`b"[DONE]"`). ClientGone if it cannot go."""
        payload = b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
        self._write_chunk(payload)

    def end_events(self) -> None:
        self._write_chunk(b"")

    def _write_chunk(self, payload: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
        except DISCONNECTED:
            self.close_connection = True
            raise ClientGone from None

    # -- clients that leave --

    def client_gone(self) -> bool:
        """True once the client has closed its end (seen without waiting for a failed write)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def while_connected(self, items: Generator[T, None, None]) -> Generator[T, None, None]:
        """`items`, closed (its clean-up run) and ClientGone raised as soon as the client leaves."""
        with contextlib.closing(items):
            for item in items:
                if self.client_gone():
                    self.close_connection = True
                    raise ClientGone
                yield item


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
