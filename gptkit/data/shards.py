"""Token shards: flat uint16 token files, written one bounded shard at a time, read as one sequence.

A prepared corpus is a list of shard files per split. Each shard is written
under a temporary name and renamed into place only when complete, and a
`Journal` records every finished shard together with the source position it
ends at, so a preparation killed at any moment resumes after its last
finished shard instead of starting over.

`ShardedTokens` reads several shards as if they were one file: a slice may
run across a shard boundary and comes back as one array. Shard boundaries are
an accident of the shard size, not document boundaries, so this keeps the
windows a sampler draws exactly those it would draw from one big file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gptkit.atomic import fsync_dir, write_text_atomic

TOKEN_DTYPE = np.uint16
TOKEN_BYTES = np.dtype(TOKEN_DTYPE).itemsize

# Where in a list of source files a shard ends: (file index, byte offset),
# normalised so that the end of file i is (i + 1, 0).
Position = tuple[int, int]

# `gptkit.atomic` and `ShardWriter` name temporary files ".{name}.{pid}.tmp".
_TMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


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


@dataclass
class ShardedTokens:
    """Several token files read as one sequence of `n_tokens` ids.

    Has what a sampler uses of a `TokenFile`: `n_tokens`, `len()`, `path`
    (here the manifest that lists the shards) and `tokens`, which is the
    object itself: `tokens[a:b]` returns that stretch as an array, joining
    shards where it crosses a boundary; integer arrays index it too.
    """

    shards: tuple[TokenFile, ...]
    path: Path
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shards = tuple(s for s in self.shards if s.n_tokens > 0)
        self._starts = np.cumsum([0] + [s.n_tokens for s in self.shards]).tolist()

    @property
    def n_tokens(self) -> int:
        return self._starts[-1]

    @property
    def tokens(self) -> ShardedTokens:
        return self

    def __len__(self) -> int:
        return self.n_tokens

    def _locate(self, index: int) -> int:
        return bisect_right(self._starts, index) - 1

    def __getitem__(self, index: int | slice | np.ndarray) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n_tokens)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.n_tokens if index < 0 else 0)
            if not 0 <= i < self.n_tokens:
                raise IndexError(f"token index {index} out of range for {self.n_tokens} tokens")
            shard = self._locate(i)
            return self.shards[shard].tokens[i - self._starts[shard]]
        return self._gather(np.asarray(index))

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=TOKEN_DTYPE)
        parts = []
        shard = self._locate(start)
        while start < stop:
            base = self._starts[shard]
            end = min(stop, self._starts[shard + 1])
            parts.append(self.shards[shard].tokens[start - base : end - base])
            start, shard = end, shard + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _gather(self, index: np.ndarray) -> np.ndarray:
        if index.dtype.kind not in "iu":
            raise IndexError(f"token indices must be integers, got {index.dtype}")
        flat = index.astype(np.int64).ravel()
        flat = np.where(flat < 0, flat + self.n_tokens, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_tokens):
            raise IndexError(f"token index out of range for {self.n_tokens} tokens")
        which = np.searchsorted(np.asarray(self._starts), flat, side="right") - 1
        out = np.empty(flat.shape, dtype=TOKEN_DTYPE)
        for shard in np.unique(which):
            mask = which == shard
            out[mask] = self.shards[shard].tokens[flat[mask] - self._starts[shard]]
        return out.reshape(index.shape)


TokenSequence = TokenFile | ShardedTokens


@dataclass(frozen=True)
class Shard:
    """A finished shard file: its name, token count, SHA-256 and where in the source it ends."""

    file: str
    tokens: int
    sha256: str
    stop: Position = (0, 0)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "tokens": self.tokens, "sha256": self.sha256, "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        stop = data.get("stop", (0, 0))
        return cls(str(data["file"]), int(data["tokens"]), str(data["sha256"]), (int(stop[0]), int(stop[1])))

    def is_on_disk(self, directory: Path) -> bool:
        """Whether the file is there with the size its token count implies."""
        try:
            return (directory / self.file).stat().st_size == self.tokens * TOKEN_BYTES
        except OSError:
            return False


def open_tokens(directory: Path, shards: Sequence[Shard], manifest_path: Path) -> TokenSequence:
    """One shard as a plain `TokenFile` (what a small corpus always was), several as `ShardedTokens`."""
    files = [TokenFile(directory / s.file, s.tokens) for s in shards]
    return files[0] if len(files) == 1 else ShardedTokens(tuple(files), manifest_path)


class ShardWriter:
    """Writes one stream of tokens as `{prefix}-{index:05d}.bin` files of at most `shard_tokens` ids.

    Tokens arrive a batch at a time, each with the source position it ends
    at; a shard closes before a batch that would take it past `shard_tokens`
    (so a shard is larger only when one batch is), which puts every shard
    boundary at a position a resumed run can start reading from.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        shard_tokens: int,
        first_index: int = 0,
        on_shard: Callable[[Shard], None] | None = None,
    ) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be at least 1, got {shard_tokens}")
        self.directory = directory
        self.prefix = prefix
        self.shard_tokens = shard_tokens
        self.index = first_index
        self.on_shard = on_shard
        self.shards: list[Shard] = []
        self._file: BinaryIO | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._hash = hashlib.sha256()
        self._stop: Position = (0, 0)

    def _name(self) -> str:
        return f"{self.prefix}-{self.index:05d}.bin"

    def _open(self) -> None:
        self._tmp = self.directory / f".{self._name()}.{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 -- held across write() calls, closed in _close/discard
        self._count = 0
        self._hash = hashlib.sha256()

    def _close(self) -> None:
        assert self._file is not None and self._tmp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.directory / self._name())
        fsync_dir(self.directory)
        shard = Shard(self._name(), self._count, self._hash.hexdigest(), self._stop)
        self.shards.append(shard)
        self.index += 1
        if self.on_shard is not None:
            self.on_shard(shard)

    def write(self, tokens: np.ndarray, stop: Position) -> None:
        """Append a batch of tokens that ends at source position `stop`."""
        if self._file is not None and self._count + tokens.size > self.shard_tokens:
            self._close()
        if self._file is None:
            self._open()
        assert self._file is not None
        data = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).data.cast("B")
        self._file.write(data)
        self._hash.update(data)
        self._count += tokens.size
        self._stop = stop

    def finish(self, stop: Position) -> list[Shard]:
        """Close the last shard (an empty one if the stream had none at all); returns the new shards."""
        if self._file is None and self.index == 0:
            self._open()
        if self._file is not None:
            self._stop = stop
            self._close()
        return self.shards

    def discard(self) -> None:
        """Drop the unfinished shard (after an error or interrupt); finished ones stay."""
        if self._file is not None and self._tmp is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)


class Journal:
    """The finished shards of each stream of an unfinished preparation, saved atomically after each one.

    `header` holds everything the shard layout depends on (cache key, shard
    size, batch size); a journal written under another header is ignored.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.streams: dict[str, list[Shard]] = {}

    @classmethod
    def load(cls, path: Path, header: dict[str, Any]) -> Journal:
        """The journal at `path`, keeping of each stream only the shards still intact on disk, in order."""
        journal = cls(path, header)
        try:
            data = json.loads(path.read_text())
            if data.get("header") != header:
                return journal
            for name, shards in data["streams"].items():
                kept: list[Shard] = []
                for shard in map(Shard.from_json, shards):
                    if not shard.is_on_disk(path.parent):
                        break  # later shards start where this one ended, so they go too
                    kept.append(shard)
                journal.streams[str(name)] = kept
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return cls(path, header)
        return journal

    def add(self, stream: str, shard: Shard) -> None:
        self.streams.setdefault(stream, []).append(shard)
        payload = {"header": self.header, "streams": {k: [s.to_json() for s in v] for k, v in self.streams.items()}}
        write_text_atomic(self.path, json.dumps(payload, indent=1))


def remove_stale_tmp(directory: Path) -> None:
    """Delete temporary files left in `directory` by processes that no longer run (killed mid-write)."""
    for path in directory.iterdir():
        m = _TMP_NAME.match(path.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # alive but someone else's: leave it


def _read_tokens(path: Path, start: int, stop: int, block_tokens: int = 1 << 19) -> Iterator[np.ndarray]:
    """Yield tokens [start, stop) of a shard file in blocks, with plain reads (mapped pages would count as RSS)."""
    with open(path, "rb") as f:
        f.seek(start * TOKEN_BYTES)
        while start < stop:
            n = min(block_tokens, stop - start)
            yield np.frombuffer(f.read(n * TOKEN_BYTES), dtype=TOKEN_DTYPE)
            start += n


def split_off_tail(directory: Path, shards: Sequence[Shard], n_tail: int, prefix: str) -> tuple[list[Shard], list[Shard]]:
    """Split a stream's shards into (head, tail), the tail holding the last `n_tail` tokens.

    The shard the cut falls in is split in two: its second part is copied
    into a new shard `{prefix}-00000.bin` that starts the tail, and the shard
    is truncated to its first part. Shards wholly after the cut join the
    tail as they are. With `n_tail` 0 the tail is one empty shard.
    """
    n_head = sum(s.tokens for s in shards) - n_tail
    head: list[Shard] = []
    tail: list[Shard] = []
    seen = 0
    for shard in shards:
        if seen + shard.tokens <= n_head:
            head.append(shard)
        elif seen >= n_head:
            tail.append(shard)
        else:
            cut = n_head - seen
            path = directory / shard.file
            writer = ShardWriter(directory, prefix, shard_tokens=shard.tokens)
            for block in _read_tokens(path, cut, shard.tokens):
                writer.write(block, shard.stop)
            tail.extend(writer.finish(shard.stop))
            with open(path, "r+b") as f:
                f.truncate(cut * TOKEN_BYTES)
                f.flush()
                os.fsync(f.fileno())
            digest = hashlib.sha256()
            for block in _read_tokens(path, 0, cut):
                digest.update(block.data.cast("B"))
            head.append(Shard(shard.file, cut, digest.hexdigest(), shard.stop))
        seen += shard.tokens
    if not tail:
        tail = ShardWriter(directory, prefix, shard_tokens=1).finish((0, 0))
    return head, tail
