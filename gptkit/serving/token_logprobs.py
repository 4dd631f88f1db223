"""OpenAI's `logprobs` object of a completion choice: its tokens as text, their scores, the alternatives, the offsets.

The legacy completions API (and vLLM's) reports, for the tokens of a choice:
`tokens` (each token's text), `token_logprobs` (its log-probability; null for a
text's first token, which nothing comes before), `top_logprobs` (one
{token text: log-probability} object per token, null where the log-probability
is), and `text_offset` (where each token starts in the choice's text, in
characters). The scores are `gptkit.serving.prompt_scoring`'s; this module only
writes them out.

Where OpenAI's documentation leaves room, as vLLM does: `top_logprobs` holds the
`logprobs` likeliest tokens, and the chosen token as well when it is not among
them (so `logprobs` 0 gives the chosen token alone); a token that is only part of
a UTF-8 character (GPT-2 splits most emoji and non-Latin text into bytes) is
written `bytes:\\xe2\\x80` as OpenAI writes it, so no two tokens share a key; and
a token after the end of the returned text (the `<|endoftext|>` that ended it, the
tokens of a stop string cut from it) starts at or past that end.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gptkit.serving.prompt_scoring import TokenScore

if TYPE_CHECKING:
    from gptkit.data.tokenizer import (
        Tokenizer,  # or any registered tokenizer: decode_bytes
    )

# JSON has no -Infinity: a token the model rules out entirely is reported this low, as vLLM does.
LOWEST_LOGPROB = -9999.0


def token_string(tokenizer: Tokenizer, token: int) -> str:
    """A token's text, or `bytes:\\xNN...` when its bytes are not whole UTF-8 characters."""
    raw = tokenizer.decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


def spell(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[str, list[int]]:
    """The text `ids` spell, and where each token starts in it.

    Decoded as the completion's text is (`gptkit.generation.generate.TextStream`): a
    character split across tokens appears once whole, so each of its tokens but the
    first starts where that character does; bytes that never make one are U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, offsets = "", []
    for token in ids:
        offsets.append(len(text))
        text += decoder.decode(tokenizer.decode_bytes([token]))
    return text + decoder.decode(b"", final=True), offsets


def _finite(logprob: float) -> float:
    return max(logprob, LOWEST_LOGPROB)


def _alternatives(tokenizer: Tokenizer, token: int, score: TokenScore) -> dict[str, float]:
    likeliest = {token_string(tokenizer, t): _finite(lp) for t, lp in score.top}
    likeliest.setdefault(token_string(tokenizer, token), _finite(score.logprob))
    return likeliest


def choice_logprobs(tokenizer: Tokenizer, ids: Sequence[int], scores: Sequence[TokenScore | None], offsets: Sequence[int]) -> dict[str, Any]:
    """The `logprobs` object of tokens `ids`, given each one's score (None: the first of a text) and offset."""
    return {
        "tokens": [token_string(tokenizer, t) for t in ids],
        "token_logprobs": [None if s is None else _finite(s.logprob) for s in scores],
        "top_logprobs": [None if s is None else _alternatives(tokenizer, t, s) for t, s in zip(ids, scores)],
        "text_offset": list(offsets),
    }
