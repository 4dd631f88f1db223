"""Does bf16 autocast train as well as float32? Two real training runs, compared.

    python bench/loss_curve.py [--steps 200] [--window 50] [--threads N]

The cpu-small model (context 256, batch 8) trained with the project's Trainer
on the default corpus (Python's standard library), once with run.dtype=float32
and once with run.dtype=bfloat16: same seed, so the same initial weights and
the same batches, and the default schedule, optimizer and clipping. Per-step
training losses are averaged over windows of `--window` steps (one step's loss
is too noisy a thing to compare) and the largest relative gap between the two
runs' window means is reported, with the final validation losses. The issue's
target: within 2%.

Writes bench/results/loss_curve.json and bench/results/loss_curve.png. About
ten minutes on two cores for 200 steps; step times are logged but the runs are
not interleaved, so they are no speed measurement (bench/train.py is).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import config as run_config
from gptkit import hookimpl
from gptkit.data.corpus import default_cache_dir
from gptkit.data.dataset import PreparedData, prepare_dataset
from gptkit.plugins import default_registry
from trainer import Trainer

RESULTS_DIR = ROOT / "bench" / "results"
DTYPES = ("float32", "bfloat16")
TARGET = 0.02


class Recorder:
    """Collects what the trainer reports through its callback hooks."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self.val: dict[int, float] = {}
        self._last_elapsed = 0.0

    @hookimpl
    def gptkit_step_end(self, trainer: Any, metrics: Any) -> None:
        self.losses.append(metrics.loss)
        self.step_seconds.append(metrics.elapsed - self._last_elapsed)
        self._last_elapsed = metrics.elapsed

    @hookimpl
    def gptkit_evaluate(self, trainer: Any, metrics: Any) -> None:
        self.val[metrics.step] = metrics.val_loss


def train(dtype: str, steps: int, eval_every: int, data: PreparedData, tokenizer: Any, run_dir: Path) -> Recorder:
    cfg = run_config.load_run_config(overrides=[
        "model.context_length=256", "train.batch_size=8", f"train.max_steps={steps}",
        f"train.eval_every={eval_every}", "train.callbacks=[]", f"run.dtype={dtype}", "run.device=cpu",
    ])
    recorder = Recorder()
    trainer = Trainer(cfg, run_dir, data, tokenizer, default_registry(), extra_callbacks=[recorder])
    started = time.perf_counter()
    trainer.fit()
    print(f"{dtype}: {steps} steps in {time.perf_counter() - started:.0f} s, final train loss "
          f"{recorder.losses[-1]:.4f}, val {recorder.val[max(recorder.val)]:.4f}", file=sys.stderr)
    return recorder


def window_means(losses: list[float], window: int) -> list[float]:
    """Means of consecutive `window`-step windows; a shorter run is one window."""
    window = min(window, len(losses))
    return [statistics.fmean(losses[i:i + window]) for i in range(0, len(losses) - window + 1, window)]


def relative_gap(a: float, b: float) -> float:
    return abs(b - a) / abs(a)


def compare(runs: dict[str, Recorder], window: int) -> dict[str, Any]:
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    means = {name: window_means(r.losses, window) for name, r in runs.items()}
    gaps = [relative_gap(a, b) for a, b in zip(means["float32"], means["bfloat16"])]
    last = max(fp32.val)
    val_gap = relative_gap(fp32.val[last], bf16.val[last])
    return {
        "window": min(window, len(fp32.losses)),
        "window_means": means,
        "window_relative_gaps": gaps,
        "max_window_relative_gap": max(gaps),
        "final_val_loss": {"float32": fp32.val[last], "bfloat16": bf16.val[last]},
        "final_val_relative_gap": val_gap,
        "target": f"bf16 within {TARGET:.0%} of fp32 (window means and final val loss)",
        "met": max(gaps) <= TARGET and val_gap <= TARGET,
    }


def plot(runs: dict[str, Recorder], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, r), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        window = summary["window"]
        means = summary["window_means"][name]
        ax.plot(range(1, len(r.losses) + 1), r.losses, color=color, alpha=0.3, linewidth=0.8)
        # Each window's mean drawn across the steps it averages: the figures compared.
        edges = [window * i + 0.5 for i in range(len(means) + 1)]
        ax.stairs(means, edges, baseline=None, color=color, linewidth=2, label=f"{name} train ({window}-step means)")
        ax.plot(list(r.val), list(r.val.values()), "o--", color=color, label=f"{name} val")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(
        f"cpu-small, batch 8 x 256: bf16 vs fp32 — max gap of {summary['window']}-step means "
        f"{summary['max_window_relative_gap']:.2%}, final val {summary['final_val_relative_gap']:.2%}",
        fontsize=9,
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=int, default=50, help="steps per averaged window of training loss")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "loss_curve.json")
    parser.add_argument("--png", type=Path, default=RESULTS_DIR / "loss_curve.png")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    defaults = run_config.load_run_config()
    tokenizer = default_registry().create("tokenizer", defaults.data.tokenizer)
    data = prepare_dataset(None, tokenizer, default_cache_dir(), defaults.data.val_fraction)
    eval_every = min(args.window, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {dtype: train(dtype, args.steps, eval_every, data, tokenizer, Path(tmp) / dtype) for dtype in DTYPES}
    summary = compare(runs, args.window)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "settings": {"preset": "cpu-small", "context_length": 256, "batch_size": 8, "steps": args.steps,
                     "eval_every": eval_every, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
        "summary": summary,
        "runs": {name: {"train_loss": r.losses, "val_loss": r.val, "median_step_s": statistics.median(r.step_seconds)}
                 for name, r in runs.items()},
    }, indent=2) + "\n")
    plot(runs, summary, args.png)
    print(f"max relative gap of {summary['window']}-step mean train losses: {summary['max_window_relative_gap']:.2%}")
    print(f"final val loss: fp32 {summary['final_val_loss']['float32']:.4f}, bf16 {summary['final_val_loss']['bfloat16']:.4f} "
          f"({summary['final_val_relative_gap']:.2%})")
    print(f"target ({summary['target']}): {'met' if summary['met'] else 'NOT met'}")
    print(f"written to {args.json} and {args.png}")


if __name__ == "__main__":
    main()
