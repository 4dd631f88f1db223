"""Training-step time of the cpu-small preset under bf16 autocast: the loss taken on
float32-upcast logits (what autocast does by default) against `next_token_loss`,
which keeps the bf16 logits. Interleaved in one process, warm-up, median of 5.

    python bench/loss_path.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gptkit.kernels.fused_loss as model_module  # noqa: E402  (the bf16-aware next_token_loss)
from gptkit import GPTModel, model_preset  # noqa: E402

BATCH, REPEATS = 8, 5


def upcast_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def main() -> None:
    torch.manual_seed(0)
    model = GPTModel(model_preset("cpu-small"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x, y = (torch.randint(0, 50257, (BATCH, 128)) for _ in range(2))
    variants = {"float32 upcast": upcast_loss, "next_token_loss (bf16)": model_module.next_token_loss}
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    for repeat in range(REPEATS + 1):
        for name, loss_fn in variants.items():
            model_module.next_token_loss = loss_fn  # GPTModel.forward looks it up at call time
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, loss = model(x, y)
            loss.backward()
            optimizer.zero_grad(set_to_none=True)  # no step: both variants see the same weights
            if repeat:  # the first round is warm-up
                times[name].append(time.perf_counter() - start)
            losses[name] = loss.item()
    print("| loss path | median s/step (fwd+bwd) | loss |\n|---|---:|---:|")
    for name in variants:
        print(f"| {name} | {statistics.median(times[name]):.3f} | {losses[name]:.4f} |")


if __name__ == "__main__":
    main()
