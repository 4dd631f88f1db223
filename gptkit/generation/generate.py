"""Text generation with a key/value cache.

The prompt is run through the model once (prefill); after that each new token
is a single-position forward pass against the cached keys and values.

Prompts of different lengths decode as one ragged batch
(`gptkit.generation.continuous_batching`): each row prefilled alone, then one
forward pass per step for all rows, each at its own position. Rows are still
sampled group by group (the rows of one prompt length together, in order of
first appearance), so a shared generator draws what it drew when each length
was a batch of its own. Prompts of one length are one plain batch with one
cache, and so is a compiled generation (its graphs are for uniform positions):
there, each length group decodes as a batch of its own, in lock step. Either
way callers see one (batch, 1) tensor per step.

When a row's tokens outgrow the context window the oldest ones are dropped and
the cache is rebuilt from the remaining window: every remaining token attended
to the dropped one and sits at a new position, so no cached key is still valid.
Generation can thus go on indefinitely, at the cost of one full-window forward
pass per token once the window is full.

Each one-token step of a model built from the stock GPT-2 parts runs through
`gptkit.kernels.decode_step.StockDecoder`: the same arithmetic without module calls, which
on a CPU makes a GPT-2 124M step about a tenth faster; other models are called as
they are.

`compile=True` runs the model through `gptkit.generation.compiled.CompiledForward`: compiled
with dynamic shapes, so varying prompt lengths and the growing cache reuse a few
graphs instead of compiling one per length.

`TextStream` turns tokens back into text as they arrive, releasing only what is
final: whole UTF-8 characters, and nothing that may be the start of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from gptkit.generation.compiled import CompiledForward
from gptkit.generation.continuous_batching import BatchedSequence, ContinuousBatcher
from gptkit.generation.samplers import Sampler, draw
from gptkit.kernels import flat_decoder
from gptkit.kernels.decode_step import StockDecoder
from gptkit.model.gpt import GPTModel

Prompts = torch.Tensor | Sequence[Sequence[int]]
Forward = Callable[..., torch.Tensor]


class _Group:
    """Rows whose prompts have one length: one batch, one cache, one history."""

    def __init__(
        self, model: GPTModel, forward: Forward, decoder: StockDecoder | None, rows: list[int], prompt: torch.Tensor, max_new_tokens: int, use_cache: bool
    ) -> None:
        self.forward = forward  # the model itself, or its compiled forward
        self.decoder = decoder  # the same one-token step without module calls, where the model allows
        self.window = model.cfg.context_length
        self.rows = torch.tensor(rows, device=prompt.device)
        n, self.length = prompt.shape
        # Every token so far, allocated once: samplers read it, and a rebuilt window comes from it.
        self.history = torch.empty(n, self.length + max_new_tokens, dtype=torch.long, device=prompt.device)
        self.history[:, : self.length] = prompt
        # One spare slot, never filled: the used part of the buffer is then never all of it,
        # which torch.compile would treat as a case (and a graph) of its own.
        self.cache = model.make_kv_cache(n, self.window + 1) if use_cache else None
        self.logits = self._forward_window()

    @property
    def tokens(self) -> torch.Tensor:
        return self.history[:, : self.length]

    def _forward_window(self) -> torch.Tensor:
        """Next-token logits from the last `window` tokens, computed afresh (refilling the cache)."""
        if self.cache is not None:
            self.cache.reset()
        return self.forward(self.tokens[:, -self.window :], kv_cache=self.cache, last_only=True)[:, -1]

    def append(self, nxt: torch.Tensor) -> None:
        """Add one token per row, shape (n, 1), and compute the logits after it."""
        self.history[:, self.length : self.length + 1] = nxt
        self.length += 1
        if self.cache is None or self.cache.length == self.window:
            self.logits = self._forward_window()
        elif self.decoder is not None:
            self.logits = self.decoder(nxt, self.cache.length, self.cache)[:, -1]
        else:
            self.logits = self.forward(nxt, start_pos=self.cache.length, kv_cache=self.cache, last_only=True)[:, -1]


class _UniformGroups:
    """Each length group a batch of its own, with its own cache."""

    def __init__(self, groups: list[_Group]) -> None:
        self.groups = groups

    def advance(self, live: list[_Group], out: torch.Tensor) -> None:
        for group in live:
            group.append(out[group.rows])


class _RaggedGroup:
    """The rows of one prompt length, as sequences of a shared ragged batch."""

    def __init__(self, rows: list[int], seqs: list[BatchedSequence], device: torch.device) -> None:
        self.rows = torch.tensor(rows, device=device)
        self.seqs = seqs

    @property
    def logits(self) -> torch.Tensor:
        return torch.cat([seq.logits for seq in self.seqs])

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat([seq.tokens for seq in self.seqs])


class _RaggedGroups:
    """Every row in one `ContinuousBatcher`: one forward pass per step; groups only for drawing."""

    def __init__(self, model: GPTModel, decoder: StockDecoder | None, groups: list[tuple[list[int], torch.Tensor]], max_new_tokens: int) -> None:
        self.batcher = ContinuousBatcher(model, sum(len(rows) for rows, _ in groups), decoder=decoder)
        self.groups = [
            _RaggedGroup(rows, [self.batcher.add(ids.tolist(), max_new_tokens, ()) for ids in prompts], prompts.device)
            for rows, prompts in groups
        ]

    def advance(self, live: list[_RaggedGroup], out: torch.Tensor) -> None:
        # A group whose rows have all ended leaves the batch; the rows of the others all step.
        stepping = {id(group) for group in live}
        for group in self.groups:
            if id(group) not in stepping:
                for seq in group.seqs:
                    seq.cancel()
        self.batcher.advance({seq: int(out[row, 0]) for group in live for row, seq in zip(group.rows.tolist(), group.seqs)})


def _group_by_length(prompt: Prompts, device: torch.device) -> list[tuple[list[int], torch.Tensor]]:
    if isinstance(prompt, torch.Tensor):
        if prompt.ndim != 2:
            raise ValueError(f"prompt must be a (batch, seq) tensor of token ids, got shape {tuple(prompt.shape)}")
        groups = [(list(range(prompt.shape[0])), prompt)]
    else:
        rows_by_length: dict[int, list[int]] = {}
        for row, ids in enumerate(prompt):
            rows_by_length.setdefault(len(ids), []).append(row)
        groups = [
            (rows, torch.tensor([list(prompt[r]) for r in rows], dtype=torch.long, device=device))
            for rows in rows_by_length.values()
        ]
    if any(ids.shape[1] == 0 for _, ids in groups):
        raise ValueError("every prompt needs at least one token (start an empty one with <|endoftext|>)")
    return groups


@torch.inference_mode()
def generate_tokens(
    model: GPTModel,
    prompt: Prompts,
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    compile: bool | str = False,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids, shape (batch, 1), one step at a time.

    `prompt` is a (batch, seq) tensor or one list of ids per row, of any lengths.
    A row that has produced `eos_id` yields `eos_id` from then on; generation ends
    when every row has, or after `max_new_tokens` steps. `use_cache=False`
    recomputes the whole window at every step (for checking and benchmarking).
    `compile=True` runs the model through torch.compile (see `gptkit.generation.compiled`):
    the first call of each kind compiles, later ones reuse the graphs. A string
    names the torch.compile backend ("inductor" is what True means).
    """
    was_training = model.training
    model.eval()
    forward: Forward = CompiledForward(model, "inductor" if compile is True else compile) if compile else model
    decoder = flat_decoder(model) if use_cache and not compile else None
    try:
        device = prompt.device if isinstance(prompt, torch.Tensor) else next(model.parameters()).device
        by_length = _group_by_length(prompt, device)
        batch = sum(len(rows) for rows, _ in by_length)
        groups: _UniformGroups | _RaggedGroups
        if len(by_length) > 1 and use_cache and not compile and max_new_tokens > 0:
            groups = _RaggedGroups(model, decoder, by_length, max_new_tokens)
        else:
            groups = _UniformGroups([_Group(model, forward, decoder, rows, ids, max_new_tokens, use_cache) for rows, ids in by_length])
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            out = torch.full((batch, 1), -1 if eos_id is None else eos_id, dtype=torch.long, device=device)
            live = [g for g in groups.groups if not bool(finished[g.rows].all())]
            for group in live:
                out[group.rows] = draw(group.logits, group.tokens, samplers, generator)
            if eos_id is not None:
                out[finished] = eos_id
                finished |= out.squeeze(-1) == eos_id
            yield out
            if step + 1 == max_new_tokens or bool(finished.all()):
                return
            groups.advance(live, out)
    finally:
        model.train(was_training)


def generate(
    model: GPTModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    compile: bool | str = False,
) -> torch.Tensor:
    """Prompt followed by up to `max_new_tokens` generated ids (rows that ended early padded with `eos_id`)."""
    new = list(generate_tokens(
        model, prompt, max_new_tokens, samplers, generator=generator, eos_id=eos_id, use_cache=use_cache, compile=compile,
    ))
    return torch.cat([prompt, *new], dim=1) if new else prompt


# --- text ----------------------------------------------------------------------


class TextStream:
    """One row's generated text, released piece by piece as it becomes final.

    Two things hold text back: a UTF-8 character whose bytes are split across
    tokens (GPT-2's byte-level BPE does that to most non-Latin text and emoji),
    and an ending that could be the start of a stop string. The stream ends at
    the end-of-text token or at the first stop string, which is cut off.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.text = ""  # decoded so far; once stopped, cut just before the stop string
        self.released = 0  # how many characters of `text` have been returned
        self.done = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Take one generated token; return the text that became final (often "")."""
        if self.done:
            return ""
        if token == self.tokenizer.eot_id:
            return self.close()
        self.text += self._utf8.decode(self.tokenizer.decode_bytes([token]))
        return self._release()

    def close(self) -> str:
        """No more tokens: return everything held back (a cut-off character becomes U+FFFD)."""
        if self.done:
            return ""
        self.text += self._utf8.decode(b"", final=True)
        out = self._release() + self._flush()  # a stop string may still complete; else no ending is one
        self.done = True
        return out

    def _flush(self) -> str:
        rest = self.text[self.released :]
        self.released = len(self.text)
        return rest

    def _release(self) -> str:
        if self.done:
            return ""
        # A stop string cannot begin inside released text: its start would have been held back.
        hits = [i for s in self.stop if (i := self.text.find(s, self.released)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.done = True
            return self._flush()
        end = len(self.text) - self._held_back()
        out = self.text[self.released : end]
        self.released = end
        return out

    def _held_back(self) -> int:
        """Length of the longest unreleased ending of `text` that begins some stop string."""
        pending = len(self.text) - self.released
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, pending), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a text prompt; an empty one starts from <|endoftext|>, as training documents do."""
    if not isinstance(prompt, str):
        return list(prompt)
    return tokenizer.encode(prompt, allow_special=True) if prompt else [tokenizer.eot_id]


def stream_text(
    model: GPTModel,
    tokenizer: Any,
    prompt: str | Sequence[int],
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    stop: Sequence[str] = (),
    generator: torch.Generator | None = None,
    compile: bool | str = False,
) -> Iterator[str]:
    """The continuation of one prompt, as pieces of text as soon as they are final."""
    stream = TextStream(tokenizer, stop)
    ids = [encode_prompt(tokenizer, prompt)]
    for step in generate_tokens(model, ids, max_new_tokens, samplers, generator=generator, eos_id=tokenizer.eot_id, compile=compile):
        piece = stream.push(int(step[0, 0]))
        if piece:
            yield piece
        if stream.done:
            return
    piece = stream.close()
    if piece:
        yield piece


def generate_text(
    model: GPTModel,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    stop: Sequence[str] = (),
    generator: torch.Generator | None = None,
    compile: bool | str = False,
) -> list[str]:
    """The continuation of each prompt (without the prompt, the stop string or <|endoftext|>)."""
    streams = [TextStream(tokenizer, stop) for _ in prompts]
    texts = [""] * len(prompts)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    for step in generate_tokens(model, ids, max_new_tokens, samplers, generator=generator, eos_id=tokenizer.eot_id, compile=compile):
        for row, token in enumerate(step[:, 0].tolist()):
            texts[row] += streams[row].push(token)
        if all(s.done for s in streams):
            break
    return [text + s.close() for text, s in zip(texts, streams)]
