"""Benchmark: one optimizer step of each registry optimizer over a preset's parameters.

What a researcher pays per step for swapping `train.optimizer`: Muon's
Newton-Schulz iterations (five bfloat16 matmul triples per hidden matrix)
against AdamW's fused single pass, and SGD's momentum. The step alone is timed,
with the same gradients every time, in one process, rounds interleaved
(adamw, sgd, muon, adamw, ...), after warm-up; the figure is each optimizer's
median, and the ratio to AdamW's is taken within the same round.

    python bench/optimizers.py                      # gpt2 (124M), 5 rounds
    python bench/optimizers.py --preset cpu-small --rounds 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_run_config
from gptkit import GPTModel, model_preset
from gptkit.plugins import default_registry
from gptkit.training.optimizers import build_optimizer

OPTIMIZERS = ("adamw", "sgd", "muon")
RESULTS = Path(__file__).parent / "results" / "optimizers.json"


def timed_steps(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    registry = default_registry()
    cfg = load_run_config(preset=args.preset)
    models, optimizers = {}, {}
    for name in OPTIMIZERS:
        model = GPTModel(model_preset(args.preset))
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        spec = cfg.train.optimizer if name == "adamw" else name
        models[name] = model
        optimizers[name] = build_optimizer(registry, spec, model, cfg.train.lr, torch.device("cpu"), False)
        timed_steps(optimizers[name], 2)  # warm-up: state allocated, kernels chosen
    times: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    ratios: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for _ in range(args.rounds):
        for name in OPTIMIZERS:
            times[name].append(timed_steps(optimizers[name], args.steps))
        for name in OPTIMIZERS:
            ratios[name].append(times[name][-1] / times["adamw"][-1])
    params = sum(p.numel() for p in models["adamw"].parameters())
    result = {
        "preset": args.preset, "parameters": params, "threads": args.threads, "rounds": args.rounds, "steps_per_timing": args.steps,
        "step_ms": {n: round(statistics.median(t) * 1e3, 1) for n, t in times.items()},
        "vs_adamw": {n: round(statistics.median(r), 2) for n, r in ratios.items()},
        "torch": torch.__version__,
    }
    print(f"{args.preset} ({params / 1e6:.1f}M parameters), optimizer step only, median of {args.rounds} interleaved rounds:")
    for name in OPTIMIZERS:
        print(f"  {name:6s} {result['step_ms'][name]:8.1f} ms   {result['vs_adamw'][name]:.2f}x adamw")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
