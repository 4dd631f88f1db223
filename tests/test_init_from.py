"""--init-from: a new run starts from a run's, a Hugging Face folder's or a hub model's weights.

The source in most tests is a tiny random GPT-2 written by `transformers` itself, so the
step-0 validation loss is checked against `GPT2LMHeadModel` on the same tokens, and hub
names are fetched from a stand-in for the hub's file API on 127.0.0.1 (`HF_ENDPOINT`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, save_tiny_hf_gpt2, subprocess_env
from hub_server import HubServer
from safetensors.torch import load_file
from test_cli_generate import run_main

import main
from commands.options import resolve_config
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.errors import ConfigError
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import latest_checkpoint
from trainer import Trainer

hf = pytest.importorskip("transformers")

HF_SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64, "vocab_size": 50257}
FAST = ["train.batch_size=2", "train.eval_batches=2", "train.eval_every=100", "run.dtype=float32", 'train.callbacks=["checkpoint"]']


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf_gpt2(tmp_path_factory, HF_SHAPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text("".join(f"note {i}: finetuning starts from weights someone trained before.\n" for i in range(300)))
    return path


def settings(corpus: Path, tmp_path: Path, *extra: str) -> list[str]:
    out = [*FAST, f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}", *extra]
    return [arg for item in out for arg in ("--set", item)]


def parse(argv: list[str]) -> argparse.Namespace:
    return main.build_parser().parse_args(main.with_command(argv))


def test_step_zero_validation_loss_equals_gpt2lmheadmodels(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    cfg = resolve_config(parse(["--init-from", str(hf_folder), *settings(corpus, tmp_path)]), default_registry())
    assert (cfg.model.n_layers, cfg.model.emb_dim, cfg.model.context_length) == (2, 64, 64)  # the source's shape
    tokenizer = Tokenizer()
    data = prepare_dataset(str(corpus), tokenizer, tmp_path / "cache", cfg.data.val_fraction)
    trainer = Trainer(cfg, tmp_path / "run", data, tokenizer, default_registry())
    theirs = hf.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        losses = [F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten()).item() for x, y in trainer.val_batches]
    assert trainer.state.step == 0
    assert trainer.evaluate() == pytest.approx(sum(losses) / len(losses), abs=1e-4)


def test_a_model_setting_that_contradicts_the_source_is_named(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve_config(parse(["--init-from", str(hf_folder), "--set", "model.n_layers=4"]), default_registry())
    assert str(refused.value) == (
        f"model.n_layers=4 contradicts --init-from {hf_folder}, whose model has n_layers=2; the shape comes from "
        "the source's weights (a run started from them may set only model.drop_rate, model.context_length, model.head)"
    )
    same = resolve_config(parse(["--init-from", str(hf_folder), "--set", "model.n_layers=2", "--set", "model.norm=layernorm"]), default_registry())
    assert same.model.n_layers == 2
    with pytest.raises(ConfigError, match=r"model.context_length=128 is longer than --init-from .*'s 64 positions"):
        resolve_config(parse(["--init-from", str(hf_folder), "--set", "model.context_length=128"]), default_registry())
    with pytest.raises(ConfigError, match="model.preset=gpt2 contradicts --init-from"):
        resolve_config(parse(["--preset", "gpt2", "--init-from", str(hf_folder)]), default_registry())


def test_a_shorter_context_keeps_the_first_positions(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    cfg = resolve_config(parse(["--init-from", str(hf_folder), *settings(corpus, tmp_path, "model.context_length=16")]), default_registry())
    tokenizer = Tokenizer()
    data = prepare_dataset(str(corpus), tokenizer, tmp_path / "cache", cfg.data.val_fraction)
    trainer = Trainer(cfg, tmp_path / "run", data, tokenizer, default_registry())
    wpe = load_file(hf_folder / "model.safetensors")["transformer.wpe.weight"]
    assert torch.equal(trainer.model.pos_emb.weight.detach(), wpe[:16])


def test_a_run_records_its_source_and_the_weights_sha256(monkeypatch: pytest.MonkeyPatch, hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    code, out, err = run_main(monkeypatch, ["--init-from", str(hf_folder), *settings(corpus, tmp_path, "train.max_steps=2", "run.name=tuned")])
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "tuned"
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["train"]["init_from"] == str(hf_folder)
    assert stored["initial_weights"]["kind"] == "hugging-face"
    expected = hashlib.sha256((hf_folder / "model.safetensors").read_bytes()).hexdigest()
    assert stored["initial_weights"]["sha256"] == {"model.safetensors": expected}
    trained = json.loads((latest_checkpoint(run_dir) / "trainer.json").read_text())
    assert trained["state"]["step"] == 2  # from step 0, not from wherever the source was

    # The run can go on (its config.json's provenance is no setting), and be a source itself.
    code, out, err = run_main(monkeypatch, ["--resume", str(run_dir), "--set", "train.max_steps=3"])
    assert code == 0, out + err
    assert json.loads((run_dir / "config.json").read_text())["initial_weights"] == stored["initial_weights"]
    checkpoint = latest_checkpoint(run_dir)
    for source in (run_dir, checkpoint):
        cfg = resolve_config(parse(["--init-from", str(source), *settings(corpus, tmp_path)]), default_registry())
        data = prepare_dataset(str(corpus), Tokenizer(), tmp_path / "cache", cfg.data.val_fraction)
        trainer = Trainer(cfg, tmp_path / f"from-{source.name}", data, Tokenizer(), default_registry())
        saved = load_file(checkpoint / "model.safetensors")
        state = trainer.model.state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
        assert trainer.init_source is not None and trainer.init_source.kind == ("run" if source == run_dir else "checkpoint")


def test_sources_that_are_not_weights_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = {
        str(tmp_path / "nope"): f"--init-from {tmp_path / 'nope'}: no such folder, and not a hub name",
        str(tmp_path / "empty"): f"--init-from {tmp_path / 'empty'} is a folder but not a gptkit run",
        str(tmp_path / "file.txt"): f"--init-from {tmp_path / 'file.txt'} is a file; expected a gptkit run directory",
    }
    for source, message in cases.items():
        code, _, err = run_main(monkeypatch, ["--init-from", source, "--set", f"run.out_dir={tmp_path / 'runs'}"])
        assert code == 2 and message in err and "Traceback" not in err, err
    code, _, err = run_main(monkeypatch, ["--init-from", "gpt2", "--resume", str(tmp_path / "empty")])
    assert code == 2 and "--init-from gpt2 has no effect with --resume" in err
    assert not (tmp_path / "runs").exists()  # nothing written by a refused start


def hub_run(tmp_path: Path, corpus: Path, name: str, **env: str) -> subprocess.CompletedProcess[str]:
    args = ["--init-from", name, *settings(corpus, tmp_path, "train.max_steps=1", f"run.name=hub-{len(list(tmp_path.glob('runs/*')))}")]
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *args], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=subprocess_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **env),
    )


def test_a_hub_name_is_fetched_once_then_read_from_the_cache(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    hub = HubServer({"someone/tiny-gpt2": hf_folder})
    try:
        fetched = hub_run(tmp_path, corpus, "someone/tiny-gpt2", HF_ENDPOINT=hub.url)
    finally:
        hub.close()
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert {"GET /someone/tiny-gpt2/resolve/main/config.json", "GET /someone/tiny-gpt2/resolve/main/model.safetensors"} <= set(hub.requests)
    stored = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    assert stored["initial_weights"]["kind"] == "hub"
    assert stored["initial_weights"]["sha256"]["model.safetensors"] == hashlib.sha256((hf_folder / "model.safetensors").read_bytes()).hexdigest()
    # The server is gone: offline, the cached copy serves.
    cached = hub_run(tmp_path, corpus, "someone/tiny-gpt2", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1")
    assert cached.returncode == 0, cached.stdout + cached.stderr


def test_without_a_network_the_message_says_how_to_use_a_local_folder(corpus: Path, tmp_path: Path) -> None:
    result = hub_run(tmp_path, corpus, "gpt2", HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: --init-from gpt2: could not fetch 'gpt2' from the Hugging Face hub (" in result.stderr
    assert "(`hf download gpt2 --local-dir DIR`) and pass --init-from DIR" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_frozen_parameters_stay_bit_for_bit_and_have_no_optimizer_state(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    recipe = 'train.trainable=["blocks.1.*", "final_norm.*"]'
    cfg = resolve_config(parse(["--init-from", str(hf_folder), *settings(corpus, tmp_path, recipe, "train.max_steps=2")]), default_registry())
    data = prepare_dataset(str(corpus), Tokenizer(), tmp_path / "cache", cfg.data.val_fraction)
    trainer = Trainer(cfg, tmp_path / "run", data, Tokenizer(), default_registry())
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    trained = {name for name in before if name.startswith(("blocks.1.", "final_norm."))}
    assert trained and all(not torch.equal(before[n], after[n].detach()) for n in trained if n.endswith("weight"))
    assert all(torch.equal(before[n], after[n].detach()) for n in set(before) - trained)
    with_state = {id(p) for p in trainer.optimizer.state}
    assert with_state == {id(after[n]) for n in trained}
    expected = sum(after[n].numel() for n in trained)
    assert (trainer.trainable.trainable, trainer.trainable.total) == (expected, trainer.model.num_parameters())


def test_a_pattern_that_matches_nothing_names_itself_and_the_names(hf_folder: Path, corpus: Path, tmp_path: Path) -> None:
    cfg = resolve_config(parse([*settings(corpus, tmp_path, 'train.freeze=["block.*"]')]), default_registry())
    data = prepare_dataset(str(corpus), Tokenizer(), tmp_path / "cache", cfg.data.val_fraction)
    with pytest.raises(ConfigError) as refused:
        Trainer(cfg, tmp_path / "run", data, Tokenizer(), default_registry())
    # cpu-small: 4 blocks of 12 parameters, the two embeddings, the final norm's two and the tied head's name.
    assert str(refused.value).startswith(
        "train.freeze pattern 'block.*' matches no parameter of this model; its 53 names look like: "
        "tok_emb.weight, pos_emb.weight, blocks.0.norm1.weight, blocks.0.norm1.bias, blocks.0.att.qkv.weight, blocks.0.att.qkv.bias, ..."
    )
