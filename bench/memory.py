"""Benchmark: the memory and time of one training step, full finetuning against LoRA, each
with and without activation checkpointing.

    python bench/memory.py [--preset gpt2|gpt2-medium|gpt2-large] [--batch 4] [--seq-len 256]
                           [--steps 5] [--warmup 1] [--dtype bfloat16|float32]
                           [--configs full,full+ckpt,lora,lora+ckpt] [--every 1]
                           [--rank 8] [--targets 'blocks.*.att.qkv,blocks.*.att.out_proj']
                           [--out bench/results/memory.json] [--threads N]

Each configuration runs in a fresh interpreter of its own, so its peak resident set
(VmHWM) is its own and glibc's heap carries no history from another. The model is the
preset with random weights, built and stepped as the Trainer does it: `train.lora`
(`gptkit.training.lora.wrap_lora`, rank `--rank`, alpha twice the rank, on `--targets`),
`gptkit.kernels.accelerate`, then
`run.activation_checkpointing` (every `--every`-th block), trainer.make_optimizer's fused
AdamW, the loss without logits, clipping to 1.0, the retaining malloc policy
(`gptkit.kernels.training_memory`). A step is forward, backward, clip, AdamW step,
zero_grad; `--warmup` untimed steps, then `--steps` timed ones, the median reported.

"lora" is train.lora's default: rank 8, alpha 16, on the attention's two projections
(0.35% of GPT-2 124M's parameters train). Its frozen base gets no gradient and no
optimizer state; the backward pass still runs through every block.

As a check that checkpointing changes memory and time only, a configuration's first
loss must equal the same configuration's without checkpointing (same weights, batch
and seed), or the run stops. Results: bench/results/memory.json (or --out) and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _common import run_json_child
from train import machine_info, proc_status_mib

from config import RunConfig
from gptkit import GPTModel
from gptkit.dtypes import torch_dtype
from gptkit.kernels import accelerate, training_memory
from gptkit.model.config import model_preset
from gptkit.training.activation_checkpointing import (
    apply_activation_checkpointing,
    is_checkpointed,
)
from gptkit.training.lora import LoRASettings, wrap_lora
from trainer import make_optimizer

DEFAULT_OUT = ROOT / "bench" / "results" / "memory.json"
PRESETS = ("gpt2", "gpt2-medium", "gpt2-large")
CONFIGS = ("full", "full+ckpt", "lora", "lora+ckpt")
DEFAULT_TARGETS = "blocks.*.att.qkv,blocks.*.att.out_proj"  # train.lora's default
GRAD_CLIP = 1.0


def build(preset: str, seq_len: int, lora: LoRASettings | None, every: int) -> tuple[GPTModel, torch.optim.Optimizer, int]:
    """The model and optimizer as the Trainer makes them; also how many parameters train."""
    torch.manual_seed(0)
    model = GPTModel(model_preset(preset, context_length=max(seq_len, model_preset(preset).context_length)))
    if lora is not None:
        wrap_lora(model, lora)  # before accelerate, as the Trainer: it reaches the base linears inside
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerate(model)
    apply_activation_checkpointing(model, every)
    return model.train(), make_optimizer(model, RunConfig(), torch.device("cpu")), trained


def random_batch(vocab_size: int, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = torch.randint(0, vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(1))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def train_step(model: GPTModel, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> float:
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, loss = model(x, y, keep_logits=False)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def run_config_child(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """In a fresh process: build configuration `name`, step it, report its peak RSS and step times."""
    before = proc_status_mib("VmRSS")
    lora = LoRASettings(args.rank, 2.0 * args.rank, 0.0, tuple(args.targets)) if name.startswith("lora") else None
    model, optimizer, trained = build(args.preset, args.seq_len, lora, args.every if name.endswith("+ckpt") else 0)
    x, y = random_batch(model.cfg.vocab_size, args.batch, args.seq_len)
    dtype = torch_dtype(args.dtype)
    seconds, losses = [], []
    with training_memory(torch.device("cpu")):
        for i in range(args.warmup + args.steps):
            started = time.perf_counter()
            losses.append(train_step(model, optimizer, x, y, dtype))
            if i >= args.warmup:
                seconds.append(time.perf_counter() - started)
    return {
        "peak_rss_mib": proc_status_mib("VmHWM"),  # not ru_maxrss, which Linux carries over fork and exec
        "rss_before_model_mib": before,
        "step_ms": 1000 * statistics.median(seconds),
        "step_ms_all": [1000 * s for s in seconds],
        "trainable_parameters": trained,
        "parameters": model.num_parameters(),
        "checkpointed_blocks": sum(1 for b in model.blocks if is_checkpointed(b)),
        "first_loss": losses[0],
    }


def check_losses(results: dict[str, dict[str, Any]]) -> None:
    for name, r in results.items():
        plain = results.get(name.removesuffix("+ckpt"))
        if name.endswith("+ckpt") and plain is not None and r["first_loss"] != plain["first_loss"]:
            raise SystemExit(f"{name}'s first loss {r['first_loss']!r} differs from {plain['first_loss']!r} without checkpointing")


HEADERS = ["configuration", "trainable", "checkpointed blocks", "peak RSS MiB", "vs full", "step ms", "vs full", "first loss"]


def table_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    full = results.get("full")
    rows = []
    for name, r in results.items():
        share = f"{r['trainable_parameters'] / 1e6:.2f}M ({100 * r['trainable_parameters'] / r['parameters']:.2f}%)"
        rss_ratio = f"{r['peak_rss_mib'] / full['peak_rss_mib']:.2f}x" if full else "-"
        time_ratio = f"{r['step_ms'] / full['step_ms']:.2f}x" if full else "-"
        rows.append([name, share, str(r["checkpointed_blocks"]), f"{r['peak_rss_mib']:.0f}", rss_ratio,
                     f"{r['step_ms']:.0f}", time_ratio, f"{r['first_loss']:.4f}"])
    return rows


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    w = report["workload"]
    table = Table(title=f"{w['preset']}: batch {w['batch']} x {w['seq_len']}, {w['dtype']}, median of {w['steps']} steps")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in table_rows(report["configs"]):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: no terminal width to squeeze the table into
    console.print(table)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="gpt2", help="the model, random weights (default gpt2)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration, the median reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="autocast dtype, run.dtype's default (bfloat16)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)} (default all)")
    p.add_argument("--every", type=int, default=1, help="run.activation_checkpointing of the +ckpt configurations (default 1: every block)")
    p.add_argument("--rank", type=int, default=8, help="train.lora.rank of 'lora', alpha twice that (default 8)")
    p.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma list of train.lora.targets of 'lora' (default '{DEFAULT_TARGETS}')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for flag in ("batch", "seq_len", "steps", "every", "rank"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        p.error(f"--configs: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; choose from {', '.join(CONFIGS)}")
    args.configs = list(dict.fromkeys(configs))
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets:
        p.error("--targets: none given")
    return args


def child_flags(args: argparse.Namespace, name: str) -> list[str]:
    return ["--child", name, "--preset", args.preset, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype", args.dtype, "--every", str(args.every),
            "--rank", str(args.rank), "--targets", ",".join(args.targets)]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(run_config_child(args, args.child)))
        return
    threads = args.threads or torch.get_num_threads()
    results = {}
    for name in args.configs:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = run_json_child(__file__, child_flags(args, name), threads, f"configuration {name}")
    check_losses(results)
    report = {
        "machine": machine_info(threads),
        "workload": {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
                     "steps": args.steps, "warmup": args.warmup, "every": args.every,
                     "lora": {"rank": args.rank, "alpha": 2.0 * args.rank, "targets": args.targets}},
        "configs": results,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
