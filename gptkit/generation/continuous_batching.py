"""Continuous batching: sequences that join and leave one running batch, decoded together.

Each sequence is prefilled alone (batch 1, a plain `KVCache`) and its keys and
values are copied into a free row of a `RaggedKVCache`. From then on every step
is one forward pass for all rows, each at its own position: a new sequence joins
at the step after its prefill, a finished or cancelled one leaves at once (the
last row moves into its place, so the rows in use stay a slice).

A sequence is sampled with its own samplers and its own `torch.Generator`, and
sees its own history only, so it gets the tokens it would get alone with the
same seed. A model decoded as `generate`, `chat` and `serve` decode it (accelerated,
on the CPU) gets each row's logits alone bit for bit: gptkit's streaming products
sum a row in one order whatever the batch, and its attention takes each row alone.
That holds up to as many rows as those products take (`gemv_rows`: on an AVX-512
BF16 CPU 16 in float32, 8 or 16 in bfloat16, 32 in int8; the server runs 8).
Through PyTorch's own kernels (CUDA, a model not accelerated, a larger batch) a
matrix product of several rows may sum in another order than one of one row, and
the logits then differ in the last float bits.

A row whose window fills behaves as `generate_tokens` does: the oldest token is
dropped and the row's cache rebuilt from the remaining window, by a prefill of
that row alone copied back into its place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from gptkit.generation.samplers import Sampler, draw
from gptkit.kernels import flat_decoder
from gptkit.kernels.decode_step import StockDecoder
from gptkit.layers.kv_cache import KVCache
from gptkit.model.gpt import GPTModel

Forward = Callable[..., torch.Tensor]


@dataclass(eq=False)
class BatchedSequence:
    """One prompt's generation in the batch: its history, its sampling, its state."""

    history: torch.Tensor  # (1, prompt + max_new_tokens): every token so far, allocated once
    length: int  # how much of `history` is filled
    max_new_tokens: int
    samplers: Sequence[Sampler]
    generator: torch.Generator | None
    eos_id: int | None
    logits: torch.Tensor = field(init=False, repr=False)  # (1, vocab): the next token's
    generated: int = 0
    finished: bool = False
    cancelled: bool = False  # set from any thread; the batch drops the sequence at its next step

    @property
    def tokens(self) -> torch.Tensor:
        return self.history[:, : self.length]

    def cancel(self) -> None:
        self.cancelled = True


class ContinuousBatcher:
    """Up to `max_rows` sequences decoded together, one forward pass per step."""

    def __init__(self, model: GPTModel, max_rows: int, *, forward: Forward | None = None, decoder: StockDecoder | None | bool = True) -> None:
        self.model = model
        self.forward: Forward = forward if forward is not None else model
        # The flat one-token step where the model allows it (True: find it; None or False: call the model).
        self.decoder = flat_decoder(model) if decoder is True else (decoder or None)
        self.window = model.cfg.context_length
        self.cache = model.make_ragged_kv_cache(max_rows, self.window)
        self.rows: list[BatchedSequence] = []  # row i of the cache is rows[i]

    @property
    def has_room(self) -> bool:
        return len(self.rows) < self.cache.max_rows

    @torch.inference_mode()
    def add(
        self, prompt: Sequence[int], max_new_tokens: int, samplers: Sequence[Sampler], *,
        generator: torch.Generator | None = None, eos_id: int | None = None,
    ) -> BatchedSequence:
        """Prefill `prompt` alone and give it a row; it takes part from the next `step` on."""
        if not prompt:
            raise ValueError("every prompt needs at least one token (start an empty one with <|endoftext|>)")
        device = self.cache.layers[0].keys.device
        history = torch.empty(1, len(prompt) + max_new_tokens, dtype=torch.long, device=device)
        history[0, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
        seq = BatchedSequence(history, len(prompt), max_new_tokens, samplers, generator, eos_id)
        if max_new_tokens == 0:  # nothing to generate: it never takes a row
            seq.finished = True
            return seq
        if not self.has_room:
            raise ValueError(f"the batch has all its {self.cache.max_rows} rows in use")
        alone = self._prefill(seq)
        self.cache.add(alone)
        self.rows.append(seq)
        return seq

    def _prefill(self, seq: BatchedSequence) -> KVCache:
        """The last `window` tokens of `seq` run alone: its logits set, its keys and values returned."""
        # One spare slot, as generate_tokens allocates: the same buffer shapes, the same arithmetic.
        alone = self.model.make_kv_cache(1, self.window + 1)
        seq.logits = self.forward(seq.tokens[:, -self.window :], kv_cache=alone, last_only=True)[:, -1]
        return alone

    @torch.inference_mode()
    def step(self) -> list[tuple[BatchedSequence, int]]:
        """Drop cancelled rows, draw one token for each other row, then compute the logits after it.

        Returns each row's (sequence, token); a sequence that ended with it has `finished` set
        and has left the batch.
        """
        self._drop([seq for seq in self.rows if seq.cancelled])
        drawn = [(seq, int(draw(seq.logits, seq.tokens, seq.samplers, seq.generator))) for seq in self.rows]
        self.advance(dict(drawn))
        return drawn

    @torch.inference_mode()
    def advance(self, tokens: Mapping[BatchedSequence, int]) -> None:
        """Append each row's next token; rows that end leave, the others get new logits.

        Every row needs a token but a cancelled one (it leaves now: `cancel` may come from
        another thread at any moment, so a token drawn for it is ignored).
        """
        self._drop([seq for seq in self.rows if seq.cancelled])
        if any(seq not in tokens for seq in self.rows):
            raise ValueError("advance takes one token for every sequence in the batch")
        for seq in self.rows:
            token = tokens[seq]
            seq.history[0, seq.length] = token
            seq.length += 1
            seq.generated += 1
            seq.finished = token == seq.eos_id or seq.generated == seq.max_new_tokens or seq.cancelled
        self._drop([seq for seq in self.rows if seq.finished])
        if not self.rows:
            return
        # Rows whose window is full cannot take another position: they go to the end and are rebuilt apart.
        full = [seq for seq, held in zip(self.rows, self.cache.length.tolist()) if held == self.window]
        for seq in full:
            self._swap(self.rows.index(seq), len(self.rows) - 1 - full.index(seq))
        stepping = len(self.rows) - len(full)
        if stepping:
            self._decode(stepping)
        for seq in full:
            self.cache.set_row(self.rows.index(seq), self._prefill(seq))

    def _decode(self, n: int) -> None:
        """One forward pass of the first `n` rows' newest tokens, each at its own position."""
        with self.cache.first_rows(n):
            idx = torch.stack([seq.history[0, seq.length - 1 : seq.length] for seq in self.rows[:n]])
            positions = self.cache.length.clone()  # the cache's own lengths advance during the pass
            if self.decoder is not None:
                logits = self.decoder(idx, positions, self.cache)
            else:
                logits = self.forward(idx, start_pos=positions, kv_cache=self.cache, last_only=True)
        for i, seq in enumerate(self.rows[:n]):
            seq.logits = logits[i : i + 1, -1]

    def _swap(self, a: int, b: int) -> None:
        if a != b:
            self.cache.swap(a, b)
            self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    def _drop(self, leaving: list[BatchedSequence]) -> None:
        # Highest row first: the row moved into a freed place is then always one that stays.
        for row in sorted((self.rows.index(seq) for seq in leaving), reverse=True):
            self.cache.remove(row)
            last = self.rows.pop()
            if row < len(self.rows):
                self.rows[row] = last
