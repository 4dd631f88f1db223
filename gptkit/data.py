"""Tokens on disk and the batches drawn from them.

`prepare_dataset` turns a text source into two flat uint16 token files (train
and val) plus a JSON manifest, in a cache directory keyed by everything that
decides the tokens. Text is streamed through the tokenizer about a megabyte
at a time and appended to the output, so memory stays flat however big the
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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from gptkit.atomic import fsync_dir
from gptkit.errors import DataError

# Bump whenever the bytes written for the same inputs would change (EOT
# placement, dtype, split rule), so old caches are not silently reused.
FORMAT_VERSION = 1
TOKEN_DTYPE = np.uint16
# About 1 MB of text per tokenizer call: large enough that per-call overhead
# vanishes, small enough that the token lists in flight (about 36 bytes per
# token as Python ints) stay in the tens of megabytes.
DEFAULT_CHUNK_BYTES = 1 << 20
ENCODE_THREADS = 2
# Batches handed to the tokenizer before the oldest is written out; their
# token lists are what memory use scales with (see _write_tokens).
MAX_BATCHES_IN_FLIGHT = 2

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
    """What `prepare_dataset` did. MB are 10**6 bytes of source text.

    `seconds` covers reading, hashing and (unless `cached`) tokenizing, so on
    a cache hit `mb_per_s` is the speed of checking the cache.
    """

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
    """The train and val token files of a prepared source, and how they were made."""

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

    def __enter__(self) -> _AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        # After a commit the temporary name is gone, so this only cleans up
        # files left unfinished by an error or an uncommitted exit.
        self.discard()


def _write_tokens(
    out: BinaryIO, files: Sequence[Path], tokenizer: TokenizerLike, chunk_bytes: int, on_bytes: Callable[[int], None]
) -> int:
    """Tokenize `files` into `out`, each document followed by EOT; returns the token count.

    Text goes to the tokenizer in batches of about `chunk_bytes` characters,
    each encoded on a worker thread. While one batch encodes, the previous
    one is converted and written here, so Python-side work overlaps the
    tokenizer's GIL-free encoding, and while one batch's last long text
    finishes on one core the next batch keeps the other core busy.
    """
    eot = np.array([tokenizer.eot_id], dtype=TOKEN_DTYPE)
    # Several pieces per batch so every encoding thread has work even when
    # the batch is one big file.
    piece_chars = max(1, chunk_bytes // (4 * ENCODE_THREADS))
    texts: list[str] = []
    ends: list[bool] = []
    in_flight: deque[tuple[Future[Sequence[Sequence[int]]], list[bool], int]] = deque()
    written = 0

    def write_oldest() -> None:
        nonlocal written
        future, batch_ends, n_bytes = in_flight.popleft()
        parts: list[np.ndarray] = []
        for ids, end in zip(future.result(), batch_ends, strict=True):
            # fromiter converts a list of ints about twice as fast as asarray.
            parts.append(
                np.fromiter(ids, dtype=TOKEN_DTYPE, count=len(ids))
                if isinstance(ids, list)
                else np.asarray(ids, dtype=TOKEN_DTYPE)
            )
            if end:
                parts.append(eot)
        arr = np.concatenate(parts)
        out.write(memoryview(arr))
        written += arr.size
        on_bytes(n_bytes)

    def submit(pool: ThreadPoolExecutor) -> None:
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        future = pool.submit(tokenizer.encode_batch, list(texts), num_threads=ENCODE_THREADS)
        in_flight.append((future, list(ends), n_bytes))
        texts.clear()
        ends.clear()
        if len(in_flight) >= MAX_BATCHES_IN_FLIGHT:
            write_oldest()

    with ThreadPoolExecutor(max_workers=MAX_BATCHES_IN_FLIGHT) as pool:
        pending = 0
        for path in files:
            pieces = iter_pieces(path, piece_chars)
            piece = next(pieces, None)
            while piece is not None:
                # One piece of look-ahead tells which piece ends the document.
                following = next(pieces, None)
                texts.append(piece)
                ends.append(following is None)
                pending += len(piece)
                if pending >= chunk_bytes:
                    submit(pool)
                    pending = 0
                piece = following
        if texts:
            submit(pool)
        while in_flight:
            write_oldest()
    return written


def _copy_range(src: BinaryIO, start: int, stop: int, dst: BinaryIO) -> None:
    # Plain reads rather than a memmap: mapped pages would count towards RSS.
    src.seek(start)
    left = stop - start
    while left > 0:
        block = src.read(min(left, 1 << 20))
        dst.write(block)
        left -= len(block)


def _cache_key(
    tokenizer: TokenizerLike, split: str, val_fraction: float, names: Sequence[str], infos: Sequence[FileInfo]
) -> str:
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
    return files, Path(os.path.commonpath([str(f.absolute().parent) for f in files]))


def _no_text(source: str | None) -> DataError:
    return DataError(f"data source {source or 'stdlib'!r} contains no text; expected at least one non-empty file")


def _tokenize_splits(
    out_dir: Path,
    train_files: list[Path],
    val_files: list[Path],
    by_position: float,
    tokenizer: TokenizerLike,
    chunk_bytes: int,
    on_bytes: Callable[[int], None],
) -> tuple[int, int]:
    """Write train.bin and val.bin atomically; returns their token counts.

    With `by_position` > 0 the last that fraction of train's tokens is moved
    to val (`val_files` is then empty).
    """
    with _AtomicFile(out_dir / "train.bin") as train, _AtomicFile(out_dir / "val.bin") as val:
        n_train = _write_tokens(train.file, train_files, tokenizer, chunk_bytes, on_bytes)
        n_val = _write_tokens(val.file, val_files, tokenizer, chunk_bytes, on_bytes)
        if by_position > 0 and n_train >= 2:
            n_val = min(max(round(n_train * by_position), 1), n_train - 1)
            n_train -= n_val
            size = np.dtype(TOKEN_DTYPE).itemsize
            train.file.flush()
            _copy_range(train.file, n_train * size, (n_train + n_val) * size, val.file)
            train.file.truncate(n_train * size)
        if n_train + n_val > 0:  # else the caller reports an empty corpus
            train.commit()
            val.commit()
    return n_train, n_val


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    # Written last: its presence is what marks the token files as complete.
    with _AtomicFile(path) as writer:
        writer.file.write(json.dumps(manifest, indent=1).encode())
        writer.commit()
    fsync_dir(path.parent)


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
    A second call with the same inputs reuses the cached files. Processes
    preparing the same data at once each write their own temporary files and
    rename them, so they only duplicate work. `progress(bytes_done,
    bytes_total)` is called after each batch of text is written.
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
        raise _no_text(source)
    split = "position" if len(infos) == 1 else "file"
    key = _cache_key(tokenizer, split, val_fraction, [relative_name(i.path, root) for i in infos], infos)
    out_dir = cache_dir / "tokens" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', tokenizer.name)}-{key[:16]}"
    manifest_path = out_dir / "manifest.json"

    cached = _load_cached(manifest_path, key)
    if cached is not None:
        seconds = time.perf_counter() - start
        stats = PrepareStats(total_bytes, cached[0].n_tokens, cached[1].n_tokens, len(infos), seconds, True)
        return PreparedData(cached[0], cached[1], stats, manifest_path)

    if split == "file":
        train_files, val_files = split_files([i.path for i in infos], val_fraction, root=root)
    else:
        train_files, val_files = [infos[0].path], []
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done = min(done + n, total_bytes)
        if progress is not None:
            progress(done, total_bytes)

    out_dir.mkdir(parents=True, exist_ok=True)
    by_position = val_fraction if split == "position" else 0.0
    n_train, n_val = _tokenize_splits(out_dir, train_files, val_files, by_position, tokenizer, chunk_bytes, on_bytes)
    if n_train + n_val == 0:  # files holding nothing but a byte-order mark
        raise _no_text(source)
    _write_manifest(
        manifest_path,
        {
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
        },
    )
    if progress is not None:
        progress(total_bytes, total_bytes)
    stats = PrepareStats(total_bytes, n_train, n_val, len(infos), time.perf_counter() - start, False)
    return PreparedData(
        TokenFile(out_dir / "train.bin", n_train), TokenFile(out_dir / "val.bin", n_val), stats, manifest_path
    )


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
        """Start indices of the batch's windows, in [0, n_tokens - context_length - 1]."""
        # SHAKE-256 is fixed by a standard, whereas NumPy and PyTorch do not
        # promise the same random stream across releases: a run resumed after
        # an upgrade still sees the batches the original would have. The
        # modulo bias of 64-bit draws is below 2**-32 for any real corpus.
        tag = f"gptkit-batch:{self.seed}:{step}:{micro_step}:{rank}".encode()
        draws = np.frombuffer(hashlib.shake_256(tag).digest(8 * self.batch_size), dtype="<u8")
        return (draws % np.uint64(self.tokens.n_tokens - self.context_length)).astype(np.int64)

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
