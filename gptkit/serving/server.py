"""A web demo and an OpenAI-compatible completions API for a gptkit model.

    python main.py serve --run runs/NAME        # or --hf-dir path/to/gpt2

serves, on 127.0.0.1:8000 by default:

    GET  /                   the demo page (gptkit/serving/web/index.html, no CDN, works offline)
    POST /v1/completions     OpenAI's completion API, streaming (server-sent events) or not
    GET  /v1/models          the one model served
    POST /api/generate       the page's stream: settings, text deltas, then a summary
    GET  /api/info           model name and request limits, for the page
    GET  /health             generations running and waiting, and their limits (cheap: no model work)

Only the standard library's `ThreadingHTTPServer` is used: one thread per
connection, no new dependency. This file is the HTTP side; the request schema
and its errors are `gptkit.serving.openai_schema`, the slots, the model lock and
the token-by-token generation `gptkit.serving.engine`. Choices where OpenAI's API leaves room:

* Unknown request keys are ignored, as OpenAI's own server does with fields it
  no longer uses; the known ones are validated strictly (a string is not a number).
  `n` must be 1, `model` is not checked (one model is served, and named in replies).
* Forward passes are serialised by one lock per model, taken around each step of
  the token iterator: up to `max_concurrent` generations interleave token by token,
  so a long one does not hold a short one up until it ends, and no two threads
  ever run the model (or touch its mode) at once.
* Generations past `max_concurrent` wait up to `queue_timeout` seconds in a queue
  of `max_queue`; beyond that they are answered 429.
* A client that goes away stops its generation at the next token and frees its slot.
* There is no authentication: it listens on loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import sys
import time
import traceback
from collections.abc import Callable, Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rich.console import Console

from gptkit.serving.openai_schema import ApiError, parse_request
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPTModel
from gptkit.serving.engine import Job, ModelService

if TYPE_CHECKING:
    from gptkit.data.tokenizer import Tokenizer  # or any registered tokenizer: encode, decode_bytes, eot_id

MAX_BODY_BYTES = 64 * 1024
DRAIN_BYTES = 1024 * 1024  # oversized bodies up to this are read and dropped, so the 413 arrives intact
DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive at exit

    def __init__(self, address: tuple[str, int], service: ModelService, page: bytes, *, log_requests: bool, family: int) -> None:
        self.address_family = family
        self.service = service
        self.page = page
        self.log_requests = log_requests
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up between requests is routine, not worth a traceback.
        if not isinstance(sys.exc_info()[1], DISCONNECTED):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: CompletionServer
    release_slot: Callable[[], None]  # set per POST: frees its generation slot (a second call does nothing)
    protocol_version = "HTTP/1.1"
    server_version = "gptkit"
    timeout = 60  # an idle or stalled connection gives its thread back

    # -- plumbing --

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class answers malformed requests in HTML; API clients expect JSON.
        self.close_connection = True
        self._send_json(code, ApiError(code, message or self.responses.get(code, ("error",))[0]).body())

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_api_error(self, err: ApiError) -> None:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        self._send_json(err.status, err.body(), headers)

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it (curl asks first for large ones).
        if self._declared_length() > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_api_error(self._too_large())
            return False
        return super().handle_expect_100()

    def _declared_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return -1

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is {self._declared_length()} bytes; at most {MAX_BODY_BYTES} are accepted")

    def _read_body(self) -> bytes:
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

    def _client_gone(self) -> bool:
        """True once the client has closed its end (seen without waiting for a failed write)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _start_events(self) -> None:
        self.events_started = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _send_event(self, data: Any) -> None:
        payload = b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
        self._write_chunk(payload)

    def _end_events(self) -> None:
        self._write_chunk(b"")

    def _write_chunk(self, payload: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
        except DISCONNECTED:
            self.close_connection = True
            raise ClientGone from None

    def _deltas(self, job: Job) -> Generator[str, None, None]:
        """`service.run(job)`, ended early (slot and lock freed) when the client leaves."""
        with contextlib.closing(self.server.service.run(job)) as deltas:
            for delta in deltas:
                if self._client_gone():
                    self.close_connection = True
                    raise ClientGone
                yield delta

    # -- routes --

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        service = self.server.service
        if path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.server.page)))
            # Everything the page needs is inline or same-origin; nothing else may load.
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:")
            self.end_headers()
            self.wfile.write(self.server.page)
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self._model_card()]})
        elif path == f"/v1/models/{service.model_name}":
            self._send_json(200, self._model_card())
        elif path == "/health":
            slots = service.slots  # unlocked reads: a monitor needs a recent figure, not an exact one
            self._send_json(200, {"status": "ok", "active": slots.active, "waiting": slots.waiting, "limit": slots.limit, "max_queue": slots.max_waiting})
        elif path == "/api/info":
            self._send_json(200, {
                "model": service.model_name, "context_length": service.context_length,
                "max_tokens_cap": service.max_new_tokens_cap, "max_prompt_tokens": service.max_prompt_tokens,
            })
        else:
            self._send_api_error(ApiError(404, f"no such endpoint: GET {path}", code="not_found"))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.events_started = False
        routes = {"/v1/completions": self._completions, "/api/generate": self._generate}
        try:
            body = self._read_body()
            if path not in routes:
                raise ApiError(404, f"no such endpoint: POST {path}", code="not_found")
            request = parse_request(body)
            job = self.server.service.prepare(request)
            with contextlib.ExitStack() as slot:
                slot.enter_context(self.server.service.slots.hold())
                # Routes call this as soon as the last token is made: the slot is free before the
                # reply's last bytes go out, so a client holding a whole reply never sees it taken.
                self.release_slot = slot.close
                routes[path](job)
        except ApiError as err:
            self._send_api_error(err)
        except ClientGone:
            pass
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            failure = ApiError(500, "the server failed to generate; see its log", kind="server_error")
            with contextlib.suppress(ClientGone, *DISCONNECTED):
                if self.events_started:  # the status line is gone; OpenAI's clients raise on an error event
                    self._send_event(failure.body())
                    self._end_events()
                else:
                    self._send_api_error(failure)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send_api_error(ApiError(405, f"{self.command} is not supported here", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _model_card(self) -> dict[str, Any]:
        service = self.server.service
        return {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "gptkit"}

    def _completion_object(self, job: Job, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": job.id, "object": "text_completion", "created": job.created, "model": self.server.service.model_name,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _completions(self, job: Job) -> None:
        if not job.request.stream:
            with contextlib.closing(self._deltas(job)) as deltas:
                text = "".join(deltas)
            self.release_slot()
            self._send_json(200, {**self._completion_object(job, text, job.finish_reason), "usage": job.usage()})
            return
        self._start_events()
        with contextlib.closing(self._deltas(job)) as deltas:
            for delta in deltas:
                if delta:
                    self._send_event(self._completion_object(job, delta, None))
        self.release_slot()
        self._send_event(self._completion_object(job, "", job.finish_reason))
        options = job.request.stream_options
        if options is not None and options.include_usage:
            self._send_event({**self._completion_object(job, "", None), "choices": [], "usage": job.usage()})
        self._send_event(b"[DONE]")
        self._end_events()

    def _generate(self, job: Job) -> None:
        """The page's stream: one settings event, text events, one done event."""
        self._start_events()
        self._send_event({"type": "settings", "model": self.server.service.model_name, "settings": job.settings()})
        started = time.perf_counter()
        with contextlib.closing(self._deltas(job)) as deltas:
            for delta in deltas:
                if delta:
                    self._send_event({"type": "text", "text": delta})
        elapsed = time.perf_counter() - started
        self.release_slot()
        self._send_event({"type": "done", "finish_reason": job.finish_reason, "usage": job.usage(), "seconds": round(elapsed, 3)})
        self._end_events()


# --- entry points -------------------------------------------------------------


def _page() -> bytes:
    return resources.files("gptkit.serving").joinpath("web", "index.html").read_bytes()


def make_server(
    model: GPTModel,
    tokenizer: Tokenizer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = "gptkit",
    max_concurrent: int = 2,
    max_queue: int = 8,
    max_new_tokens_cap: int = 512,
    max_prompt_tokens: int | None = None,
    queue_timeout: float = 10.0,
    log_requests: bool = False,
) -> CompletionServer:
    """A server bound to `host:port` (0 picks a free port; see `server.url`), not yet serving.

    Run `server.serve_forever()` (in a thread, for tests) and stop it with `server.shutdown()`.
    `max_prompt_tokens` defaults to the model's context length.
    """
    service = ModelService(
        model, tokenizer, model_name=model_name, max_concurrent=max_concurrent, max_queue=max_queue,
        queue_timeout=queue_timeout, max_new_tokens_cap=max_new_tokens_cap, max_prompt_tokens=max_prompt_tokens,
    )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return CompletionServer((host, port), service, _page(), log_requests=log_requests, family=family)
    except OSError as err:
        raise GptkitError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_forever(model: GPTModel, tokenizer: Tokenizer, *, console: Console | None = None, **options: Any) -> None:
    """Serve until Ctrl-C, printing where. `options` are `make_server`'s."""
    console = console or Console()
    server = make_server(model, tokenizer, **{"log_requests": True, **options})
    url = server.url
    console.print(f"serving [bold]{server.service.model_name}[/bold]: demo {url}  API {url}v1  (Ctrl-C stops)", soft_wrap=True)
    if not _is_loopback(str(server.server_address[0])):
        console.print("[yellow]warning:[/yellow] listening beyond this machine, with no authentication", soft_wrap=True)
    sys.stdout.flush()  # the URL must reach a pipe (a test, a supervisor) before the first request
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
