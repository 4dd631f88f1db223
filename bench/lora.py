"""Benchmark: one LoRA finetuning step, gptkit against Hugging Face's GPT2LMHeadModel + PEFT, and against full finetuning.

    python bench/lora.py [--preset gpt2|gpt2-medium] [--rounds 5] [--warmup 1] [--dtype bfloat16|float32]
                         [--skip-peft] [--skip-full] [--no-memory] [--out bench/results/lora.json] [--threads N]

Three variants of one model (the preset, random weights), batch 4 x 256 random tokens:

    gptkit-lora   the Trainer's LoRA path: GPTModel, `wrap_lora` (rank 8, alpha 16, on
                  blocks.N.att.qkv and blocks.N.att.out_proj), `gptkit.kernels.accelerate`,
                  the loss without logits, the retaining malloc policy
    peft-lora     GPT2LMHeadModel (sdpa) with the same weights (gptkit's converter), then
                  `peft.get_peft_model` with LoraConfig(r=8, lora_alpha=16, fan_in_fan_out=True)
                  on transformer.h.N.attn.c_attn and transformer.h.N.attn.c_proj (the
                  attention's, not the MLP's c_proj), its adapters copied from gptkit-lora's
    gptkit-full   the same GPTModel finetuned whole (bench/train.py's gptkit variant)

Each takes bench/train.py's step: loss, backward, clipping to 1.0, trainer.make_optimizer's
fused AdamW over the parameters that train, zero_grad, under bf16 autocast (--dtype).

Before any timing both LoRA sides take two float32 steps from copies of the same
weights and adapters; their losses must agree to 1e-4 at each, or the run stops. The
first loss checks the weights (B starts at zero, so the adapters add nothing yet);
the second checks that A, the gradients and AdamW agree too. Then, in a fresh process:
`--warmup` untimed rounds and `--rounds` timed ones, each giving every variant one
turn (bench/train.py's `turn`: three steps, the last timed; who goes first rotates);
medians. Peak RSS: one fresh process per variant (bench/train.py's `peak_rss`, VmHWM).
Results: bench/results/lora.json (one entry per preset, or --out) and a table;
bench/README.md's "LoRA" section says how to read them.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import train as bench_train
from _common import run_json_child
from train import Variant, Workload

from gptkit import GPTModel, ModelConfig
from gptkit.interop.peft_adapter import hf_module_name
from gptkit.training.lora import LoRASettings, adapter_tensors, wrap_lora

DEFAULT_OUT = ROOT / "bench" / "results" / "lora.json"
WORKLOADS = {preset: Workload(preset, batch=4, seq_len=256) for preset in ("gpt2", "gpt2-medium")}
DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast
# train.lora's defaults: rank 8, alpha 16, the attention's two projections.
SETTINGS = LoRASettings(rank=8, alpha=16.0, dropout=0.0, targets=("blocks.*.att.qkv", "blocks.*.att.out_proj"))
VARIANTS = ("gptkit-lora", "peft-lora", "gptkit-full")
SPEEDUP_TARGET = 1.5  # gptkit-lora tokens/s over peft-lora's
LOSS_TOLERANCE = 1e-4  # float32, absolute, as bench/finetune.py's check
CHECK_STEPS = 2
MEMORY_STEPS = 3  # as bench/train.py's memory children


# --- the variants --------------------------------------------------------------------


def peft_model(hf: Any, lora_model: GPTModel | None) -> Any:
    """`hf` wrapped by PEFT on the linears gptkit's SETTINGS adapt; their adapters copied from `lora_model` if given."""
    import peft

    targets = [hf_module_name(name) for name in _adapted_names(hf.config.n_layer)]
    config = peft.LoraConfig(r=SETTINGS.rank, lora_alpha=SETTINGS.alpha, lora_dropout=SETTINGS.dropout,
                             target_modules=targets, fan_in_fan_out=True)
    model = peft.get_peft_model(hf, config)
    if lora_model is not None:
        # PEFT's lora_A.weight is (r, in) and lora_B.weight (out, r) on a Conv1D too, as gptkit's
        # (gptkit/interop/peft_adapter.py): the tensors pass through under new names.
        theirs = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in adapter_tensors(lora_model).items():
                module, _, matrix = name.rpartition(".")
                theirs[f"base_model.model.{hf_module_name(module)}.{matrix}.default.weight"].copy_(tensor)
    return model


def _adapted_names(n_layers: int) -> list[str]:
    return [f"blocks.{i}.att.{part}" for i in range(n_layers) for part in ("qkv", "out_proj")]


def lora_copy(source: GPTModel) -> GPTModel:
    model = copy.deepcopy(source)
    wrap_lora(model, SETTINGS)  # before accelerate, as the Trainer: it reaches the base linears inside
    return model


def peft_variant(model: Any, dtype: torch.dtype | None) -> Variant:
    # bench/train.py's HF variant (logits, then cross-entropy on the shifted targets), renamed.
    v = bench_train.hf_variant(model)
    v.name, v.amp_dtype = "peft-lora", dtype
    return v


def make_variants(source: GPTModel, names: Sequence[str], dtype: torch.dtype | None) -> list[Variant]:
    """The named variants, each from its own copy of `source`'s weights; PEFT's adapters are gptkit-lora's."""
    lora = lora_copy(source)
    build: dict[str, Callable[[], Variant]] = {
        "gptkit-lora": lambda: bench_train.gptkit_variant("gptkit-lora", lora, dtype),
        "peft-lora": lambda: peft_variant(peft_model(bench_train.hf_copy(source), lora), dtype),
        "gptkit-full": lambda: bench_train.gptkit_variant("gptkit-full", copy.deepcopy(source), dtype),
    }
    return [build[name]() for name in names]


def native_variant(cfg: ModelConfig, name: str, dtype: torch.dtype | None) -> Variant:
    """The variant alone in its process with its own initialisation: for memory, where the values do not matter."""
    if name == "gptkit-lora":
        model = GPTModel(cfg)
        wrap_lora(model, SETTINGS)
        return bench_train.gptkit_variant(name, model, dtype)
    if name == "gptkit-full":
        return bench_train.gptkit_variant(name, GPTModel(cfg), dtype)
    import transformers

    return peft_variant(peft_model(transformers.GPT2LMHeadModel(bench_train.hf_config(cfg)), None), dtype)


def trained_numbers(v: Variant) -> int:
    return sum(p.numel() for p in v.model.parameters() if p.requires_grad)


# --- the loss check ------------------------------------------------------------------


class LossesDisagree(RuntimeError):
    """gptkit's and PEFT's float32 LoRA steps give different losses from the same weights and adapters."""


def check_losses(source: GPTModel, x: torch.Tensor, y: torch.Tensor, tolerance: float = LOSS_TOLERANCE) -> dict[str, Any]:
    """Both LoRA sides' float32 losses over CHECK_STEPS steps, by the step the timing runs; raises past `tolerance`."""
    variants = make_variants(source, ["gptkit-lora", "peft-lora"], None)
    losses = {v.name: [bench_train.step(v, x, y)[1] for _ in range(CHECK_STEPS)] for v in variants}
    trained = {v.name: trained_numbers(v) for v in variants}
    del variants
    gc.collect()
    differences = [abs(a - b) for a, b in zip(losses["gptkit-lora"], losses["peft-lora"], strict=True)]
    found = {"losses": losses, "differences": differences, "tolerance": tolerance, "trained_numbers": trained}
    if trained["gptkit-lora"] != trained["peft-lora"]:
        raise LossesDisagree(f"gptkit trains {trained['gptkit-lora']} numbers, PEFT {trained['peft-lora']}: not the same adapters")
    if not all(d <= tolerance for d in differences):  # `not <=`: a NaN disagrees too
        raise LossesDisagree(f"float32 losses over {CHECK_STEPS} steps differ by {differences} ({losses}; tolerance {tolerance:g})")
    return found


# --- timing and memory -------------------------------------------------------------------


def time_variants(work: Workload, names: Sequence[str], dtype: str, rounds: int, warmup: int,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """In a fresh process: the variants' steps, interleaved (bench/train.py's rounds and turns)."""
    cfg = work.model_config()
    torch.manual_seed(0)
    source = GPTModel(cfg)
    variants = make_variants(source, names, DTYPES[dtype])
    del source
    x, y = bench_train.random_batch(cfg, work)
    peak = bench_train.MatmulPeak()
    times, first_loss = bench_train.run_rounds(work, variants, x, y, rounds, warmup, peak, log)
    results = bench_train.summarise(work, variants, times, first_loss, peak.flops())
    for v in variants:
        results[v.name]["trained_numbers"] = trained_numbers(v)
        if v.name != "gptkit-full":
            # summarise counts a full step's FLOPs (weight gradients of every matrix), which LoRA does not do.
            results[v.name]["mfu"] = None
    return {"variants": results, "peak_flops": peak.flops(), "matmul_size": peak.n}


def memory_child(work: Workload, name: str, dtype: str) -> dict[str, float]:
    cfg = work.model_config()
    return bench_train.peak_rss(lambda: native_variant(cfg, name, DTYPES[dtype]),
                                lambda: bench_train.random_batch(cfg, work), MEMORY_STEPS)


# --- reporting -------------------------------------------------------------------------


def compare(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (gptkit-lora against peft-lora) and LoRA against full finetuning, as far as measured."""
    v = result["variants"]
    found = []
    ours = v["gptkit-lora"]
    if "peft-lora" in v:
        ratio = ours["tokens_per_s"] / v["peft-lora"]["tokens_per_s"]
        found.append({"target": f"gptkit-lora tokens/s >= {SPEEDUP_TARGET}x peft-lora's", "value": round(ratio, 3),
                      "met": ratio >= SPEEDUP_TARGET})
        if "peak_rss_mib" in ours and "peak_rss_mib" in v["peft-lora"]:
            a, b = ours["peak_rss_mib"], v["peft-lora"]["peak_rss_mib"]
            found.append({"target": "gptkit-lora peak RSS <= peft-lora's", "value": f"{a:.0f} vs {b:.0f} MiB", "met": a <= b})
    if "gptkit-full" in v:
        full = v["gptkit-full"]
        result["lora_vs_full"] = {"step_time": ours["step_s"] / full["step_s"]}
        if "peak_rss_mib" in ours and "peak_rss_mib" in full:
            result["lora_vs_full"]["peak_rss"] = ours["peak_rss_mib"] / full["peak_rss_mib"]
    return found


HEADERS = ["variant", "trained", "tokens/s", "vs peft-lora", "step ms", "forward ms", "backward ms", "optimizer ms",
           "peak RSS MiB", "vs gptkit-full: step, RSS", "first loss"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    fmt, v = bench_train.fmt, result["variants"]
    peft, full = v.get("peft-lora"), v.get("gptkit-full")
    rows = []
    for name, r in v.items():
        ph = r["phase_s"]
        vs_full = "-"
        if full is not None and name != "gptkit-full":
            rss = fmt(r["peak_rss_mib"] / full["peak_rss_mib"], ".2f", "x") if "peak_rss_mib" in r and "peak_rss_mib" in full else "-"
            vs_full = f"{r['step_s'] / full['step_s']:.2f}x, {rss}"
        rows.append([
            name, f"{r['trained_numbers'] / 1e6:.2f}M", f"{r['tokens_per_s']:.0f}",
            fmt(r["tokens_per_s"] / peft["tokens_per_s"] if peft and name != "peft-lora" else None, ".2f", "x"),
            f"{1000 * r['step_s']:.0f}", *(f"{1000 * ph[p]:.0f}" for p in bench_train.PHASES),
            fmt(r.get("peak_rss_mib"), ".0f"), vs_full, f"{r['first_loss']:.4f}",
        ])
    return rows


# --- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=list(WORKLOADS), default="gpt2", help="gpt2 (124M, the default) or gpt2-medium (355M)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, the median reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="autocast dtype, run.dtype's default (bfloat16)")
    p.add_argument("--skip-peft", action="store_true", help="leave out peft-lora (and the loss check against it)")
    p.add_argument("--skip-full", action="store_true", help="leave out gptkit-full")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON, one entry per preset (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1: the median needs a timed round")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    args.variants = [n for n in VARIANTS if not (n == "peft-lora" and args.skip_peft) and not (n == "gptkit-full" and args.skip_full)]
    return args


def child_flags(args: argparse.Namespace, *flags: str) -> list[str]:
    skips = [*(["--skip-peft"] if args.skip_peft else []), *(["--skip-full"] if args.skip_full else [])]
    return [*flags, "--preset", args.preset, "--rounds", str(args.rounds), "--warmup", str(args.warmup),
            "--dtype", args.dtype, *skips]


def write_entry(path: Path, preset: str, entry: dict[str, Any]) -> None:
    """Store `entry` under `preset` in the results file, keeping the other presets' entries."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[preset] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    work = WORKLOADS[args.preset]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.memory_child:
        print(json.dumps(memory_child(work, args.memory_child, args.dtype)))
        return
    if args.timing_child:
        print(json.dumps(time_variants(work, args.variants, args.dtype, args.rounds, args.warmup, log)))
        return

    load_start = os.getloadavg()[0]
    cfg = work.model_config()
    loss_check = None
    if not args.skip_peft:
        torch.manual_seed(0)  # the timing child builds the same weights from the same seed
        try:
            loss_check = check_losses(GPTModel(cfg), *bench_train.random_batch(cfg, work))
        except LossesDisagree as err:
            print(f"bench/lora.py: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        gc.collect()
        log(f"{args.preset}: float32 LoRA losses agree over {CHECK_STEPS} steps ({loss_check['losses']}, "
            f"differences {loss_check['differences']})")
    result = run_json_child(__file__, child_flags(args, "--timing-child"), threads, "the timing run", keep_log=True)
    if not args.no_memory:
        log("peak RSS, one subprocess per variant")
        for name in result["variants"]:
            result["variants"][name].update(
                run_json_child(__file__, child_flags(args, "--memory-child", name), threads, f"memory run of {name}"))
    targets = compare(result)
    first = result["variants"]
    report: dict[str, Any] = {
        "settings": {
            "rounds": args.rounds, "warmup": args.warmup, "threads": threads, "dtype": args.dtype,
            "steps_per_turn": bench_train.STEPS_PER_TURN, "memory_steps": None if args.no_memory else MEMORY_STEPS,
            "grad_clip": bench_train.GRAD_CLIP, "lora": {"rank": SETTINGS.rank, "alpha": SETTINGS.alpha, "targets": SETTINGS.targets},
            "optimizer": "trainer.make_optimizer(RunConfig()): fused AdamW over the parameters that train, decay on 2-D ones",
        },
        "workload": {"preset": work.preset, "batch": work.batch, "seq_len": work.seq_len},
        "loss_check": loss_check,
        "first_loss_difference": (abs(first["gptkit-lora"]["first_loss"] - first["peft-lora"]["first_loss"])
                                  if "peft-lora" in first else None),
        **result,
        "targets": targets,
        "machine": {**bench_train.machine_info(threads), "load_average_start": load_start, "load_average_end": os.getloadavg()[0]},
    }
    report["workload"]["dtype"] = args.dtype
    bench_train.print_table(report, HEADERS, table_rows(report))
    write_entry(args.out, args.preset, report)
    print(f"written to {args.out} ({args.preset})")


if __name__ == "__main__":
    main()
