"""The server on its ASGI stack: clients that leave, clients that read slowly, the worker pool, the address, the log.

Over real loopback HTTP with raw sockets, with test_server.py's fixtures.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from test_server import (  # fixtures and helpers, not tests: nothing here is collected twice
    PROMPT,
    TIMEOUT,
    model,
    request,
    slow_down,
    start,
    tokenizer,
    wait_until,
)

from gptkit import GPTModel
from gptkit.data.tokenizer import Tokenizer
from gptkit.serving.exchange import SPARE_THREADS
from gptkit.serving.page import PAGE_POLICY
from gptkit.serving.server import CompletionServer, make_server

__all__ = ["model", "start", "tokenizer"]  # fixtures, used by name


def record_closing(server: CompletionServer) -> list[str]:
    """Wrap the engine's token iterators (its public `run`): the list gets "closed" each time one is closed early."""
    run = server.service.run
    closed: list[str] = []

    def recorded(job: Any) -> Generator[str, None, None]:
        deltas = run(job)
        try:
            yield from deltas
        except GeneratorExit:
            closed.append("closed")
            deltas.close()
            raise

    server.service.run = recorded  # type: ignore[method-assign]
    return closed


def open_stream(server: CompletionServer, path: str, body: dict[str, Any], *, receive_buffer: int | None = None) -> socket.socket:
    """A raw connection that has sent a POST of `body` to `path`; `receive_buffer` shrinks its kernel buffer."""
    host, port = server.server_address[:2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # set before connecting: TCP's window is agreed then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(TIMEOUT)
    sock.connect((str(host), port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return sock


def read_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before {marker!r}: {received[-300:]!r}"
        received += chunk
    return received


def dechunk(raw: bytes) -> bytes:
    """An HTTP/1.1 chunked body (after the headers) as the bytes it carries."""
    body, rest = b"", raw
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2:]


# --- a client that leaves -------------------------------------------------------------------------

STREAMS = [
    ("/v1/completions", {"prompt": PROMPT, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "stream": True}),
    ("/api/generate", {"prompt": PROMPT}),
]


@pytest.mark.parametrize(("path", "body"), STREAMS, ids=[path for path, _ in STREAMS])
def test_a_client_hanging_up_mid_stream_frees_its_slot_and_closes_its_generation(
    start: Callable[..., CompletionServer], model: GPTModel, path: str, body: dict[str, Any],
) -> None:
    _, calls = slow_down(model, delay=0.01)  # 3000 tokens would take 30 s; the slot is back in well under 5
    server = start(model, max_concurrent=1, max_queue=0, max_new_tokens_cap=3000)
    closed = record_closing(server)
    with open_stream(server, path, {**body, "max_tokens": 3000, "temperature": 0}) as sock:
        read_until(sock, b"data: {")
        assert server.service.slots.active == 1
    wait_until(lambda: server.service.slots.active == 0, "the abandoned generation frees its slot", timeout=5)
    assert closed == ["closed"], "the engine's iterator was not closed: its sequence would stay in the batch"
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at < 1000, "the generation ran on after the client left"
    assert request(server, "GET", "/health")[1]["active"] == 0


def test_a_client_hanging_up_before_a_whole_reply_frees_its_slot(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    """Not streamed: nothing is written until the end, and the hang-up is still seen at the next token."""
    entered, _ = slow_down(model, delay=0.01)
    server = start(model, max_concurrent=1, max_queue=0, max_new_tokens_cap=3000)
    closed = record_closing(server)
    with open_stream(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3000}):
        assert entered.wait(TIMEOUT)
    wait_until(lambda: server.service.slots.active == 0, "the abandoned generation frees its slot", timeout=5)
    assert closed == ["closed"]


# --- a client that reads slowly -------------------------------------------------------------------


PIECE = 8192  # characters per delta: a few hundred of them overflow every buffer between server and client


def big_deltas(server: CompletionServer) -> threading.Event:
    """Make the engine's iterators (its public `run`) yield max_tokens deltas of PIECE characters, at once; set when one runs out."""
    ran_out = threading.Event()

    def run(job: Any) -> Generator[str, None, None]:
        for i in range(job.max_tokens):
            job.completion_ids.append(0)
            yield f"{i:07d}".ljust(PIECE, ".")
        ran_out.set()

    server.service.run = run  # type: ignore[method-assign]
    return ran_out


def test_a_slow_reader_stalls_neither_its_generation_nor_another_clients_request(
    start: Callable[..., CompletionServer], model: GPTModel,
) -> None:
    # 600 deltas of 8 KiB (4.8 MiB of events) to a client with a 4 KiB receive buffer that reads one
    # event, then nothing: the server's writes back up. With one slot, the second request is served
    # only once the slow reader's generation is done, which it would never be if generating waited
    # for the reader (the second request would get a 429 after queue_timeout).
    deltas = 600
    server = start(model, max_concurrent=1, max_queue=1, queue_timeout=30, max_new_tokens_cap=deltas)
    ran_out = big_deltas(server)
    body = {"prompt": PROMPT, "max_tokens": deltas, "stream": True}
    with open_stream(server, "/v1/completions", body, receive_buffer=4096) as slow:
        received = read_until(slow, b"data: {")
        assert ran_out.wait(TIMEOUT), "the slow reader's generation stalled"
        status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})
        assert status == 200 and reply["choices"][0]["text"] == "".join(f"{i:07d}".ljust(PIECE, ".") for i in range(3)), reply
        assert len(received) < deltas * PIECE // 2, "the slow reader was sent most of its reply: nothing backed up"
        received = read_until(slow, b"\r\n0\r\n\r\n", received)  # now it reads on: every event was kept for it
    _, chunked = received.split(b"\r\n\r\n", 1)
    events = [line[6:] for line in dechunk(chunked).decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])
    assert text == "".join(f"{i:07d}".ljust(PIECE, ".") for i in range(deltas)), "events were lost or reordered while the reader was slow"


def test_the_worker_pool_is_sized_from_the_limits(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    # anyio's default pool is 40 threads; 30 running and 30 queued generations each hold one.
    server = start(model, max_concurrent=30, max_queue=30)
    assert server.threads.total_tokens == 30 + 30 + SPARE_THREADS


def test_generations_waiting_for_the_model_leave_the_other_routes_answering(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    gate = threading.Event()
    entered, _ = slow_down(model, gate=gate)
    server = start(model, max_concurrent=2, max_queue=2)
    threads = [threading.Thread(target=request, args=(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert entered.wait(TIMEOUT)
        wait_until(lambda: server.service.slots.waiting == 2, "two requests queue")
        started = time.monotonic()
        for path in ("/health", "/v1/models", "/api/info", "/"):
            assert request(server, "GET", path)[0] == 200
        assert time.monotonic() - started < 5
    finally:
        gate.set()
        for thread in threads:
            thread.join(TIMEOUT)


# --- the address and the log ----------------------------------------------------------------------


def outward_address() -> str | None:
    """An address of this machine other than loopback, if it has one (no packet is sent)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@contextlib.contextmanager
def serving(server: CompletionServer) -> Iterator[CompletionServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_binds_loopback_by_default(model: GPTModel, tokenizer: Tokenizer) -> None:
    with serving(make_server(model, tokenizer)) as server:
        assert server.server_address[0] == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.server_address[1]}/"
        assert request(server, "GET", "/health")[0] == 200
        outward = outward_address()
        if outward is None:
            pytest.skip("this machine has no address but loopback to try from")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outward, server.server_address[1]), timeout=TIMEOUT).close()


def test_port_in_use_is_a_user_error(model: GPTModel, tokenizer: Tokenizer) -> None:
    from gptkit.errors import GptkitError

    with serving(make_server(model, tokenizer)) as server:
        port = server.server_address[1]
        with pytest.raises(GptkitError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            make_server(model, tokenizer, port=port)


def test_requests_are_logged_only_when_asked(model: GPTModel, tokenizer: Tokenizer, capfd: pytest.CaptureFixture[str]) -> None:
    with serving(make_server(model, tokenizer, log_requests=True)) as server:
        request(server, "GET", "/health")
        request(server, "POST", "/v1/nothing", b"{}")
    err = capfd.readouterr().err
    assert '"GET /health HTTP/1.1" 200' in err and '"POST /v1/nothing HTTP/1.1" 404' in err
    with serving(make_server(model, tokenizer)) as server:
        request(server, "GET", "/health")
    assert capfd.readouterr().err == ""


# --- routes that do not exist -------------------------------------------------------------------


def test_paths_and_methods_without_a_route_are_answered_in_json(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model, model_name="tiny")
    status, card = request(server, "GET", "/v1/models/tiny")
    assert status == 200 and card["id"] == "tiny"
    assert request(server, "GET", "/v1/models/gpt2") == (404, {"error": {
        "message": "no such endpoint: GET /v1/models/gpt2", "type": "invalid_request_error", "param": None, "code": "not_found",
    }})
    for method, path in (("PUT", "/v1/completions"), ("DELETE", "/health"), ("GET", "/v1/chat/completions")):
        assert request(server, method, path, b"{}" if method == "PUT" else None) == (405, {"error": {
            "message": f"{method} is not supported here", "type": "invalid_request_error", "param": None, "code": "method_not_allowed",
        }})


# --- headers -------------------------------------------------------------------------------------


def exchange_headers(server: CompletionServer, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str]]:
    """One request's status and reply headers (names in lower case)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        return reply.status, {name.lower(): value for name, value in reply.getheaders()}
    finally:
        conn.close()


def test_the_page_is_served_under_its_policy_and_a_429_says_when_to_retry(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    gate = threading.Event()
    entered, _ = slow_down(model, gate=gate)
    server = start(model, max_concurrent=1, max_queue=0)
    status, headers = exchange_headers(server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and headers["content-security-policy"] == PAGE_POLICY
    holder = threading.Thread(target=request, args=(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2}))
    holder.start()
    try:
        assert entered.wait(TIMEOUT)
        status, headers = exchange_headers(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
        assert (status, headers["retry-after"], headers["content-type"]) == (429, "1", "application/json")
    finally:
        gate.set()
        holder.join(TIMEOUT)
