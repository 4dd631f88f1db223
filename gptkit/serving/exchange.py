"""A reply made on a worker thread and sent from the event loop: how generation and the network stay apart.

Generating is blocking work (the engine's token iterators are synchronous), so a
POST route runs on a worker thread with an `Exchange`: it answers in JSON or as
server-sent events, and each piece becomes an ASGI message put on an unbounded
queue that `relay` sends from the event loop. The thread never waits for the
network: a client that reads slowly holds up neither its own generation nor
anyone else's (its events wait in memory, at most one per generated token), and
its slot is free as soon as its last token is made. A thread is held only while
its route runs, so the worker pool is sized from the slots (`worker_threads`).

While the route runs, `relay` listens for the client hanging up; `Exchange.gone`
is set then, and a route's token loop (`while_connected`) stops at the next token,
closing the engine's iterator so that the generation's slot and its sequence are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gptkit.serving.openai_schema import ApiError
from gptkit.serving.transport import ClientGone, error_headers, json_bytes

T = TypeVar("T")
# Threads beyond the running and waiting generations: requests being parsed, or refused with a 429.
SPARE_THREADS = 8
EVENT_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def worker_threads(running: int, waiting: int) -> int:
    """Worker threads for a server of `running` generations at once and `waiting` queued for a slot.

    Each running or queued generation holds a thread (queued ones wait for a slot on
    it), so a pool smaller than both together would leave requests waiting for a
    thread that the slots would have let in, or refused; anyio's default of 40 is
    too few for large limits.
    """
    return running + waiting + SPARE_THREADS


class Exchange:
    """A route's side of one reply, used on its worker thread: JSON, or an event stream; `gone` once the client left."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: asyncio.Queue[Message]) -> None:
        self.gone = threading.Event()
        self.events_started = False  # the status line of an event stream is out: an error must be an event
        self._loop, self._outbox = loop, outbox

    def _put(self, message: Message) -> None:
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, message)

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._put({"type": "http.response.start", "status": status, "headers": headers})

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json_bytes(obj)
        fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self._start(status, fields + [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()])
        self._put({"type": "http.response.body", "body": body, "more_body": False})

    def send_api_error(self, err: ApiError) -> None:
        self.send_json(err.status, err.body(), error_headers(err))

    def send_failure(self, err: ApiError) -> None:
        """Answer `err` however far the reply has got: a JSON error, or an error event ending the stream."""
        if self.events_started:  # the status line is gone; OpenAI's clients raise on an error event
            with contextlib.suppress(ClientGone):
                self.send_event(err.body())
                self.end_events()
        else:
            self.send_json(err.status, err.body(), error_headers(err, close=True))

    def start_events(self) -> None:
        self.events_started = True
        self._start(200, list(EVENT_HEADERS))

    def send_event(self, data: Any) -> None:
        """One server-sent event: `data` as JSON, or as given if bytes (`b"[DONE]"`). ClientGone once the client left."""
        if self.gone.is_set():
            raise ClientGone
        payload = b"data: " + (data if isinstance(data, bytes) else json_bytes(data)) + b"\n\n"
        self._put({"type": "http.response.body", "body": payload, "more_body": True})

    def end_events(self) -> None:
        self._put({"type": "http.response.body", "body": b"", "more_body": False})

    def while_connected(self, items: Generator[T, None, None]) -> Generator[T, None, None]:
        """`items`, closed (its clean-up run) and ClientGone raised as soon as the client leaves."""
        with contextlib.closing(items):
            for item in items:
                if self.gone.is_set():
                    raise ClientGone
                yield item


async def relay(route: Callable[[Exchange], None], receive: Receive, send: Send, limiter: anyio.CapacityLimiter) -> None:
    """Run `route` on a worker thread and send its reply as it is made; tell it when the client hangs up."""
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    exchange = Exchange(asyncio.get_running_loop(), outbox)
    finished: Message = {"type": "route.finished"}  # not ASGI's: marks the end of the route's messages

    async def work() -> None:
        try:
            # Not abandoned on cancellation: the route's clean-up (its slot, the model lock) must run to its end.
            await anyio.to_thread.run_sync(route, exchange, limiter=limiter)
        finally:
            outbox.put_nowait(finished)

    async def watch() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:  # the client left, or this reply is over or cancelled: either way no more is wanted
            exchange.gone.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        tasks.start_soon(work)
        while (message := await outbox.get()) is not finished:
            await send(message)
        tasks.cancel_scope.cancel()


class RelayedReply(Response):
    """The reply `route` makes on a worker thread of `limiter`'s, as a Starlette endpoint returns it."""

    def __init__(self, route: Callable[[Exchange], None], limiter: anyio.CapacityLimiter) -> None:
        super().__init__()
        self.route, self.limiter = route, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await relay(self.route, receive, send, self.limiter)
