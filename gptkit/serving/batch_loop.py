"""The server's decoding thread: every running generation in one batch, one forward pass per step.

`BatchLoop.submit` hands a prompt to the loop and returns a `Ticket`, from which
the caller's thread reads the tokens as they are made. The loop thread owns the
model: it prefills new prompts, which join the batch at the next step
(`gptkit.generation.continuous_batching`), and steps the batch while anything
runs. Between two steps it prefills at most `PREFILLS_PER_STEP` prompts: a prefill
reads all the weights, so eight clients arriving together, prefilled back to back,
would hold every running stream for eight prefills; one at a time, a stream waits
at most one prefill between two of its tokens (what a new request pays instead is
a step per request ahead of it before its first token).

Idle for `IDLE_SECONDS` the loop ends, and the next submission starts it again:
one long-lived thread under load (a thread per burst of requests would spread the
model's allocations over glibc's per-thread heaps, which keep what is freed), none
left behind by a service no longer used.

It never waits for a reader: each ticket's queue is unbounded (a generation
makes at most its max_tokens), so a slow client does not stall the others. A
cancelled ticket (a client that went away, a stop string reached) leaves the
batch at the next step. `lock` is held around each prefill and step; anything
else that runs the model (scoring) takes it too.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gptkit.generation.continuous_batching import BatchedSequence, ContinuousBatcher
from gptkit.generation.samplers import Sampler
from gptkit.model.gpt import GPTModel

_END = object()  # the ticket's last item: no more tokens
IDLE_SECONDS = 1.0
PREFILLS_PER_STEP = 1


class Ticket:
    """One generation's tokens, read by the thread that submitted it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.sequence: BatchedSequence | None = None  # set by the loop once the prompt is prefilled
        self.cancelled = False

    def next(self) -> int | None:
        """The next token, waiting for it; None once the generation has ended. Re-raises the loop's error."""
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # asked again, still the end
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop the generation; its row is freed at the loop's next step."""
        self.cancelled = True
        if self.sequence is not None:
            self.sequence.cancel()

    def _put(self, item: object) -> None:
        self._queue.put(item)


@dataclass
class _Request:
    prompt: list[int]
    max_new_tokens: int
    samplers: Sequence[Sampler]
    generator: torch.Generator | None
    eos_id: int | None
    ticket: Ticket


class BatchLoop:
    """Up to `max_rows` generations decoded together by one background thread."""

    def __init__(self, model: GPTModel, max_rows: int) -> None:
        self.model = model
        self.lock = threading.Lock()  # held by whoever runs the model
        self.max_rows = max_rows
        self._batcher: ContinuousBatcher | None = None  # made on first use: its cache holds max_rows full windows
        self._pending: deque[_Request] = deque()
        self._running: dict[BatchedSequence, Ticket] = {}
        self._state = threading.Condition()  # guards _pending and _thread; notified on each submission
        self._thread: threading.Thread | None = None

    def submit(
        self, prompt: Sequence[int], max_new_tokens: int, samplers: Sequence[Sampler], *,
        generator: torch.Generator | None = None, eos_id: int | None = None,
    ) -> Ticket:
        ticket = Ticket()
        with self._state:
            self._pending.append(_Request(list(prompt), max_new_tokens, samplers, generator, eos_id, ticket))
            self._state.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gptkit-batch", daemon=True)
                self._thread.start()
        return ticket

    def _run(self) -> None:
        if self._batcher is None:
            self._batcher = ContinuousBatcher(self.model, self.max_rows)
        batcher = self._batcher
        while True:
            with self._state:
                if not self._running and not self._state.wait_for(lambda: self._pending, timeout=IDLE_SECONDS):
                    self._thread = None
                    return
                free = batcher.cache.max_rows - len(batcher.rows)
                joining = deque(self._pending.popleft() for _ in range(min(len(self._pending), free, PREFILLS_PER_STEP)))
            try:
                while joining:
                    self._admit(batcher, joining.popleft())
                self._step(batcher)
            except Exception as err:  # noqa: BLE001 - every waiting reader must hear of it
                for request in joining:
                    request.ticket._put(err)
                self._fail_all(err)
                batcher = self._batcher = ContinuousBatcher(self.model, self.max_rows)

    def _admit(self, batcher: ContinuousBatcher, request: _Request) -> None:
        ticket = request.ticket
        if ticket.cancelled:
            ticket._put(_END)
            return
        try:
            with self.lock:
                seq = batcher.add(
                    request.prompt, request.max_new_tokens, request.samplers, generator=request.generator, eos_id=request.eos_id,
                )
        except Exception as err:  # noqa: BLE001 - this request's failure, handed to its reader
            ticket._put(err)
            return
        if seq.finished:  # nothing to generate
            ticket._put(_END)
            return
        ticket.sequence = seq
        if ticket.cancelled:  # cancelled while it was prefilled
            seq.cancel()
        self._running[seq] = ticket

    def _step(self, batcher: ContinuousBatcher) -> None:
        if not self._running:
            return
        with self.lock:
            made = batcher.step()
        for seq, token in made:
            self._running[seq]._put(token)
        still = set(batcher.rows)
        for seq in [s for s in self._running if s not in still]:  # ended or cancelled
            self._running.pop(seq)._put(_END)

    def _fail_all(self, err: Exception) -> None:
        """A step failed: every running generation ends with the error (the caller starts a fresh batch)."""
        for ticket in self._running.values():
            ticket._put(err)
        self._running.clear()
