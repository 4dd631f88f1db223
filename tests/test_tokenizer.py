"""Tests for the offline GPT-2 tokenizer and the Hugging Face files derived from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gptkit.data.tokenizer import (
    DEFAULT_RANKS_PATH,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    GPT2_RANKS_SHA256,
    Tokenizer,
    load_ranks,
)
from gptkit.errors import GptkitError
from gptkit.interop.hf_tokenizer import write_hf_tokenizer_files

REPO_ROOT = Path(__file__).resolve().parents[1]

SAMPLES = [
    "Hello world",
    "Café déjà vu, naïve façade — Ærøskøbing.",
    "東京は日本の首都です。中文测试，한국어 텍스트.",
    "Emoji: 👍🏽 🎉 👨‍👩‍👧‍👦 ok",
    "tabs\tand\t\ttabs\n\nnewlines \r\n trailing   ",
    "def f(x):\n    if x:\n        return {'a': [1, 2]}  # comment\n",
    "Numbers 1234567 3.14159 -42 1e-9 0x1F",
    "many          spaces    between   words     ",
    "   leading spaces and a lone \u00a0 nbsp",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_known_ids_and_properties(tok: Tokenizer) -> None:
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_id, tok.name) == (50257, 50256, "gpt2")


def test_endoftext_only_special_when_allowed(tok: Tokenizer) -> None:
    assert tok.encode(ENDOFTEXT, allow_special=True) == [ENDOFTEXT_ID]
    assert tok.encode(f"a{ENDOFTEXT}b", allow_special=True)[1] == ENDOFTEXT_ID
    plain = tok.encode(ENDOFTEXT)
    assert ENDOFTEXT_ID not in plain and len(plain) > 1
    assert tok.decode(plain) == ENDOFTEXT


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(SAMPLES, num_threads=3) == [tok.encode(t) for t in SAMPLES]


def test_decode_replaces_split_characters(tok: Tokenizer) -> None:
    # "👍" is several byte-level tokens; cutting it must not raise.
    ids = tok.encode("👍")
    assert len(ids) > 1
    assert "\ufffd" in tok.decode(ids[:1])


def test_load_ranks_default() -> None:
    ranks = load_ranks()
    assert len(ranks) == 50256
    assert sorted(ranks.values()) == list(range(50256))


def test_corrupted_ranks_file(tmp_path: Path) -> None:
    bad = tmp_path / "gpt2.tiktoken"
    data = bytearray(DEFAULT_RANKS_PATH.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(GptkitError) as info:
        load_ranks(bad)
    assert str(bad) in str(info.value) and GPT2_RANKS_SHA256 in str(info.value)


def test_missing_ranks_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tiktoken"
    with pytest.raises(GptkitError) as info:
        load_ranks(missing)
    assert str(missing) in str(info.value) and GPT2_RANKS_SHA256 in str(info.value)


def test_builds_without_network(tmp_path: Path) -> None:
    # A fresh interpreter, so tiktoken and tiktoken_ext are imported with sockets
    # already blocked; any download attempt or cache write would show up.
    cache = tmp_path / "tiktoken-cache"
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from gptkit.data.tokenizer import Tokenizer, gpt2_encoding
        gpt2_encoding.cache_clear()
        assert Tokenizer().encode("Hello world") == [15496, 995]
        print("ok")
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert not cache.exists()


def test_hf_tokenizer_files_match(tok: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    write_hf_tokenizer_files(tmp_path, model_max_length=512)

    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 50257 and vocab[ENDOFTEXT] == ENDOFTEXT_ID
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines[1:]) == 50000

    # In transformers 5 both names are the same tokenizers-backed class; in 4.x
    # GPT2Tokenizer is the pure-Python one, which checks merges.txt independently.
    for cls in {transformers.GPT2TokenizerFast, transformers.GPT2Tokenizer}:
        hf = cls.from_pretrained(tmp_path)
        assert hf.model_max_length == 512 and hf.eos_token_id == ENDOFTEXT_ID
        for text in SAMPLES:
            ids = hf.encode(text, add_special_tokens=False)
            assert ids == tok.encode(text), (cls.__name__, text)
            assert hf.decode(ids) == text
        special = f"one{ENDOFTEXT}two"
        assert hf.encode(special) == tok.encode(special, allow_special=True)
