"""An ASGI application served by uvicorn on a socket bound up front, run and stopped like a blocking server.

`ApiServer` binds its socket when made, so that port 0 gives a free port whose
URL is known before anything is served (and a port in use fails at once, as an
OSError). `serve_forever()` runs uvicorn's event loop in the calling thread until
`shutdown()` (from another thread) or Ctrl-C; `server_close()` closes the socket.
uvicorn runs with its h11 protocol, whose answer to a request that is not valid
HTTP is JSON in OpenAI's error shape here, like every other error, and with
request logging of its own, one line per request on stderr when asked for.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gptkit.serving.openai_schema import ApiError
from gptkit.serving.transport import json_bytes

# How long a stop waits for replies still being sent before it cuts them off.
GRACEFUL_STOP_SECONDS = 5.0


class JsonErrorsH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering a malformed request in JSON rather than plain text."""

    def send_400_response(self, msg: str) -> None:
        # Called while h11's RemoteProtocolError is handled: it says what is wrong ("bad Content-Length").
        problem = sys.exc_info()[1]
        body = json_bytes(ApiError(400, f"the request is not valid HTTP/1.1: {problem or msg}").body())
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def logging_requests(app: ASGIApp) -> ASGIApp:
    """`app`, writing a line per request on stderr once its status is known: client, request line, status."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_and_log(message: Message) -> None:
            if message["type"] == "http.response.start":
                client = scope["client"][0] if scope.get("client") else "-"
                when = time.strftime("%d/%b/%Y %H:%M:%S")
                line = f'{client} - - [{when}] "{scope["method"]} {scope["path"]} HTTP/{scope["http_version"]}" {message["status"]}\n'
                sys.stderr.write(line)
            await send(message)

        await app(scope, receive, send_and_log)

    return logged


class ApiServer:
    """`app` on `address` (host, port; port 0 picks a free one), bound now, served by `serve_forever`."""

    def __init__(self, address: tuple[str, int], app: ASGIApp, *, log_requests: bool) -> None:
        # The first address the host resolves to: "::1" or an IPv6-only name needs its own family.
        family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.socket = socket.create_server(address, family=family)
        self.log_requests = log_requests
        config = uvicorn.Config(
            logging_requests(app) if log_requests else app,
            http=JsonErrorsH11, ws="none", lifespan="off", loop="asyncio", interface="asgi3",
            log_config=None, access_log=False, proxy_headers=False, server_header=False, headers=[("server", "gptkit")],
            timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS,
        )
        self._uvicorn = uvicorn.Server(config)
        self._serving, self._stopped = threading.Event(), threading.Event()

    @property
    def server_address(self) -> tuple[Any, ...]:
        """(host, port), and for IPv6 its flow and scope ids, as the socket is bound."""
        return tuple(self.socket.getsockname())

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; in the main thread Ctrl-C also stops it, and then raises KeyboardInterrupt."""
        self._serving.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (replies under way get GRACEFUL_STOP_SECONDS to finish); returns once `serve_forever` has."""
        self._uvicorn.should_exit = True
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
