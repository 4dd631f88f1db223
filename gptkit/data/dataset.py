"""Tokens on disk and the batches drawn from them.

`prepare_dataset` turns a text source into train and val token shards (flat
uint16 files, see `gptkit.data.shards`) plus a JSON manifest, in a cache directory
keyed by everything that decides the tokens. `gptkit.data.tokenize` streams the
text through the tokenizer with flat memory and journals each finished shard, so
a preparation that is killed resumes after its last finished shard and ends
with the same bytes an uninterrupted run writes. `gptkit.data.batches` then draws
the training and validation windows from the memory-mapped tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptkit.atomic import write_text_atomic
from gptkit.data.corpus import (
    FileInfo,
    default_corpus_files,
    relative_name,
    resolve_source,
    scan_file,
    split_files,
    stdlib_root,
)
from gptkit.data.shards import (
    TOKEN_DTYPE,
    Journal,
    Shard,
    TokenSequence,
    open_tokens,
    remove_stale_tmp,
    split_off_tail,
)
from gptkit.data.tokenize import Progress, TokenizerLike, tokenize_streams
from gptkit.errors import DataError

__all__ = ["PrepareStats", "PreparedData", "prepare_dataset"]

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
    name = source or "stdlib"
    return DataError(f"data source '{name}' contains no text; expected at least one non-empty file")


def _val_tokens_by_position(n_tokens: int, val_fraction: float) -> int:
    """How many of a single file's last tokens form val: the fraction, at least one, never all."""
    if val_fraction <= 0 or n_tokens < 2:
        return 0
    return min(max(round(n_tokens * val_fraction), 1), n_tokens - 1)


def _check_arguments(tokenizer: TokenizerLike, val_fraction: float, chunk_bytes: int, shard_tokens: int) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_bytes < 1 or shard_tokens < 1:
        raise DataError(f"chunk_bytes and shard_tokens must be at least 1, got {chunk_bytes} and {shard_tokens}")
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DataError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens; "
            f"token files store uint16 ids, so at most {np.iinfo(TOKEN_DTYPE).max + 1}"
        )


def _streams(infos: Sequence[FileInfo], split: str, val_fraction: float, root: Path) -> tuple[dict[str, list[Path]], list[Path], list[Path]]:
    """The token streams to write, by name, and the source files of train and val."""
    if split == "file":
        train_files, val_files = split_files([i.path for i in infos], val_fraction, root=root)
        return {"train": train_files, "val": val_files}, train_files, val_files
    return {"text": [infos[0].path]}, [infos[0].path], []


def _manifest(
    key: str, tokenizer: TokenizerLike, split: str, val_fraction: float, shard_tokens: int, root: Path, text_bytes: int,
    shards: dict[str, list[Shard]], sources: dict[str, list[Path]],
) -> dict[str, Any]:
    def entry(name: str) -> dict[str, Any]:
        return {
            "tokens": sum(s.tokens for s in shards[name]),
            "shards": [{"file": s.file, "tokens": s.tokens, "sha256": s.sha256} for s in shards[name]],
            "sources": [relative_name(p, root) for p in sources[name]],
        }

    return {
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
        "text_bytes": text_bytes,
        "train": entry("train"),
        "val": entry("val"),
    }


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
    _check_arguments(tokenizer, val_fraction, chunk_bytes, shard_tokens)
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

    streams, train_files, val_files = _streams(infos, split, val_fraction, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    journal = Journal.load(
        out_dir / "progress.json", {"key": key, "chunk_bytes": chunk_bytes, "shard_tokens": shard_tokens}
    )
    sizes = {info.path: info.size for info in infos}
    shards, resumed_bytes = tokenize_streams(out_dir, streams, sizes, journal, tokenizer, chunk_bytes, shard_tokens, progress)
    if split == "position":
        n_val = _val_tokens_by_position(sum(s.tokens for s in shards["text"]), val_fraction)
        shards["train"], shards["val"] = split_off_tail(out_dir, shards["text"], n_val, "val")
    n_train, n_val = (sum(s.tokens for s in shards[name]) for name in ("train", "val"))
    if n_train + n_val == 0:  # files holding nothing but a byte-order mark
        raise _no_text(source)

    manifest = _manifest(
        key, tokenizer, split, val_fraction, shard_tokens, root, total_bytes, shards, {"train": train_files, "val": val_files}
    )
    # Written last: its presence is what marks the shards as complete.
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
