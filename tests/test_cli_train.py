"""`python main.py` as a user runs it: bad input answered in one paragraph, Ctrl-C, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--set", "model.emb_dim=32", "--set", "model.n_heads=2", "--set", "model.n_layers=1",
    "--set", "model.context_length=16", "--set", "train.batch_size=2", "--set", "train.eval_batches=1",
    "--set", "run.dtype=float32",
]


def main(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400)))
    return path


def data_args(path: Path | str, tmp_path: Path) -> list[str]:
    return ["--set", f"data.path={path}", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"run.out_dir={tmp_path / 'runs'}"]


def test_missing_data_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    assert_user_error(main(*TINY, *data_args(missing, tmp_path)), str(missing))


def test_empty_data_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(main(*TINY, *data_args(empty, tmp_path)), "no text")


def test_corpus_shorter_than_one_window(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n" * 3)
    assert_user_error(main(*TINY, *data_args(short, tmp_path)), "needs at least 17")


def test_non_utf8_data(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("caf\xe9 " * 200).encode("latin-1"))
    assert_user_error(main(*TINY, *data_args(bad, tmp_path)), str(bad), "UTF-8")


def test_unwritable_output_dir(tmp_path: Path, corpus: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = main(*TINY, *data_args(corpus, tmp_path), "--set", f"run.out_dir={blocker}")
    assert_user_error(result, "cannot write the run directory", str(blocker))


def test_typo_in_set_and_in_config_file(tmp_path: Path) -> None:
    assert_user_error(main("--set", "train.lrr=0.1"), "train.lrr: unknown key")
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nnorm = { name = "layernorm", epz = 1e-5 }\n')
    assert_user_error(main("--config", str(cfg)), "model.norm.epz: unknown key")
    assert_user_error(main("--set", "model.norm=rmsnrm"), "did you mean 'rmsnorm'")
    assert_user_error(main("--set", "train.max_steps=-3"), "train.max_steps")


def test_config_command_prints_resolved_config() -> None:
    result = main("config", "--set", "model.norm=rmsnorm", "--preset", "gpt2")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["model"]["norm"] == {"name": "rmsnorm", "eps": 1e-6}
    assert resolved["model"]["emb_dim"] == 768 and resolved["train"]["scheduler"]["name"] == "cosine"


def test_train_then_resume_and_incompatible_resume(tmp_path: Path, corpus: Path) -> None:
    args = [*TINY, *data_args(corpus, tmp_path), "--set", "run.name=r", "--set", "train.eval_every=2"]
    first = main(*args, "--set", "train.max_steps=3")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "runs" / "r"
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["train"]["max_steps"] == 3 and stored["model"]["emb_dim"] == 32
    for name in ("metrics.jsonl", "train.log", "loss.png", "samples.txt"):
        assert (run_dir / name).is_file(), name
    assert "training finished" in first.stdout

    again = main("--resume", str(run_dir), "--set", "train.max_steps=5")
    assert again.returncode == 0, again.stdout + again.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert steps == [1, 2, 3, 4, 5]

    bad = main("--resume", str(run_dir), "--set", "model.emb_dim=64", "--set", "train.optimizer.weight_decay=0.5")
    assert_user_error(bad, "model.emb_dim", "train.optimizer.weight_decay")
    # A lower peak lr is how a diverged run is rescued: accepted, and used from the next step on.
    # Step 6 is still in the default 20-step warm-up: lr = peak * 6 / 20.
    lower = main("--resume", str(run_dir), "--set", "train.max_steps=6", "--set", "train.lr=1e-3")
    assert lower.returncode == 0, lower.stdout + lower.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[4]["lr"] == pytest.approx(2e-3 * 5 / 20) and records[5]["lr"] == pytest.approx(1e-3 * 6 / 20)
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 1e-3
    assert_user_error(main("--resume", str(tmp_path / "nowhere")), "nowhere")
    assert_user_error(main(*args), "already exists")


def test_bf16_run_names_the_precision_it_trains_in(tmp_path: Path, corpus: Path) -> None:
    from gptkit.training.precision import cpu_has_bf16_matmul

    result = main(*TINY, *data_args(corpus, tmp_path), "--set", "run.dtype=bfloat16", "--set", "train.max_steps=1")
    assert result.returncode == 0, result.stdout + result.stderr
    note = "note: run.dtype=bfloat16 trains in float32 on this CPU: it has no bfloat16 matrix kernels"
    setup = next(line for line in result.stdout.splitlines() if line.startswith("model: "))
    if cpu_has_bf16_matmul():
        assert note not in result.stdout and "(bfloat16); run directory" in setup, result.stdout
    else:
        assert note in result.stdout and "(float32); run directory" in setup, result.stdout


def test_ctrl_c_saves_and_explains_resume(tmp_path: Path, corpus: Path) -> None:
    args = [*TINY, *data_args(corpus, tmp_path), "--set", "run.name=c", "--set", "train.max_steps=100000",
            "--set", "train.eval_every=1000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "c" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count('"train"') >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert f"python main.py --resume {tmp_path / 'runs' / 'c'}" in (out + err).replace("\n", "")
    assert (out + err).count("--resume") == 1, out + err  # the hint once, not from every layer
    checkpoints = sorted((tmp_path / "runs" / "c" / "checkpoints").glob("step_*"))
    assert checkpoints, "Ctrl-C must leave a checkpoint"
