"""Text files into token shards: read in batches, encoded on worker threads, written in order.

Text is streamed through the tokenizer about a megabyte at a time, with a bounded
number of batches in flight, and appended to the current shard, so memory stays
flat however big the corpus or its lines are. Every finished shard is journaled,
so a stream that was cut off resumes after its last finished shard and ends with
the bytes an uninterrupted run writes. `gptkit.data.dataset` decides what to
tokenize and where; this module does the tokenizing.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gptkit.data.corpus import iter_file_pieces
from gptkit.data.shards import TOKEN_DTYPE, Journal, Position, Shard, ShardWriter

ENCODE_THREADS = 2
# Batches handed to the tokenizer before the oldest is written out; their
# token lists are what memory use scales with (see tokenize_stream).
MAX_BATCHES_IN_FLIGHT = 2

Progress = Callable[[int, int], None]


class TokenizerLike(Protocol):
    """What `prepare_dataset` needs from a tokenizer (`gptkit.data.tokenizer.Tokenizer` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode_batch(self, texts: list[str], num_threads: int = ...) -> Sequence[Sequence[int]]: ...


@dataclass(frozen=True)
class _Batch:
    """Texts for one tokenizer call; `ends[i]` marks a text that ends its document."""

    texts: list[str]
    ends: list[bool]
    n_bytes: int  # source bytes consumed, for progress
    stop: Position  # where in the stream's files the batch ends


def _batches(files: Sequence[Path], start: Position, chunk_bytes: int) -> Iterator[_Batch]:
    """The stream's text from `start` on, in batches of at least `chunk_bytes` source bytes.

    Batches end only where a piece ends, and the pieces from a piece's end
    on are the same whether reading started there or earlier, so the
    batches after any batch boundary are the same in a resumed run.
    """
    # Several pieces per batch so every encoding thread has work even when
    # the batch is one big file.
    piece_bytes = max(2, chunk_bytes // (4 * ENCODE_THREADS))
    texts: list[str] = []
    ends: list[bool] = []
    n_bytes = 0
    for index in range(start[0], len(files)):
        offset = start[1] if index == start[0] else 0
        for piece in iter_file_pieces(files[index], piece_bytes, offset):
            texts.append(piece.text)
            ends.append(piece.last)
            n_bytes += piece.end - offset
            offset = piece.end
            if n_bytes >= chunk_bytes:
                yield _Batch(texts, ends, n_bytes, (index + 1, 0) if piece.last else (index, piece.end))
                texts, ends, n_bytes = [], [], 0
    if texts:
        yield _Batch(texts, ends, n_bytes, (len(files), 0))


def tokenize_stream(
    writer: ShardWriter,
    files: Sequence[Path],
    start: Position,
    tokenizer: TokenizerLike,
    chunk_bytes: int,
    on_bytes: Callable[[int], None],
) -> list[Shard]:
    """Tokenize `files` from `start` into `writer`, each document followed by EOT; returns the new shards.

    Each batch is encoded on a worker thread (tiktoken's Rust core releases
    the GIL and splits the batch over ENCODE_THREADS threads of its own).
    While one batch encodes, the next is read and the previous one converted
    and written here, so Python-side work overlaps the encoding, and while
    one batch's last long text finishes on one core the next batch keeps the
    other core busy. At most MAX_BATCHES_IN_FLIGHT batches are in flight.
    """
    eot = np.array([tokenizer.eot_id], dtype=TOKEN_DTYPE)
    in_flight: deque[tuple[Future[Sequence[Sequence[int]]], _Batch]] = deque()

    def write_oldest() -> None:
        future, batch = in_flight.popleft()
        parts: list[np.ndarray] = []
        for ids, end in zip(future.result(), batch.ends, strict=True):
            # fromiter converts a list of ints about twice as fast as asarray.
            parts.append(
                np.fromiter(ids, dtype=TOKEN_DTYPE, count=len(ids))
                if isinstance(ids, list)
                else np.asarray(ids, dtype=TOKEN_DTYPE)
            )
            if end:
                parts.append(eot)
        writer.write(np.concatenate(parts), batch.stop)
        on_bytes(batch.n_bytes)

    try:
        with ThreadPoolExecutor(max_workers=MAX_BATCHES_IN_FLIGHT) as pool:
            for batch in _batches(files, start, chunk_bytes):
                in_flight.append((pool.submit(tokenizer.encode_batch, batch.texts, num_threads=ENCODE_THREADS), batch))
                if len(in_flight) >= MAX_BATCHES_IN_FLIGHT:
                    write_oldest()
            while in_flight:
                write_oldest()
        return writer.finish((len(files), 0))
    except BaseException:
        writer.discard()
        raise


def _position_bytes(sizes: Sequence[int], position: Position) -> int:
    """Source bytes before `position` in files of these sizes."""
    return sum(sizes[: position[0]]) + position[1]


def tokenize_streams(
    out_dir: Path,
    streams: dict[str, list[Path]],
    sizes: dict[Path, int],
    journal: Journal,
    tokenizer: TokenizerLike,
    chunk_bytes: int,
    shard_tokens: int,
    progress: Progress | None,
) -> tuple[dict[str, list[Shard]], int]:
    """Every stream's shards, continuing from the journal's; and how many bytes were already done."""
    total_bytes = sum(sizes.values())
    resumed = {name: list(journal.streams.get(name, [])) for name in streams}
    resume_at = {name: shards[-1].stop if shards else (0, 0) for name, shards in resumed.items()}
    done = resumed_bytes = sum(
        _position_bytes([sizes[f] for f in streams[name]], resume_at[name]) for name in streams
    )
    if progress is not None:
        progress(done, total_bytes)

    def on_bytes(n: int) -> None:
        nonlocal done
        done = min(done + n, total_bytes)
        if progress is not None:
            progress(done, total_bytes)

    shards: dict[str, list[Shard]] = {}
    for name, stream_files in streams.items():
        if resume_at[name] == (len(stream_files), 0) and resumed[name]:
            shards[name] = resumed[name]  # finished before the interruption
            continue
        writer = ShardWriter(
            out_dir, name, shard_tokens, first_index=len(resumed[name]), on_shard=functools.partial(journal.add, name)
        )
        new = tokenize_stream(writer, stream_files, resume_at[name], tokenizer, chunk_bytes, on_bytes)
        shards[name] = resumed[name] + new
    return shards, resumed_bytes
