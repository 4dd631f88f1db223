"""bench/train.py --device cuda, as far as a machine without a GPU can check it.

Not marked `cuda`: these run everywhere. Without a GPU the benchmark must stop at
once with one line and exit code 2, and write nothing; its arguments resolve to
the GPU's own defaults without touching the CPU ones; and its bookkeeping
(interleaved rounds, medians, memory per variant, baselines) is run here on CPU
tensors with the few `torch.cuda` calls it makes replaced, so that a GPU run
finds only GPU problems. The CPU defaults are checked too: `--device` must not
change them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env

pytest.importorskip("transformers")

BENCH = REPO_ROOT / "bench" / "train.py"
CPU_RESULTS = [REPO_ROOT / "bench" / "results" / "train.json", REPO_ROOT / "bench" / "README.md"]


def load_bench_train() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_cuda_args", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench_train()


def digests(paths: list[Path]) -> dict[Path, str | None]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in paths}


def test_device_cuda_without_a_gpu_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "train_cuda.json"
    before = digests(CPU_RESULTS)
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this checks the same thing on a GPU machine.
    done = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cuda", "--no-readme", "--json", str(out)],
        cwd=REPO_ROOT, env=subprocess_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--device cuda" in lines[0] and "no CUDA device" in lines[0]
    assert done.stdout == ""
    assert not out.exists() and digests(CPU_RESULTS) == before


def test_cpu_defaults_are_what_they_were() -> None:
    args = bench.parse_args([])
    assert args.device == "cpu"
    assert args.variants == ["gptkit-fp32", "gptkit-bf16", "hf-fp32", "reference-fp32"]
    assert args.json == REPO_ROOT / "bench" / "results" / "train.json"
    assert (args.rounds, args.warmup, args.no_readme) == (7, 2, False)
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--variants", "gptkit-bf16-compile"])  # a GPU variant is no CPU variant
    assert err.value.code == 2


def test_cuda_arguments_resolve_to_the_gpu_defaults(tmp_path: Path) -> None:
    args = bench.parse_args(["--device", "cuda"])
    assert args.variants == [
        "gptkit-bf16", "reference-bf16", "hf-bf16", "gptkit-bf16-compile", "reference-bf16-compile", "hf-bf16-compile",
    ]
    assert args.json == REPO_ROOT / "bench" / "results" / "train_cuda.json" and args.presets == ["gpt2"]
    w = bench.CUDA_WORKLOADS["gpt2"]
    assert (w.preset, w.batch, w.seq_len) == ("gpt2", 16, 1024)
    # What ../shared/device/gpu_check.sh passes.
    args = bench.parse_args(["--device", "cuda", "--no-readme", "--json", str(tmp_path / "x.json")])
    assert args.json == tmp_path / "x.json" and args.no_readme


@pytest.mark.parametrize("flags, message", [
    (["--json", "bench/results/train.json"], "holds the CPU results"),
    (["--preset", "cpu-small"], "times gpt2 only"),
    (["--variants", "gptkit-fp32"], "unknown variant(s) gptkit-fp32 for --device cuda"),
    (["--profile", "gptkit-bf16"], "--profile is for the CPU benchmark"),
])
def test_cuda_refuses_what_it_cannot_do(flags: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the CPU results' path given relative to the checkout, as a user types it
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--device", "cuda", *flags])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_a_cuda_run_writes_its_json_and_leaves_the_cpu_results_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = digests(CPU_RESULTS)
    report = {"settings": {"device": "cuda"}, "presets": {}}
    monkeypatch.setattr(bench, "cuda_report", lambda args, log: report)  # the GPU part itself needs a GPU
    out = tmp_path / "results" / "train_cuda.json"
    bench.main(["--device", "cuda", "--json", str(out)])  # no --no-readme: README is left alone anyway
    assert json.loads(out.read_text()) == report
    assert digests(CPU_RESULTS) == before


def fake_cuda_memory(monkeypatch: pytest.MonkeyPatch, resident: int, working: int) -> None:
    """The torch.cuda calls the GPU bookkeeping makes, answering as if each turn used `working` bytes."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *args: resident)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: resident + working)


@pytest.mark.usefixtures("single_torch_thread")
def test_gpu_bookkeeping_runs_on_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 2**20
    fake_cuda_memory(monkeypatch, resident=5 * mib, working=3 * mib)
    work = bench.Workload("cpu-small", batch=2, seq_len=16, overrides={"context_length": 16, "n_layers": 1})
    names = ["gptkit-bf16", "reference-bf16", "hf-bf16"]  # eager: compiling would only cost time here
    logged: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")  # autocast("cuda") on a CPU-only torch
        result: dict[str, Any] = bench.time_cuda(work, names, rounds=2, warmup=1, log=logged.append, device_name="cpu")
    assert list(result["variants"]) == names and not any("WARNING" in line for line in logged)
    assert logged[-1] == "cpu-small: round 2/2 done"
    for name, r in result["variants"].items():
        assert len(r["runs_s"]["step"]) == 2 and r["step_s"] == sum(r["runs_s"]["step"]) / 2  # one per timed round, their median
        assert r["tokens_per_s"] == pytest.approx(2 * 16 / r["step_s"])
        assert r["step_peak_above_resident_mib"] == 3 and r["max_memory_allocated_mib"] == 8
        # Weights, AdamW's two moments and its step counts (fused: one float32 scalar per parameter).
        params = [p for p in bench.cuda_variant(name, bench.GPTModel(work.model_config()), torch.device("cpu")).model.parameters()]
        assert r["peak_gpu_mib"] == pytest.approx(3 + sum(3 * 4 * p.numel() + 4 for p in params) / mib)
    v = result["variants"]
    assert v["reference-bf16"]["vs_faster_baseline"] == pytest.approx(
        v["reference-bf16"]["tokens_per_s"] / max(v["reference-bf16"]["tokens_per_s"], v["hf-bf16"]["tokens_per_s"]))
    losses = [r["first_loss"] for r in v.values()]
    assert max(losses) - min(losses) < 1e-4  # the same weights and batch for all
    assert [row[0] for row in bench.cuda_table_rows(result)] == names
    assert len(bench.cuda_table_rows(result)[0]) == len(bench.CUDA_HEADERS)
