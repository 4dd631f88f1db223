"""Training under torchrun: two CPU processes (gloo) against one process with the same global batch.

The subprocess tests share one single-process reference run (batch 4 x 2
accumulation steps = 8 sequences per step). A two-process run with batch 2 x 2
accumulation steps trains on the same 8 windows per step, so its losses must
equal the reference's up to float rounding; so must a resume of it in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from conftest import REPO_ROOT, subprocess_env

import config as run_config
from gptkit import ConfigError, GptkitError
from gptkit.data.batches import BatchSampler, fixed_batches
from gptkit.data.dataset import prepare_dataset
from gptkit.data.shards import TokenFile
from gptkit.data.tokenizer import Tokenizer
from gptkit.plugins import default_registry
from gptkit.training import distributed
from gptkit.training.checkpoint import read_tensors
from trainer import Trainer

TINY = [
    "model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", "model.context_length=16", "model.drop_rate=0",
    "run.dtype=float32", "train.eval_batches=2", "train.eval_every=3", "train.grad_accum_steps=2",
    'train.scheduler={"name": "constant", "warmup_steps": 2}',  # lr depends on the step only, not on max_steps
]
QUIET = 'train.callbacks=["metrics", "checkpoint"]'
REL = 1e-5  # float rounding: gradients summed in another order


# --- batches: the same windows however a step is split -------------------------------


def token_file(tmp_path: Path, n: int = 5_000) -> TokenFile:
    tokens = np.random.default_rng(3).integers(0, 50_000, n).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    return TokenFile(path, n)


def test_a_step_has_the_same_windows_however_it_is_split(tmp_path: Path) -> None:
    tf = token_file(tmp_path)
    one = BatchSampler(tf, 8, 16, seed=4).batch(5)[0]
    two_procs = BatchSampler(tf, 2, 16, seed=4, world_size=2)
    # micro-step-major: micro 0 of ranks 0 and 1, then micro 1 of ranks 0 and 1
    split = torch.cat([two_procs.batch(5, micro, rank)[0] for micro in range(2) for rank in range(2)])
    accumulated = torch.cat([BatchSampler(tf, 4, 16, seed=4).batch(5, micro)[0] for micro in range(2)])
    assert torch.equal(one, split) and torch.equal(one, accumulated)
    assert not torch.equal(one, BatchSampler(tf, 8, 16, seed=4).batch(6)[0])
    with pytest.raises(GptkitError, match="rank 2 is outside the 2 processes"):
        two_procs.batch(5, 0, rank=2)


def test_validation_shares_cover_the_set_once(tmp_path: Path) -> None:
    tf = token_file(tmp_path)
    whole = torch.cat([x for x, _ in fixed_batches(tf, 6, 16, 3, seed=9)])
    # 3 processes, micro-batch 1: shares of 2 windows per batch, in pieces of 1.
    shares = [fixed_batches(tf, 1, 16, 3, seed=9, rank=r, world_size=3, global_batch=6) for r in range(3)]
    by_batch = [torch.cat([x for x, _ in share[2 * b : 2 * b + 2]]) for b in range(3) for share in shares]
    assert torch.equal(whole, torch.cat(by_batch))
    # 4 processes cannot split 6 evenly: 1, 2, 1, 2 windows per batch, still each once.
    uneven = [fixed_batches(tf, 2, 16, 1, seed=9, rank=r, world_size=4, global_batch=6) for r in range(4)]
    assert [sum(len(x) for x, _ in share) for share in uneven] == [1, 2, 1, 2]
    assert torch.equal(whole[:6], torch.cat([x for share in uneven for x, _ in share]))


def test_split_global_batch_keeps_the_global_batch() -> None:
    assert distributed.split_global_batch(8, 2, 2) == (2, 2)  # fresh: batch 2 x 2 steps x 2 processes
    assert distributed.split_global_batch(8, 2, 1) == (2, 4)  # 2 processes -> 1: accumulation doubles
    assert distributed.split_global_batch(8, 8, 2) == (4, 1)  # 1 -> 2 with no accumulation to halve
    assert distributed.split_global_batch(12, 4, 2) == (3, 2)  # 6 per process: largest micro-batch <= 4
    with pytest.raises(GptkitError, match="12 sequences per step does not split evenly over 5 processes"):
        distributed.split_global_batch(12, 4, 5)


def test_one_named_gpu_for_several_processes_is_refused() -> None:
    two = distributed.ProcessInfo(rank=1, world_size=2, local_rank=1, active=True)
    with pytest.raises(ConfigError) as err:
        distributed.check_device("cuda:1", two)
    assert str(err.value) == (
        "run.device=cuda:1 names one GPU, but torchrun started 2 processes; use run.device=cuda (each process takes cuda:LOCAL_RANK)"
    )
    distributed.check_device("cuda", two)  # each process takes its own
    distributed.check_device("cuda:1", distributed.ProcessInfo())  # one process may name any GPU


# --- gradient sync on the last micro-step only (one process in a real process group) --


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(600)))
    return path


def test_ddp_communicates_once_per_accumulated_step(tmp_path: Path, corpus: Path) -> None:
    tdist.init_process_group("gloo", store=tdist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        calls = {}
        for accum in (1, 4):
            cfg = run_config.load_run_config(
                overrides=[*TINY, f"train.grad_accum_steps={accum}", "train.batch_size=2", "train.callbacks=[]",
                           f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "run.device=cpu"]
            )
            tokenizer = Tokenizer()
            data = prepare_dataset(str(corpus), tokenizer, tmp_path / "cache", cfg.data.val_fraction)
            trainer = Trainer(cfg, tmp_path / f"run{accum}", data, tokenizer, default_registry())
            assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
            count = [0]

            # `bucket` is a tdist.GradBucket; DDP refuses the string annotations of this module.
            def counting_hook(state, bucket, count=count):  # type: ignore[no-untyped-def]
                count[0] += 1
                future: torch.futures.Future = torch.futures.Future()
                future.set_result(bucket.buffer())
                return future

            trainer.train_model.register_comm_hook(None, counting_hook)
            trainer.train_step(0)
            calls[accum] = count[0]
        assert calls[1] > 0 and calls[4] == calls[1]  # not 4x: inner micro-steps skip the all-reduce
    finally:
        tdist.destroy_process_group()


# --- two processes under torchrun ------------------------------------------------------
# Each test makes its own single-process reference, so none depends on another
# (pytest-xdist may run them in different workers).


def sets(*items: str) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def run_main(args: list[str], cwd: Path, processes: int = 1, log_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    if processes == 1:
        command = [sys.executable, str(REPO_ROOT / "main.py"), *args]
    else:
        # -r 3: each process's stdout and stderr go to files of their own under log_dir.
        logs = ["--log-dir", str(log_dir), "-r", "3"] if log_dir else []
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   *logs, str(REPO_ROOT / "main.py"), *args]
    result = subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def records(run_dir: Path) -> tuple[dict[int, float], dict[int, float], list[dict]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["type"] == "train"]
    assert len({r["step"] for r in train}) == len(train), "one writer: each step recorded once"
    return {r["step"]: r["loss"] for r in train}, {r["step"]: r["val_loss"] for r in lines if r["type"] == "eval"}, train


def process_log(log_dir: Path, rank: int, stream: str) -> str:
    (path,) = log_dir.glob(f"*/attempt_0/{rank}/{stream}.log")
    return path.read_text()


def common(corpus: Path, name: str) -> list[str]:
    return sets(*TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
                f"run.out_dir={corpus.parent / 'runs'}", f"run.name={name}")


def assert_same_losses(mine: dict[int, float], theirs: dict[int, float], steps: list[int]) -> None:
    assert sorted(mine) == steps
    for step in steps:
        assert mine[step] == pytest.approx(theirs[step], rel=REL), step


def test_two_processes_train_like_one_and_resume_on_one(corpus: Path) -> None:
    runs = corpus.parent / "runs"
    # One process, batch 4 x 2 accumulation steps: 8 sequences per step.
    run_main([*common(corpus, "one"), *sets("train.batch_size=4", "train.max_steps=6", QUIET)], corpus.parent)
    ref_train, ref_val, ref_records = records(runs / "one")

    # Two processes, batch 2 x 2 each: the same 8 windows per step. Early stopping (which
    # runs on process 0 only) must stop both after step 3, where the loss crosses its target.
    target = (ref_train[2] + ref_train[3]) / 2
    early = f'{{"name": "early_stopping", "target_loss": {target}, "monitor": "train"}}'
    logs = corpus.parent / "logs"
    two = [*common(corpus, "two"), *sets("train.batch_size=2", "train.max_steps=100",
                                         f'train.callbacks=["console", "metrics", "checkpoint", {early}]')]
    run_main(two, corpus.parent, processes=2, log_dir=logs)
    train, val, mine = records(runs / "two")
    assert_same_losses(train, ref_train, [1, 2, 3])
    assert val[3] == pytest.approx(ref_val[3], rel=REL)
    assert [r["tokens_seen"] for r in mine] == [r["tokens_seen"] for r in ref_records[:3]] == [128, 256, 384]
    assert [p.name for p in (runs / "two" / "checkpoints").glob("step_*")] == ["step_000003"]
    # Only process 0 prints: process 1's output is empty, process 0's holds the summary.
    assert process_log(logs, 1, "stdout") == "" and process_log(logs, 1, "stderr") == ""
    out = process_log(logs, 0, "stdout")
    assert "cpu x 2 processes (ddp)" in out and "training finished" in out and "below the target" in out

    # Resumed in one process, it keeps the global batch (batch 2 x 4 steps) and goes on
    # exactly as the uninterrupted single-process run did.
    resumed = run_main(["--resume", str(runs / "two"), *sets("train.max_steps=6", QUIET)], corpus.parent)
    assert "keeping the run's global batch of 8 sequences" in " ".join(resumed.stdout.split())
    train, val, _ = records(runs / "two")
    assert_same_losses(train, ref_train, [1, 2, 3, 4, 5, 6])
    assert val[6] == pytest.approx(ref_val[6], rel=REL)


def test_fsdp_on_cpu_trains_like_one_process_and_saves_whole_tensors(corpus: Path) -> None:
    # torch 2.13's fully_shard runs on CPU with gloo, so FSDP is tested for real here.
    runs = corpus.parent / "runs"
    run_main([*common(corpus, "one"), *sets("train.batch_size=4", "train.max_steps=3", QUIET)], corpus.parent)
    run_main([*common(corpus, "fsdp"), *sets("train.batch_size=2", "train.max_steps=3", "run.parallel=fsdp", QUIET)],
             corpus.parent, processes=2)
    ref_train, ref_val, _ = records(runs / "one")
    train, val, _ = records(runs / "fsdp")
    assert_same_losses(train, ref_train, [1, 2, 3])
    assert val[3] == pytest.approx(ref_val[3], rel=REL)
    # The checkpoint holds whole tensors under the names one process writes, with the same values.
    for name in ("model.safetensors", "optimizer.safetensors"):
        mine = read_tensors(runs / "fsdp" / "checkpoints" / "step_000003" / name)
        theirs = read_tensors(runs / "one" / "checkpoints" / "step_000003" / name)
        assert mine.keys() == theirs.keys(), name
        for key, value in theirs.items():
            if not key.startswith("rng."):
                torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_muon_under_ddp_trains_like_one_process_and_sgd_under_fsdp_too(corpus: Path) -> None:
    runs = corpus.parent / "runs"
    for optimizer, parallel in [("muon", "ddp"), ('{"name": "sgd", "nesterov": true}', "fsdp")]:
        name = optimizer[:12].strip('{"')
        chosen = f"train.optimizer={optimizer}"
        run_main([*common(corpus, f"{name}-one"), *sets("train.batch_size=4", "train.max_steps=3", chosen, QUIET)], corpus.parent)
        run_main([*common(corpus, f"{name}-two"), *sets("train.batch_size=2", "train.max_steps=3", chosen, f"run.parallel={parallel}", QUIET)],
                 corpus.parent, processes=2)
        ref_train, _, _ = records(runs / f"{name}-one")
        train, _, _ = records(runs / f"{name}-two")
        assert_same_losses(train, ref_train, [1, 2, 3])


def test_muon_under_fsdp_is_refused_with_a_message(corpus: Path) -> None:
    logs = corpus.parent / "muon-fsdp-logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--log-dir", str(logs), "-r", "3",
               str(REPO_ROOT / "main.py"), *common(corpus, "muon-fsdp"),
               *sets("train.batch_size=2", "train.max_steps=2", "train.optimizer=muon", "run.parallel=fsdp", QUIET)]
    result = subprocess.run(command, cwd=corpus.parent, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    # Process 0 says why in one line (the others stay quiet, as they do for any message), both exit 2,
    # and torchrun then reports the failed children itself.
    said = process_log(logs, 0, "stdout") + process_log(logs, 0, "stderr")
    assert "error: train.optimizer 'muon' orthogonalises whole weight matrices, and run.parallel=fsdp" in said, said
    assert "Traceback" not in said + process_log(logs, 1, "stderr")
    assert "exitcode  : 2" in result.stderr
