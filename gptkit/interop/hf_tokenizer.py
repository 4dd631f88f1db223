"""Write Hugging Face GPT-2 tokenizer files derived from gptkit's shipped BPE ranks.

Exported checkpoints need `vocab.json` and `merges.txt` next to them so that
`transformers` can load them, but the machines that export are often offline.
Both files are fully determined by the tiktoken ranks, so we rebuild them here
instead of shipping (and hash-checking) a second copy of the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from gptkit.atomic import write_json
from gptkit.data.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, load_ranks
from gptkit.errors import GptkitError


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    HF vocab files are JSON text, so raw bytes (controls, spaces, invalid UTF-8)
    are renamed: printable Latin-1 bytes keep their own character and the other
    68 bytes take code points 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table


def _split_in_two(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Replay BPE on `token` with only earlier merges; the last two parts are its merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            # Strict "<" keeps the leftmost pair on ties, as tiktoken does.
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            raise GptkitError(
                f"BPE ranks are inconsistent: token {token!r} (rank {rank}) cannot be built"
            )
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def write_hf_tokenizer_files(directory: Path, model_max_length: int = 1024) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ranks = load_ranks()
    b2u = byte_to_unicode()

    def render(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    vocab = {render(token): rank for token, rank in by_rank}
    vocab[ENDOFTEXT] = ENDOFTEXT_ID
    merges = ["#version: 0.2"]
    for token, rank in by_rank:
        if len(token) > 1:
            left, right = _split_in_two(token, rank, ranks)
            merges.append(f"{render(left)} {render(right)}")

    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **special,
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        # Cleanup would turn " ." into "." and break decode(encode(text)) == text.
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(ENDOFTEXT_ID): {
                "content": ENDOFTEXT,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "single_word": False,
                "special": True,
            }
        },
    }
    # vocab.json on one line: 50k indented entries would only bloat the export.
    write_json(directory / "vocab.json", vocab, indent=None)
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    write_json(directory / "tokenizer_config.json", config)
    write_json(directory / "special_tokens_map.json", special)

