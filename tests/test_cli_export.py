"""`python main.py export`: a run's checkpoint as a folder that transformers itself loads.

The checks are transformers' own reading of the export (GPT2LMHeadModel's logits,
GPT2Tokenizer's ids) against gptkit's model and tokenizer, and, for every refusal,
one `error:` line, exit 2 and the disk as it was.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_cli_generate import (  # fixtures and helpers, not tests: nothing here is collected twice
    MODEL,
    cli,
    model,
    random_model,
    run_dir,
    run_main,
    write_run,
)

from gptkit import GPTModel, ModelConfig
from gptkit.data.tokenizer import Tokenizer
from gptkit.training.checkpoint import save_checkpoint
from gptkit.training.train_state import TrainState

__all__ = ["model", "run_dir"]  # fixtures from test_cli_generate, used by name

transformers = pytest.importorskip("transformers")

# Code, prose, runs of spaces, a tab, accents and CJK: the parts where byte-level BPE files go wrong.
SAMPLE = "def f(x):\n    return x ** 2  # squares\tHello, World! naïve café 日本語 don't  stop"


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def export(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    return run_main(monkeypatch, ["export", *args])


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    """Exit 2 with one `error:` line holding `message`, and nothing on stdout."""
    code, out, err = result
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).float().eval()
    with torch.no_grad():
        return hf(ids).logits


def our_logits(model: GPTModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def sample_ids() -> torch.Tensor:
    return torch.tensor([Tokenizer().encode(SAMPLE)[: MODEL["context_length"]]])


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's latest checkpoint exported by the command, once for the module."""
    out = tmp_path_factory.mktemp("exports") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        code, stdout, err = export(mp, "--run", str(run_dir), "--out", str(out))
    assert code == 0, err
    assert f"exported {run_dir} (step_000002) to {out} (float32)" in stdout
    return out


# --- what the export holds --------------------------------------------------------------------


def test_transformers_computes_the_same_logits_from_the_export(exported: Path, model: GPTModel) -> None:
    ids = sample_ids()
    torch.testing.assert_close(hf_logits(exported, ids), our_logits(model, ids), atol=1e-4, rtol=0)
    config = json.loads((exported / "config.json").read_text())
    assert config["torch_dtype"] == "float32"
    # Staged beside the folder and moved in whole: nothing else is left there.
    assert [p.name for p in exported.parent.iterdir()] == ["tiny"]


def test_gpt2_tokenizer_from_the_export_encodes_as_gptkit_does(exported: Path) -> None:
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(exported)
    assert tokenizer.encode(SAMPLE) == Tokenizer().encode(SAMPLE)
    assert tokenizer.decode(Tokenizer().encode(SAMPLE)) == SAMPLE


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_saves_the_weights_in_that_precision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path, model: GPTModel, dtype: str
) -> None:
    out = tmp_path / "half"
    code, _, err = export(monkeypatch, "--run", str(run_dir), "--out", str(out), "--dtype", dtype)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {getattr(torch, dtype)}  # noqa: SIM118 - safe_open is no dict
    # The same rounding of the same weights: transformers in float32 computes what gptkit does with them.
    rounded = random_model(0).to(getattr(torch, dtype)).float()
    ids = sample_ids()
    torch.testing.assert_close(hf_logits(out, ids), our_logits(rounded, ids), atol=1e-4, rtol=0)


def test_checkpoint_picks_a_step_by_name_or_path_and_overwrite_replaces_an_earlier_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: GPTModel, exported: Path
) -> None:
    run = write_run(tmp_path / "two_steps", model, MODEL)
    later = random_model(1)
    save_checkpoint(run, later, torch.optim.AdamW(later.parameters()), TrainState(step=4))
    out = tmp_path / "hf"
    shutil.copytree(exported, out)  # an earlier export, of step 2
    ids = sample_ids()
    code, _, err = export(monkeypatch, "--run", str(run), "--out", str(out), "--overwrite")
    assert code == 0, err
    torch.testing.assert_close(hf_logits(out, ids), our_logits(later, ids), atol=1e-4, rtol=0)  # the latest
    for choice in ("step_2", str(run / "checkpoints" / "step_000002")):
        code, _, err = export(monkeypatch, "--run", str(run), "--checkpoint", choice, "--out", str(out), "--overwrite")
        assert code == 0, err
        torch.testing.assert_close(hf_logits(out, ids), our_logits(model, ids), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "two_steps"]


def test_export_from_a_separate_process(tmp_path: Path, run_dir: Path, model: GPTModel) -> None:
    out = tmp_path / "nested" / "hf"  # folders above it are made
    result = cli("export", "--run", str(run_dir), "--out", str(out))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    ids = sample_ids()
    torch.testing.assert_close(hf_logits(out, ids), our_logits(model, ids), atol=1e-4, rtol=0)


# --- bad input ----------------------------------------------------------------------------------


def test_a_missing_run_directory_is_refused(tmp_path: Path) -> None:
    result = cli("export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "hf"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: run directory {tmp_path / 'nope'} does not exist\n"
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_checkpoints_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.json", bare / "config.json")
    result = export(monkeypatch, "--run", str(bare), "--out", str(tmp_path / "hf"))
    assert_refused(result, f"{bare} holds no checkpoint (expected {bare / 'checkpoints'}/step_*/)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]


def test_a_hugging_face_folder_given_as_the_run_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exported: Path) -> None:
    result = export(monkeypatch, "--run", str(exported), "--out", str(tmp_path / "again"))
    assert_refused(result, f"{exported} is already a Hugging Face checkpoint folder, not a gptkit run directory")
    assert f"generate --hf-dir {exported}" in result[2]
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_checkpoint_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path) -> None:
    result = export(monkeypatch, "--run", str(run_dir), "--checkpoint", "step_7", "--out", str(tmp_path / "hf"))
    assert_refused(result, f"no checkpoint 'step_7' in {run_dir / 'checkpoints'} (it holds step_000002)")
    result = export(monkeypatch, "--run", str(run_dir), "--checkpoint", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "hf"))
    assert_refused(result, f"--checkpoint {tmp_path / 'elsewhere'} is no checkpoint folder")
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_out_without_overwrite_is_refused_and_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path, exported: Path) -> None:
    earlier = tmp_path / "earlier"
    shutil.copytree(exported, earlier)
    before = files_of(earlier)
    result = export(monkeypatch, "--run", str(run_dir), "--out", str(earlier))
    assert_refused(result, f"--out {earlier} already holds an export; pass --overwrite to replace it")
    assert files_of(earlier) == before
    # A folder of the user's own files is never replaced, --overwrite or not.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):
        result = export(monkeypatch, "--run", str(run_dir), "--out", str(mine), *flags)
        assert_refused(result, f"--out {mine} is not empty and is not an earlier gptkit export")
        assert files_of(mine) == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "mine"]


def test_an_out_that_is_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    assert_refused(export(monkeypatch, "--run", str(run_dir), "--out", str(file)), f"--out {file} is a file")
    assert_refused(export(monkeypatch, "--run", str(run_dir), "--out", str(file / "hf")), f"--out {file / 'hf'} is inside {file}, which is a file")
    assert files_of(tmp_path) == {"model.bin": b"x"}


def test_an_out_inside_the_runs_checkpoints_is_refused(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    before = files_of(run_dir)
    for out in (run_dir / "checkpoints" / "hf", run_dir / "checkpoints"):
        result = export(monkeypatch, "--run", str(run_dir), "--out", str(out))
        assert_refused(result, f"--out {out} is inside {run_dir / 'checkpoints'}, where training keeps (and prunes) its checkpoints")
    assert files_of(run_dir) == before


def test_an_out_that_is_or_holds_the_run_is_refused(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    before = files_of(run_dir.parent)
    for out in (run_dir, run_dir.parent, run_dir / ".." / run_dir.name):
        result = export(monkeypatch, "--run", str(run_dir), "--out", str(out), "--overwrite")
        assert_refused(result, f"--out {out} is the run directory {run_dir} or a folder holding it")
    assert files_of(run_dir.parent) == before


def test_a_model_hugging_face_gpt2_cannot_represent_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    section = {**MODEL, "norm": "rmsnorm"}
    run = write_run(tmp_path / "rms", GPTModel(ModelConfig(**section)), section)
    result = export(monkeypatch, "--run", str(run), "--out", str(tmp_path / "hf"))
    assert result[2] == (
        f"error: {run} (step_000002): cannot export to Hugging Face GPT-2: norm 'rmsnorm' has no GPT-2 equivalent "
        "(GPT-2 uses 'layernorm')\n"
    )
    assert_refused(result, "norm 'rmsnorm'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rms"]


def test_a_run_with_another_tokenizer_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path) -> None:
    run = tmp_path / "bytes"
    shutil.copytree(run_dir, run)
    stored = json.loads((run / "config.json").read_text())
    stored["data"]["tokenizer"] = {"name": "bytes"}
    (run / "config.json").write_text(json.dumps(stored))
    result = export(monkeypatch, "--run", str(run), "--out", str(tmp_path / "hf"))
    assert_refused(result, f"{run} was trained with tokenizer 'bytes' (data.tokenizer), but a Hugging Face GPT-2 export carries GPT-2's tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes"]


def test_weights_that_are_not_finite_or_too_large_for_float16_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    big, broken = random_model(0), random_model(0)
    with torch.no_grad():
        big.tok_emb.weight[0, 0] = 1e6  # past float16's largest, 65504
        broken.blocks[0].ff.fc1.weight[0, 0] = float("nan")
    runs = {name: write_run(tmp_path / name, weights, MODEL) for name, weights in (("big", big), ("broken", broken))}
    result = export(monkeypatch, "--run", str(runs["big"]), "--out", str(tmp_path / "hf"), "--dtype", "float16")
    assert_refused(result, f"{runs['big']} (step_000002) has weights too large for float16 (they become inf); use --dtype bfloat16 or float32")
    result = export(monkeypatch, "--run", str(runs["broken"]), "--out", str(tmp_path / "hf"))
    assert_refused(result, f"{runs['broken']} (step_000002) has weights that are nan or inf; export an earlier checkpoint with --checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "broken"]


def test_a_failed_export_leaves_the_disk_as_it_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path, exported: Path
) -> None:
    def disk_full(directory: Path, model_max_length: int) -> None:
        (Path(directory) / "vocab.json").write_text("{")  # cut short, as a full disk leaves a file
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "vocab.json"))

    monkeypatch.setattr("gptkit.interop.hf_checkpoint.write_hf_tokenizer_files", disk_full)
    result = export(monkeypatch, "--run", str(run_dir), "--out", str(tmp_path / "a" / "b" / "hf"))
    assert_refused(result, "No space left on device (check the free space and permissions there)")
    assert list(tmp_path.iterdir()) == []  # neither the export, its staging folder, nor the folders above it
    # Replacing an earlier export that way keeps the earlier one, byte for byte.
    earlier = tmp_path / "earlier"
    shutil.copytree(exported, earlier)
    before = files_of(earlier)
    result = export(monkeypatch, "--run", str(run_dir), "--out", str(earlier), "--overwrite")
    assert_refused(result, "No space left on device")
    assert files_of(earlier) == before and [p.name for p in tmp_path.iterdir()] == ["earlier"]
