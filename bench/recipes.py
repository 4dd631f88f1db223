"""Benchmark: a recipe built only from registry names against the GPT-2 recipe, at the same token budget.

Both train the default run's model size on the default corpus for the default
budget (250 steps of 8 x 128 tokens): the GPT-2 recipe is `python main.py` as it
ships (learned positions, LayerNorm, GELU MLP, tied head, AdamW); the other is
`configs/modern-small.toml` (rotary positions, RMSNorm, Muon; nothing else
changed). Each runs with two seeds, the runs
interleaved (gpt2, modern, gpt2, modern) as fresh `main.py` processes after a
one-step warm-up that fills the token cache. Reported: the held-out loss at the
last evaluation, the training wall time (the loop's own clock, in
metrics.jsonl's end record) and the whole command's, and one picture of every
run's validation curve.

    python bench/recipes.py                          # 2 seeds, about 6 minutes on 2 cores
    python bench/recipes.py --seeds 1337 --steps 100 # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RECIPES = {"gpt2": [], "modern": ["--config", str(REPO / "configs" / "modern-small.toml")]}
OTHER_CONFIG_HELP = "the recipe to compare with the GPT-2 recipe (default configs/modern-small.toml)"


def train(recipe: str, seed: int, steps: int, out_dir: Path, cache: Path) -> dict[str, object]:
    name = f"{recipe}-{seed}"
    command = [sys.executable, str(REPO / "main.py"), *RECIPES[recipe], "--set", f"run.seed={seed}", "--set", f"train.max_steps={steps}",
               "--set", f"run.out_dir={out_dir}", "--set", f"run.name={name}", "--set", f"data.cache_dir={cache}",
               "--set", 'train.callbacks=["metrics"]']
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_loss"]) for r in records if r["type"] == "eval"]
    end = next(r for r in records if r["type"] == "end")
    return {"recipe": recipe, "seed": seed, "val_loss": evals[-1][1], "curve": evals, "tokens": end["tokens_seen"],
            "train_seconds": end["elapsed"], "command_seconds": wall}


def plot(runs: list[dict[str, object]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {"gpt2": "tab:blue", "modern": "tab:orange"}
    for run in runs:
        steps, losses = zip(*run["curve"])  # type: ignore[arg-type]
        axes.plot(steps, losses, color=colours[run["recipe"]], alpha=0.85, marker="o", markersize=3,
                  label=f"{run['recipe']} (seed {run['seed']})")
    axes.set_xlabel("step (8 x 128 tokens each)")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title("GPT-2 recipe vs configs/modern-small.toml, same token budget")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "modern-small.toml", help=OTHER_CONFIG_HELP)
    args = parser.parse_args()
    RECIPES["modern"] = ["--config", str(args.config.resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        for recipe in RECIPES:  # warm-up: tokenize once, load the libraries into the page cache
            train(recipe, 0, 1, out, cache)
        runs = [train(recipe, seed, args.steps, out, cache) for seed in args.seeds for recipe in RECIPES]
    summary = {}
    for recipe in RECIPES:
        mine = [r for r in runs if r["recipe"] == recipe]
        summary[recipe] = {
            "val_loss_mean": statistics.mean(r["val_loss"] for r in mine),  # type: ignore[misc]
            "train_seconds_median": statistics.median(r["train_seconds"] for r in mine),  # type: ignore[misc]
            "command_seconds_median": statistics.median(r["command_seconds"] for r in mine),  # type: ignore[misc]
        }
    gap = summary["gpt2"]["val_loss_mean"] - summary["modern"]["val_loss_mean"]
    time_ratio = summary["modern"]["train_seconds_median"] / summary["gpt2"]["train_seconds_median"]
    print(f"{'recipe':8s} {'seed':>5s} {'val loss':>9s} {'train s':>8s} {'command s':>10s} {'tokens':>9s}")
    for r in runs:
        print(f"{r['recipe']:8s} {r['seed']:5d} {r['val_loss']:9.4f} {r['train_seconds']:8.1f} {r['command_seconds']:10.1f} {r['tokens']:9,d}")
    print(f"modern is {gap:.3f} nats lower (target >= 0.10) at {time_ratio:.2f}x the GPT-2 recipe's training time (target <= 1.2x)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recipes.json").write_text(json.dumps({"runs": runs, "summary": summary, "val_loss_gap": gap,
                                                      "train_time_ratio": time_ratio}, indent=2) + "\n")
    plot(runs, RESULTS / "recipes.png")


if __name__ == "__main__":
    main()
