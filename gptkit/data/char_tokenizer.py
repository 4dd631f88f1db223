"""A character-level tokenizer: one id per character of the training text, as nanoGPT's Shakespeare.

Ids follow the sorted characters of the text the tokenizer was fitted on, then
one more for `<|endoftext|>` (documents are separated by it, as with GPT-2's
tokenizer). A character the fitted text never held cannot be encoded: by
design, encoding it is refused, naming the character, instead of mapping it to
an "unknown" id, which would hand the model input other than what was typed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import GptkitError
from gptkit.hookspecs import hookimpl
from gptkit.registry import NoParams

FORMAT = "gptkit-char-1"


class CharTokenizer:
    learned = True
    kind = "char"

    def __init__(self, chars: str = "") -> None:
        self.set_chars(chars)

    def set_chars(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise ValueError("the characters must be distinct and sorted")
        self.chars = chars
        self.ids = {c: i for i, c in enumerate(chars)}

    # --- learning and keeping the vocabulary ------------------------------------------
    def fit(self, texts: Iterable[str]) -> None:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        self.set_chars("".join(sorted(seen)))

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "chars": self.chars}, ensure_ascii=False)

    def from_json(self, text: str) -> None:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        self.set_chars(data["chars"])

    # --- the tokenizer API ----------------------------------------------------------
    @property
    def name(self) -> str:
        return f"char-{hashlib.sha256(self.chars.encode()).hexdigest()[:12]}"

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def eot_id(self) -> int:
        return len(self.chars)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        pieces = text.split(ENDOFTEXT) if allow_special else [text]
        ids: list[int] = []
        for n, piece in enumerate(pieces):
            if n:
                ids.append(self.eot_id)
            try:
                ids.extend(self.ids[c] for c in piece)
            except KeyError as err:
                raise GptkitError(self.unseen(err.args[0])) from None
        return ids

    def unseen(self, char: str) -> str:
        return (
            f"character {char!r} (U+{ord(char):04X}) is not in this char tokenizer's vocabulary of {len(self.chars)} "
            "characters, which holds those of the text it was built from"
        )

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(ENDOFTEXT if i == self.eot_id else self.chars[i] for i in ids)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")


@hookimpl
def gptkit_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    registry.register("tokenizer", "char", CharTokenizer, params=NoParams, description="One id per character of the training text (nanoGPT's Shakespeare)")
