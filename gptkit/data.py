"""Tokens on disk and the batches drawn from them.

`prepare_dataset` turns a text source into two flat uint16 token files (train
and val) plus a JSON manifest, in a cache directory keyed by everything that
decides the tokens. Text is streamed through the tokenizer a few megabytes at
a time and appended to the output, so memory stays flat however big the
corpus is. `BatchSampler` then draws random windows from a memory-mapped token
file, as a pure function of (seed, step, micro_step, rank), so a resumed or
distributed run sees exactly the batches it should.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from gptkit.corpus import (
    FileInfo,
    default_corpus_files,
    iter_pieces,
    relative_name,
    resolve_source,
    scan_file,
    split_files,
    stdlib_root,
)
from gptkit.errors import DataError

# Bump whenever the bytes written for the same inputs would change (EOT
# placement, dtype, split rule), so old caches are not silently reused.
FORMAT_VERSION = 1
TOKEN_DTYPE = np.uint16
DEFAULT_CHUNK_BYTES = 8 << 20
ENCODE_THREADS = 2

Progress = Callable[[int, int], None]


class TokenizerLike(Protocol):
    """What `prepare_dataset` needs from a tokenizer (`gptkit.tokenizer.Tokenizer` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode_batch(self, texts: list[str], num_threads: int = ...) -> Sequence[Sequence[int]]: ...


@dataclass
class TokenFile:
    """A flat file of uint16 token ids, memory-mapped read-only on first use."""

    path: Path
    n_tokens: int
    _array: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tokens(self) -> np.ndarray:
        if self._array is None:
            if self.n_tokens == 0:
                self._array = np.zeros(0, dtype=TOKEN_DTYPE)  # mmap cannot map an empty file
            else:
                self._array = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r", shape=(self.n_tokens,))
        return self._array

    def __len__(self) -> int:
        return self.n_tokens

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its whole contents; a worker process should
        # map the file itself instead.
        return {"path": self.path, "n_tokens": self.n_tokens, "_array": None}


@dataclass(frozen=True)
class PrepareStats:
    """What `prepare_dataset` did. MB are 10**6 bytes of source text."""

    text_bytes: int
    train_tokens: int
    val_tokens: int
    n_files: int
    seconds: float
    cached: bool

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
    train: TokenFile
    val: TokenFile
    stats: PrepareStats
    manifest_path: Path


class _AtomicFile:
    """A file written under a temporary name and renamed into place only when complete.

    A run killed mid-write leaves only a `.tmp` file, never a truncated file
    under the final name that a later run would take for a finished one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.file: BinaryIO = open(self.tmp, "w+b")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable; not possible on every OS.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tokens(
    out: BinaryIO, files: Sequence[Path], tokenizer: TokenizerLike, chunk_bytes: int, on_bytes: Callable[[int], None]
) -> int:
    """Tokenize `files` into `out`, each document followed by EOT; returns the token count.

    Text goes to the tokenizer in batches of about `chunk_bytes` characters.
    One batch is encoded on a worker thread while the previous one is
    converted and written here, so that Python-side work overlaps the
    tokenizer's GIL-free encoding.
    """
    eot = np.array([tokenizer.eot_id], dtype=TOKEN_DTYPE)
    # Several pieces per batch so every encoding thread has work even when
    # the batch is one big file.
    piece_chars = max(1, chunk_bytes // (4 * ENCODE_THREADS))
    texts: list[str] = []
    ends: list[bool] = []
    pending = 0
    written = 0
    in_flight: tuple[Future[Sequence[Sequence[int]]], list[bool], int] | None = None

    def write(batch: tuple[Future[Sequence[Sequence[int]]], list[bool], int]) -> None:
        nonlocal written
        future, batch_ends, n_bytes = batch
        parts: list[np.ndarray] = []
        for ids, end in zip(future.result(), batch_ends, strict=True):
            parts.append(np.asarray(ids, dtype=TOKEN_DTYPE))
            if end:
                parts.append(eot)
        arr = np.concatenate(parts)
        out.write(memoryview(arr))
        written += arr.size
        on_bytes(n_bytes)

    def submit(pool: ThreadPoolExecutor) -> None:
        nonlocal pending, in_flight
        if not texts:
            return
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        future = pool.submit(tokenizer.encode_batch, list(texts), num_threads=ENCODE_THREADS)
        if in_flight is not None:
            write(in_flight)
        in_flight = (future, list(ends), n_bytes)
        texts.clear()
        ends.clear()
        pending = 0

    with ThreadPoolExecutor(max_workers=1) as pool:
        for path in files:
            previous: str | None = None
            # One piece of look-ahead tells which piece ends the document.
            for piece in iter_pieces(path, piece_chars):
                if previous is not None:
                    texts.append(previous)
                    ends.append(False)
                    pending += len(previous)
                previous = piece
                if pending >= chunk_bytes:
                    submit(pool)
            if previous is not None:
                texts.append(previous)
                ends.append(True)
                pending += len(previous)
            if pending >= chunk_bytes:
                submit(pool)
        submit(pool)
        if in_flight is not None:
            write(in_flight)
    return written


def _copy_range(src: BinaryIO, start: int, stop: int, dst: BinaryIO) -> None:
    # Plain reads rather than a memmap: mapped pages would count towards RSS.
    src.seek(start)
    left = stop - start
    while left > 0:
        block = src.read(min(left, 1 << 20))
        dst.write(block)
        left -= len(block)


def _cache_key(tokenizer: TokenizerLike, split: str, val_fraction: float, names: Sequence[str], infos: Sequence[FileInfo]) -> str:
    # Content hashes, not mtimes: a checkout or copy changes every mtime
    # without changing the tokens, and an edit within the mtime resolution
    # that keeps the size would be missed. Hashing runs at disk speed, around
    # a hundred times faster than tokenizing, so it is cheap insurance.
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


def _load_cached(manifest_path: Path, key: str) -> tuple[TokenFile, TokenFile] | None:
    """The token files a complete earlier run left, or None if anything is off."""
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["format_version"] != FORMAT_VERSION or manifest["key"] != key:
            return None
        files = []
        for split in ("train", "val"):
            entry = manifest[split]
            path = manifest_path.parent / entry["file"]
            if path.stat().st_size != entry["tokens"] * np.dtype(TOKEN_DTYPE).itemsize:
                return None
            files.append(TokenFile(path, int(entry["tokens"])))
        return files[0], files[1]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resolve(source: str | None, cache_dir: Path) -> tuple[list[Path], Path]:
    """The source's files and the root their split names are relative to."""
    if source is None:
        return default_corpus_files(), stdlib_root()
    files = resolve_source(source, cache_dir / "downloads")
    return files, Path(os.path.commonpath([str(f.resolve().parent) for f in files]))


def prepare_dataset(
    source: str | None,
    tokenizer: TokenizerLike,
    cache_dir: Path,
    val_fraction: float = 0.05,
    progress: Progress | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> PreparedData:
    """Tokenize `source` (None: the standard library corpus) into cached train/val token files.

    Several files are split by file (see `corpus.split_files`); a single file
    is split by position, the last `val_fraction` of its tokens going to val.
    A second call with the same inputs reuses the cached files.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
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
        raise DataError(f"data source {source or 'stdlib'!r} contains no text; expected at least one non-empty file")
    split = "position" if len(infos) == 1 else "file"
    names = [relative_name(info.path, root) for info in infos]
    key = _cache_key(tokenizer, split, val_fraction, names, infos)

    out_dir = cache_dir / "tokens" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', tokenizer.name)}-{key[:16]}"
    manifest_path = out_dir / "manifest.json"
    cached = _load_cached(manifest_path, key)
    if cached is not None:
        stats = PrepareStats(total_bytes, cached[0].n_tokens, cached[1].n_tokens, len(infos), time.perf_counter() - start, True)
        return PreparedData(cached[0], cached[1], stats, manifest_path)

    out_dir.mkdir(parents=True, exist_ok=True)
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done = min(done + n, total_bytes)
        if progress is not None:
            progress(done, total_bytes)

    if split == "file":
        train_files, val_files = split_files([i.path for i in infos], val_fraction, root=root)
    else:
        train_files, val_files = [infos[0].path], []
    train, val = _AtomicFile(out_dir / "train.bin"), _AtomicFile(out_dir / "val.bin")
    try:
        n_train = _write_tokens(train.file, train_files, tokenizer, chunk_bytes, on_bytes)
        n_val = _write_tokens(val.file, val_files, tokenizer, chunk_bytes, on_bytes)
        if split == "position" and val_fraction > 0 and n_train >= 2:
            n_val = min(max(round(n_train * val_fraction), 1), n_train - 1)
            n_train -= n_val
            size = np.dtype(TOKEN_DTYPE).itemsize
            train.file.flush()
            _copy_range(train.file, n_train * size, (n_train + n_val) * size, val.file)
            train.file.truncate(n_train * size)
        train.commit()
        val.commit()
    except BaseException:
        train.discard()
        val.discard()
        raise

    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "split": split,
        "val_fraction": val_fraction,
        "root": str(root),
        "text_bytes": total_bytes,
        "train": {"file": "train.bin", "tokens": n_train, "sources": [relative_name(p, root) for p in train_files]},
        "val": {"file": "val.bin", "tokens": n_val, "sources": [relative_name(p, root) for p in val_files]},
    }
    # The manifest goes last: its presence is what marks the token files complete.
    writer = _AtomicFile(manifest_path)
    try:
        writer.file.write(json.dumps(manifest, indent=1).encode())
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    _fsync_dir(out_dir)
    if progress is not None:
        progress(total_bytes, total_bytes)
    stats = PrepareStats(total_bytes, n_train, n_val, len(infos), time.perf_counter() - start, False)
    return PreparedData(TokenFile(out_dir / "train.bin", n_train), TokenFile(out_dir / "val.bin", n_val), stats, manifest_path)


class BatchSampler:
    """Random (x, y) windows from a token file, fixed by (seed, step, micro_step, rank).

    No sampler state is carried from one batch to the next, so resuming at
    step N needs nothing but N, and each rank of a distributed run draws its
    own windows.
    """

    def __init__(self, tokens: TokenFile, batch_size: int, context_length: int, seed: int) -> None:
        if batch_size < 1 or context_length < 1:
            raise DataError(
                f"batch_size and context_length must be at least 1, got {batch_size} and {context_length}"
            )
        if seed < 0:
            raise DataError(f"data seed must be a non-negative integer, got {seed}")
        needed = context_length + 1
        if tokens.n_tokens < needed:
            raise DataError(
                f"token file {tokens.path} has {tokens.n_tokens} tokens; a window of context_length "
                f"{context_length} needs at least {needed}. Use more text or a shorter context."
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.seed = seed

    def offsets(self, step: int, micro_step: int = 0, rank: int = 0) -> np.ndarray:
        """Start indices of the batch's windows."""
        # SeedSequence hashes the whole tuple, so neighbouring steps or ranks
        # get unrelated streams rather than shifted copies of one stream.
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, micro_step, rank]))
        return rng.integers(0, self.tokens.n_tokens - self.context_length, size=self.batch_size)

    def batch(self, step: int, micro_step: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (batch_size, context_length); y is x shifted by one."""
        data = self.tokens.tokens
        span = self.context_length + 1
        # Contiguous slices read sequential pages of the memmap.
        windows = np.stack([data[s : s + span] for s in self.offsets(step, micro_step, rank)]).astype(np.int64)
        w = torch.from_numpy(windows)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def fixed_batches(
    tokens: TokenFile, batch_size: int, context_length: int, n_batches: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `n_batches` validation batches every time they are asked for."""
    sampler = BatchSampler(tokens, batch_size, context_length, seed)
    return [sampler.batch(step=i) for i in range(n_batches)]
