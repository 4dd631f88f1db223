"""Tokenizers learned from the training text: fitted when a run starts, kept in its directory.

GPT-2's tokenizer is fixed; a character-level or a corpus-trained BPE one is
made from the run's own data. Such a tokenizer says so with `learned = True`
and has `fit(texts)`, `to_json()` and `from_json(text)`. A new run fits it on
the corpus `data.path` names (all of it, as nanoGPT's character-level recipe
builds its vocabulary: a character seen only in the validation text still gets
an id) and writes it to `RUN/tokenizer.json` beside `config.json`; a resumed
run, `generate`, `chat`, `serve` and `evaluate` read it back from there, so the
ids never change under a trained model. Its `name` carries a hash of what it
learned, so the token cache of one vocabulary is never read with another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptkit.data.corpus import default_corpus_files, iter_pieces, resolve_source
from gptkit.errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
FIT_PIECE_CHARS = 1 << 20  # text is streamed to `fit` in pieces of about this many characters


def is_learned(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "learned", False))


def corpus_texts(source: str | None, cache_dir: Path | None = None) -> Iterator[str]:
    """The text of every file `data.path` names (None: the standard-library corpus), in pieces."""
    files = default_corpus_files() if source is None else resolve_source(source, cache_dir)
    for path in files:
        yield from iter_pieces(path, FIT_PIECE_CHARS)


def save_tokenizer(tokenizer: Any, run_dir: Path) -> None:
    from gptkit.atomic import write_text_atomic

    write_text_atomic(run_dir / TOKENIZER_FILE, tokenizer.to_json())


def run_dir_of(path: Path) -> Path:
    """The run directory that `path` (a run, or one of its `checkpoints/step_N` folders) belongs to."""
    return path.parent.parent if path.parent.name == "checkpoints" else path


def load_tokenizer_state(tokenizer: Any, run_dir: Path) -> Any:
    """A learned tokenizer given back what it learned for the run in `run_dir` (others pass through)."""
    if not is_learned(tokenizer):
        return tokenizer
    path = run_dir / TOKENIZER_FILE
    try:
        tokenizer.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; a run with data.tokenizer '{tokenizer.kind}' keeps its vocabulary there") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a {tokenizer.kind} tokenizer file ({type(err).__name__}: {err})") from None
    return tokenizer
