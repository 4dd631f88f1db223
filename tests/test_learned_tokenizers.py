"""Tokenizers learned from the run's text: char and byte-level BPE, kept in the run directory, used to train and to generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptkit import GptkitError
from gptkit.data.bpe_tokenizer import BPETokenizer, byte_to_char
from gptkit.data.char_tokenizer import CharTokenizer
from tests.test_cli_train import assert_user_error, main

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_char_ids_are_the_sorted_characters_then_endoftext() -> None:
    tok = CharTokenizer()
    tok.fit(["hello", " world\n"])
    assert tok.chars == "\n dehlorw" and tok.vocab_size == 10 and tok.eot_id == 9
    assert tok.encode("hello world") == [4, 3, 5, 5, 6, 1, 8, 6, 7, 5, 2]  # \n=0 space=1 d=2 e=3 h=4 l=5 o=6 r=7 w=8
    assert tok.decode(tok.encode("low\nrow", allow_special=True)) == "low\nrow"
    assert tok.encode("he<|endoftext|>lo", allow_special=True) == [4, 3, 9, 5, 6]
    with pytest.raises(GptkitError) as err:
        tok.encode("hello, world")
    assert str(err.value) == ("character ',' (U+002C) is not in this char tokenizer's vocabulary of 9 characters, "
                              "which holds those of the text it was built from")
    again = CharTokenizer()
    again.from_json(tok.to_json())
    assert again.chars == tok.chars and again.name == tok.name != CharTokenizer("ab").name


def test_bpe_learns_the_vocabulary_size_asked_and_round_trips_any_bytes() -> None:
    tok = BPETokenizer(vocab_size=300, min_frequency=2)
    tok.fit([TEXT])
    assert tok.vocab_size == 300 and tok.eot_id == 299
    unseen = "naïve 日本語 🙂 tabs\tand\r\nCRLF"  # characters the training text never held
    assert tok.decode(tok.encode(unseen)) == unseen
    assert tok.decode_bytes(tok.encode(unseen)) == unseen.encode()
    assert len(tok.encode("Speak, speak.")) < len("Speak, speak.")  # merges learned from the text
    assert tok.encode("a<|endoftext|>b", allow_special=True).count(299) == 1
    assert 299 not in tok.encode("a<|endoftext|>b") and tok.decode(tok.encode("a<|endoftext|>b")) == "a<|endoftext|>b"
    # GPT-2's byte map, as the library's own byte-level alphabet has it
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(byte_to_char().values()) == set(ByteLevel.alphabet())


def test_bpe_file_is_what_transformers_loads_with_the_same_ids(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = BPETokenizer(vocab_size=320)
    tok.fit([TEXT])
    (tmp_path / "tokenizer.json").write_text(tok.to_json())
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    sample = "Before we proceed, hear me: all speak! 123"
    assert theirs.encode(sample) == tok.encode(sample)
    assert theirs.decode(tok.encode(sample)) == sample


def test_a_char_run_keeps_its_vocabulary_and_generate_uses_it(tmp_path: Path) -> None:
    (tmp_path / "plays.txt").write_text(TEXT)
    common = ["--set", "data.tokenizer=char", "--set", f"data.path={tmp_path / 'plays.txt'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
              "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=char", "--set", "model.emb_dim=32", "--set", "model.n_layers=1",
              "--set", "model.n_heads=2", "--set", "model.context_length=32", "--set", "train.batch_size=4", "--set", "train.eval_every=2",
              "--set", "train.eval_batches=1", "--set", "train.callbacks=[\"checkpoint\"]", "--set", "run.dtype=float32"]
    done = main(*common, "--set", "train.max_steps=2")
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "char"
    chars = "".join(sorted(set(TEXT)))
    assert json.loads((run / "tokenizer.json").read_text())["chars"] == chars
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == len(chars) + 1  # the model follows the tokenizer
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "tokens").iterdir()] == ["char"]  # the cache key names it

    resumed = main("--resume", str(run), "--set", "train.max_steps=3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = main("generate", "--run", str(run), "--prompt", "Speak", "--max-new-tokens", "5", "--seed", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Speak" in out.stdout
    scored = main("evaluate", "--init-from", str(run), "--task", "perplexity", "--data", str(tmp_path / "plays.txt"), "--out", str(tmp_path / "eval.json"))
    assert scored.returncode == 0, scored.stdout + scored.stderr  # the source run's vocabulary, read back
    # A run started from this one's weights keeps their ids: the vocabulary is read back, not fitted anew.
    (tmp_path / "more.txt").write_text("Speak, speak.\n" * 200)
    onward = main("--init-from", str(run / "checkpoints" / "step_000003"), "--set", f"data.path={tmp_path / 'more.txt'}",
                  "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=onward",
                  "--set", "train.max_steps=1", "--set", "train.batch_size=2", "--set", "train.eval_batches=1",
                  "--set", "train.callbacks=[\"checkpoint\"]", "--set", "run.dtype=float32")
    assert onward.returncode == 0, onward.stdout + onward.stderr
    assert (tmp_path / "runs" / "onward" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    unseen = main("generate", "--run", str(run), "--prompt", "Speak!", "--max-new-tokens", "2")
    assert_user_error(unseen, "character '!' (U+0021) is not in this char tokenizer's vocabulary")

    (run / "tokenizer.json").unlink()
    lost = main("generate", "--run", str(run), "--prompt", "Speak")
    assert_user_error(lost, f"{run / 'tokenizer.json'} is missing; a run with data.tokenizer 'char' keeps its vocabulary there")


def test_a_learned_tokenizer_refuses_instruction_data(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text('{"instruction": "Say hi", "output": "hi"}\n' * 4)
    bad = main("--set", "data.tokenizer=bpe", "--set", "data.format=instruction", "--set", f"data.path={tmp_path / 'tasks.jsonl'}",
               "--set", f"run.out_dir={tmp_path / 'runs'}")
    assert_user_error(bad, "data.tokenizer 'bpe' is learned from plain text; data.format=instruction wraps examples")
    assert not (tmp_path / "runs").exists()
