"""Tokens on disk and the batches drawn from them.

`prepare_dataset` turns a text source into train and val token shards (flat
uint16 files, see `gptkit.data.shards`) plus a JSON manifest, in a cache directory
keyed by everything that decides the tokens. Text is streamed through the
tokenizer about a megabyte at a time, with a bounded number of batches in
flight, and appended to the current shard, so memory stays flat however big
the corpus or its lines are. Every finished shard is journaled, so a
preparation that is killed resumes after its last finished shard and ends
with the same bytes an uninterrupted run writes. `gptkit.data.batches` then draws
the training and validation windows from the memory-mapped tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gptkit.atomic import write_text_atomic
from gptkit.data.corpus import (
    FileInfo,
    default_corpus_files,
    iter_file_pieces,
    relative_name,
    resolve_source,
    scan_file,
    split_files,
    stdlib_root,
)
from gptkit.data.shards import (
    TOKEN_DTYPE,
    Journal,
    Position,
    Shard,
    ShardWriter,
    TokenFile,
    TokenSequence,
    open_tokens,
    remove_stale_tmp,
    split_off_tail,
)
from gptkit.errors import DataError

__all__ = ["BatchSampler", "PrepareStats", "PreparedData", "TokenFile", "fixed_batches", "prepare_dataset"]

# Bump whenever the bytes written for the same inputs would change (EOT
# placement, dtype, split rule, file layout), so old caches are not silently
# reused. 2: sharded files and a manifest listing them.
FORMAT_VERSION = 2
# About 1 MB of text per tokenizer call: large enough that per-call overhead
# vanishes, small enough that the token lists in flight (about 36 bytes per
# token as Python ints) stay in the tens of megabytes.
DEFAULT_CHUNK_BYTES = 1 << 20
# 100M tokens (200 MB) per shard: a 5 GB corpus is a dozen files, and what a
# killed run loses is at most one shard's worth of tokenizing.
DEFAULT_SHARD_TOKENS = 100_000_000
ENCODE_THREADS = 2
# Batches handed to the tokenizer before the oldest is written out; their
# token lists are what memory use scales with (see _tokenize_stream).
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
class PrepareStats:
    """What `prepare_dataset` did. MB are 10**6 bytes of source text.

    `seconds` covers reading, hashing and (unless `cached`) tokenizing, so on
    a cache hit `mb_per_s` is the speed of checking the cache.
    `resumed_bytes` is the source text an interrupted earlier run had
    already tokenized into finished shards, which this call did not redo.
    """

    text_bytes: int
    train_tokens: int
    val_tokens: int
    n_files: int
    seconds: float
    cached: bool
    n_shards: int
    resumed_bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.train_tokens + self.val_tokens

    @property
    def text_mb(self) -> float:
        return self.text_bytes / 1e6

    @property
    def mb_per_s(self) -> float:
        return self.text_mb / self.seconds if self.seconds > 0 else float("inf")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class PreparedData:
    """The train and val tokens of a prepared source, and how they were made.

    Each split is a `TokenFile` when it fits one shard (any corpus under
    `shard_tokens`, the default one included) and a `ShardedTokens` otherwise.
    """

    train: TokenSequence
    val: TokenSequence
    stats: PrepareStats
    manifest_path: Path


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


def _tokenize_stream(
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


def _cache_key(
    tokenizer: TokenizerLike, split: str, val_fraction: float, names: Sequence[str], infos: Sequence[FileInfo]
) -> str:
    # Content hashes, not mtimes: a checkout or copy changes every mtime
    # without changing the tokens, and an edit within the mtime resolution
    # that keeps the size would be missed. Reading and hashing runs at disk
    # speed, around a hundred times faster than tokenizing, so it is cheap
    # insurance even for a corpus of many gigabytes.
    blob = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "split": split,
            "val_fraction": val_fraction,
            "files": [[n, i.size, i.sha256] for n, i in zip(names, infos)],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cached(manifest_path: Path, key: str) -> tuple[TokenSequence, TokenSequence, int] | None:
    """The (train, val, shard count) a complete earlier run left, or None if anything is off."""
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["format_version"] != FORMAT_VERSION or manifest["key"] != key:
            return None
        splits = []
        n_shards = 0
        for split in ("train", "val"):
            entry = manifest[split]
            shards = [Shard.from_json(s) for s in entry["shards"]]
            if not shards or sum(s.tokens for s in shards) != entry["tokens"]:
                return None
            if not all(s.is_on_disk(manifest_path.parent) for s in shards):
                return None
            splits.append(open_tokens(manifest_path.parent, shards, manifest_path))
            n_shards += len(shards)
        return splits[0], splits[1], n_shards
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _resolve(source: str | None, cache_dir: Path) -> tuple[list[Path], Path]:
    """The source's files and the root their split names are relative to."""
    if source is None:
        return default_corpus_files(), stdlib_root()
    files = resolve_source(source, cache_dir / "downloads")
    return files, Path(os.path.commonpath([str(f.absolute().parent) for f in files]))


def _no_text(source: str | None) -> DataError:
    return DataError(f"data source {source or 'stdlib'!r} contains no text; expected at least one non-empty file")


def _position_bytes(sizes: Sequence[int], position: Position) -> int:
    """Source bytes before `position` in files of these sizes."""
    return sum(sizes[: position[0]]) + position[1]


def _val_tokens_by_position(n_tokens: int, val_fraction: float) -> int:
    """How many of a single file's last tokens form val: the fraction, at least one, never all."""
    if val_fraction <= 0 or n_tokens < 2:
        return 0
    return min(max(round(n_tokens * val_fraction), 1), n_tokens - 1)


def prepare_dataset(
    source: str | None,
    tokenizer: TokenizerLike,
    cache_dir: Path,
    val_fraction: float = 0.05,
    progress: Progress | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> PreparedData:
    """Tokenize `source` (None: the standard library corpus) into cached train/val token shards.

    Several files are split by file (see `corpus.split_files`); a single file
    is split by position, the last `val_fraction` of its tokens going to val.
    Each split is written as shards of at most about `shard_tokens` tokens.
    A second call with the same inputs reuses the cached shards (whatever
    `shard_tokens` made them); a call after an interrupted one keeps the
    shards it finished, as long as `chunk_bytes` and `shard_tokens` are the
    same. Processes preparing the same data at once each write their own
    temporary files and rename them, so they only duplicate work.
    `progress(bytes_done, bytes_total)` is called when tokenizing starts and
    after each batch of text is written.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_bytes < 1 or shard_tokens < 1:
        raise DataError(f"chunk_bytes and shard_tokens must be at least 1, got {chunk_bytes} and {shard_tokens}")
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DataError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens; "
            f"token files store uint16 ids, so at most {np.iinfo(TOKEN_DTYPE).max + 1}"
        )
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    files, root = _resolve(source, cache_dir)
    # Empty files hold no document; dropping them keeps them out of the split.
    infos = [info for info in map(scan_file, files) if info.size > 0]
    total_bytes = sum(info.size for info in infos)
    if total_bytes == 0:
        raise _no_text(source)
    split = "position" if len(infos) == 1 else "file"
    key = _cache_key(tokenizer, split, val_fraction, [relative_name(i.path, root) for i in infos], infos)
    out_dir = cache_dir / "tokens" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', tokenizer.name)}-{key[:16]}"
    manifest_path = out_dir / "manifest.json"

    cached = _load_cached(manifest_path, key)
    if cached is not None:
        train, val, n_shards = cached
        seconds = time.perf_counter() - start
        stats = PrepareStats(total_bytes, train.n_tokens, val.n_tokens, len(infos), seconds, True, n_shards)
        return PreparedData(train, val, stats, manifest_path)

    if split == "file":
        train_files, val_files = split_files([i.path for i in infos], val_fraction, root=root)
        streams = {"train": train_files, "val": val_files}
    else:
        train_files, val_files = [infos[0].path], []
        streams = {"text": train_files}
    sizes = {info.path: info.size for info in infos}

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    journal = Journal.load(
        out_dir / "progress.json", {"key": key, "chunk_bytes": chunk_bytes, "shard_tokens": shard_tokens}
    )
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
        new = _tokenize_stream(writer, stream_files, resume_at[name], tokenizer, chunk_bytes, on_bytes)
        shards[name] = resumed[name] + new

    if split == "position":
        n_val = _val_tokens_by_position(sum(s.tokens for s in shards["text"]), val_fraction)
        shards["train"], shards["val"] = split_off_tail(out_dir, shards["text"], n_val, "val")
    n_train, n_val = (sum(s.tokens for s in shards[name]) for name in ("train", "val"))
    if n_train + n_val == 0:  # files holding nothing but a byte-order mark
        raise _no_text(source)

    def entry(name: str, sources: Sequence[Path]) -> dict[str, Any]:
        return {
            "tokens": sum(s.tokens for s in shards[name]),
            "shards": [{"file": s.file, "tokens": s.tokens, "sha256": s.sha256} for s in shards[name]],
            "sources": [relative_name(p, root) for p in sources],
        }

    # Written last: its presence is what marks the shards as complete.
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "split": split,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "root": str(root),
        "text_bytes": total_bytes,
        "train": entry("train", train_files),
        "val": entry("val", val_files),
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
    journal.path.unlink(missing_ok=True)
    if progress is not None:
        progress(total_bytes, total_bytes)
    n_shards = len(shards["train"]) + len(shards["val"])
    seconds = time.perf_counter() - start
    stats = PrepareStats(total_bytes, n_train, n_val, len(infos), seconds, False, n_shards, resumed_bytes)
    train = open_tokens(out_dir, shards["train"], manifest_path)
    val = open_tokens(out_dir, shards["val"], manifest_path)
    return PreparedData(train, val, stats, manifest_path)
