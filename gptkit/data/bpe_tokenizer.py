"""A byte-level BPE tokenizer trained on the run's own corpus, with Hugging Face `tokenizers`.

GPT-2's scheme (bytes mapped to printable characters, GPT-2's pre-split
pattern, merges learned bottom-up) at the vocabulary size the config asks
for. Hugging Face's `tokenizers` trains it: a well-kept Rust library that
trains, encodes and saves in one file format that `transformers`'
`PreTrainedTokenizerFast` reads too, already installed wherever `transformers`
is; nanochat's `rustbpe` trains only and is not on PyPI as a wheel for every
platform. `pip install -e ".[bpe]"` installs it.

Every byte has an id, so any text encodes (unlike the char tokenizer's);
`<|endoftext|>` is one more id, last.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import Field

from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import GptkitError
from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams


class BPEParams(ComponentParams):
    vocab_size: int = Field(4096, ge=257, le=1 << 20, description="Token ids, the 256 bytes and <|endoftext|> included.")
    min_frequency: int = Field(2, ge=1, description="A pair seen fewer times than this is not merged.")


def tokenizers_library() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise GptkitError('data.tokenizer \'bpe\' needs Hugging Face tokenizers, which is not installed: pip install -e ".[bpe]"') from None
    return tokenizers


@functools.lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (what byte-level BPE learns over)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


@functools.lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


class BPETokenizer:
    learned = True
    kind = "bpe"

    def __init__(self, vocab_size: int = 4096, min_frequency: int = 2) -> None:
        self.target_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.backend: Any = None
        self.json = ""

    def _use(self, backend: Any, json_text: str) -> None:
        self.backend, self.json = backend, json_text
        self._eot = backend.token_to_id(ENDOFTEXT)
        if self._eot is None:
            raise ValueError(f"the tokenizer has no {ENDOFTEXT} token")
        self._pieces = [backend.id_to_token(i) for i in range(backend.get_vocab_size())]

    # --- learning and keeping the vocabulary ------------------------------------------
    def fit(self, texts: Iterable[str]) -> None:
        lib = tokenizers_library()
        backend = lib.Tokenizer(lib.models.BPE())
        backend.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=self.target_vocab_size - 1, min_frequency=self.min_frequency,
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        backend.add_special_tokens([ENDOFTEXT])  # after training: the last id, never merged into
        self._use(backend, backend.to_str())

    def to_json(self) -> str:
        return self.json

    def from_json(self, text: str) -> None:
        lib = tokenizers_library()
        try:
            backend = lib.Tokenizer.from_str(text)
        except Exception as err:  # noqa: BLE001 (the Rust side raises a plain Exception)
            raise ValueError(str(err)) from None
        self._use(backend, text)

    # --- the tokenizer API ----------------------------------------------------------
    def _fitted(self) -> Any:
        if self.backend is None:
            raise GptkitError("this bpe tokenizer has not been trained yet (a run trains it on its data.path when it starts)")
        return self.backend

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.json.encode()).hexdigest()[:12]
        return f"bpe{self.target_vocab_size}-{digest}"

    @property
    def vocab_size(self) -> int:
        return int(self._fitted().get_vocab_size())

    @property
    def eot_id(self) -> int:
        self._fitted()
        return int(self._eot)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        backend = self._fitted()
        # Text that merely contains "<|endoftext|>" is ordinary text unless asked otherwise,
        # as with GPT-2's encode_ordinary: the library then encodes the special string's characters.
        backend.encode_special_tokens = not allow_special
        return list(backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        backend = self._fitted()
        backend.encode_special_tokens = True
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        self._fitted()
        table = char_to_byte()
        return b"".join(
            ENDOFTEXT.encode() if i == self._eot else bytes(table[c] for c in self._pieces[i]) for i in ids
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


@hookimpl
def gptkit_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    registry.register("tokenizer", "bpe", BPETokenizer, params=BPEParams, description="Byte-level BPE trained on the run's corpus (Hugging Face tokenizers)")
