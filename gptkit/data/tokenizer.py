"""The GPT-2 byte-level BPE tokenizer, built entirely from files shipped with gptkit.

The BPE ranks live in `gptkit/data/assets/gpt2.tiktoken` rather than being fetched on
first use: training boxes are often offline, tiktoken's default loader writes a
cache directory and reaches for a URL that has moved before, and a silently
different vocabulary would make every checkpoint useless. So the file ships with
the package and its SHA-256 is checked before a single line is trusted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

# Only the regex string is taken from tiktoken_ext; importing it does no I/O
# (tests/test_tokenizer.py checks that with sockets blocked).
from tiktoken_ext.openai_public import r50k_pat_str

from gptkit.errors import GptkitError
from gptkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from gptkit.registry import Registry

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2_VOCAB_SIZE = ENDOFTEXT_ID + 1

DEFAULT_RANKS_PATH = Path(__file__).parent / "assets" / "gpt2.tiktoken"


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """Read a tiktoken ranks file (`base64(token) rank` per line) after checking its hash."""
    path = DEFAULT_RANKS_PATH if path is None else Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GptkitError(
            f"GPT-2 ranks file {path} cannot be read ({exc.strerror}); "
            f"expected a file with sha256 {GPT2_RANKS_SHA256}"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    # Hash first: a truncated or edited file could still parse into a plausible
    # but wrong vocabulary.
    if actual != GPT2_RANKS_SHA256:
        raise GptkitError(
            f"GPT-2 ranks file {path} is corrupted: "
            f"expected sha256 {GPT2_RANKS_SHA256}, got {actual}"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, built from the shipped ranks (once per process)."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_ranks(),
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class Tokenizer:
    """Plain text <-> token id API over the tiktoken GPT-2 encoding."""

    def __init__(self, encoding: tiktoken.Encoding | None = None) -> None:
        self._enc = encoding if encoding is not None else gpt2_encoding()

    @property
    def name(self) -> str:
        return self._enc.name

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def eot_id(self) -> int:
        return self._enc.eot_token

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids for `text`; "<|endoftext|>" becomes one id only if `allow_special`."""
        if allow_special:
            return self._enc.encode(text, allowed_special={ENDOFTEXT})
        # encode_ordinary, unlike encode(), never raises on special-looking text:
        # training data scraped from the web does contain "<|endoftext|>".
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """Encode many texts as ordinary text, using tiktoken's thread pool."""
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        # "replace" because a slice of ids can cut a multi-byte character in half.
        return self._enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))


# --- registration: `data.tokenizer = "gpt2"` ---------------------------------------


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("tokenizer", "gpt2", Tokenizer, description="GPT-2 BPE (tiktoken, shipped ranks, offline)")
