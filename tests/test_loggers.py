"""Experiment loggers (csv, tensorboard, wandb offline) read back against metrics.jsonl, across a crash and a resume; the best checkpoint."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from gptkit import GptkitError, hookimpl
from gptkit.training.callbacks.tensorboard import TensorBoardLogger
from gptkit.training.callbacks.wandb_logger import WandbLogger
from gptkit.training.checkpoint import latest_checkpoint
from gptkit.training.train_state import CallbackContext
from tests.test_trainer import corpus, make_trainer

__all__ = ["corpus"]  # a fixture from test_trainer, used by name

LOGGERS = '["metrics", "csv", "tensorboard", {"name": "wandb", "project": "test"}, {"name": "checkpoint", "every": 3}]'


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def gptkit_step_end(self, trainer, metrics) -> None:
        if metrics.step == self.step:
            raise RuntimeError("the machine went away")


def jsonl_figures(run_dir: Path) -> dict[tuple[int, str], float]:
    figures = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "train":
            figures[(record["step"], "train/loss")] = record["loss"]
            figures[(record["step"], "train/lr")] = record["lr"]
        elif record["type"] == "eval":
            figures[(record["step"], "val/loss")] = record["val_loss"]
    return figures


def wandb_history(run_dir: Path) -> list[dict[str, str]]:
    """The history rows of every offline attempt, in the order they were written: W&B's own
    transaction log format (LevelDB-style 32 KiB blocks of crc, length, type chunks) around protobuf records."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime_ns):
        data, pos, pending = path.read_bytes(), 7, b""  # 7: W&B's file header
        while pos + 7 <= len(data):
            room = 32768 - pos % 32768
            if room < 7:
                pos += room
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:
                pos += room
                continue
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or a record's last chunk
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_loggers_agree_with_metrics_jsonl_across_a_crash_and_resume(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    settings = ["train.max_steps=8", "train.eval_every=2", f"train.callbacks={LOGGERS}"]
    first, _ = make_trainer(corpus, run_dir, settings)
    first.hooks.register(CrashAt(5))  # steps 4 and 5 are logged, then lost: the last checkpoint is step 3
    with pytest.raises(RuntimeError):
        first.fit()
    assert latest_checkpoint(run_dir).name == "step_000003"
    second, _ = make_trainer(corpus, run_dir, settings, resume=latest_checkpoint(run_dir))
    second.fit()

    expected = jsonl_figures(run_dir)
    assert sorted({s for s, _ in expected}) == list(range(1, 9))

    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "name", "value"]
    logged = [(int(step), name) for step, name, _ in rows[1:]]
    assert len(logged) == len(set(logged)), "no step logged twice"
    assert [s for s, _ in logged] == sorted(s for s, _ in logged), "no step goes backwards"
    csv_values = {(int(step), name): float(value) for step, name, value in rows[1:]}
    assert {k: v for k, v in csv_values.items() if k in expected} == expected  # float for float

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag in ("train/loss", "val/loss"):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == sorted({s for s, name in expected if name == tag}), tag
        for e in scalars:
            assert e.value == pytest.approx(expected[(e.step, tag)], rel=1e-6), (tag, e.step)  # stored as float32

    history = wandb_history(run_dir)
    steps = [int(row["_step"]) for row in history]
    assert steps == sorted(set(steps)) == list(range(1, 9)), steps
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2  # two attempts ...
    assert len({p.name for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")}) == 1  # ... of one W&B run
    for row in history:
        step = int(row["_step"])
        assert float(row["train/loss"]) == expected[(step, "train/loss")]
        if (step, "val/loss") in expected:
            assert float(row["val/loss"]) == expected[(step, "val/loss")]


def test_a_missing_logger_package_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    context = CallbackContext(run_dir=tmp_path, total_steps=1, is_main_process=True, tokenizer=None, samplers=[])
    for module, factory in (("tensorboard", TensorBoardLogger), ("wandb", WandbLogger)):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
        with pytest.raises(GptkitError) as err:
            factory(context)
        assert str(err.value) == f"callback '{module}' needs the {module} package, which is not installed: pip install -e \".[{module}]\""


def test_keep_best_keeps_the_lowest_validation_loss(corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer, recorder = make_trainer(corpus, run_dir, [
        "train.max_steps=12", "train.eval_every=2", "train.lr=3e-2",  # a high lr: the validation loss goes up and down
        'train.callbacks=["metrics", {"name": "checkpoint", "every": 100, "keep_last": 1, "keep_best": true}]',
    ])
    trainer.fit()
    best_step = min(recorder.evals, key=recorder.evals.get)
    assert best_step < 12, recorder.evals  # the best is not simply the last
    best = run_dir / "checkpoints" / "best"
    assert json.loads((best / "trainer.json").read_text())["state"]["step"] == best_step
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(("step_", "best", ".best")))
    assert kept == ["best", "step_000012"]  # keep_last 1 pruned the best's own step folder; its files live on
    assert latest_checkpoint(run_dir).name == "step_000012"
