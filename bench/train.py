"""Benchmark: one training step (forward + backward + AdamW) of gptkit against two baselines.

    python bench/train.py [--preset all|gpt2|cpu-small] [--rounds 7] [--warmup 2]
                          [--variants gptkit-fp32,gptkit-bf16,hf-fp32,reference-fp32]
                          [--threads N] [--json PATH] [--no-memory] [--quick]
    python bench/train.py --profile gptkit-bf16 --preset gpt2
    python bench/train.py --device cuda [--rounds 7] [--warmup 2] [--variants ...] [--json PATH]

Variants, all from the same initial weights and the same batch of random tokens:
gptkit in float32, gptkit under bf16 autocast (as trainer.py runs it), Hugging
Face's GPT2LMHeadModel (sdpa attention, float32) and `bench/reference_gpt.py`, a
nanoGPT-style model (float32). Each takes trainer.py's step: loss, backward,
gradient clipping to 1.0, AdamW (trainer.make_optimizer's groups and
hyperparameters), zero_grad.

Timing: `--warmup` rounds, then `--rounds` rounds in which each variant takes one
step (the order rotating from round to round) and a large float32 and bf16
matmul is timed; the median per variant and phase is reported. The matmuls give
the peak FLOP/s that MFU is measured against, taken in the same minutes as the
steps. Peak RSS comes from a fresh subprocess per variant (a few steps, then
its VmHWM, the peak resident set). Throughput drifts on a shared machine:
compare figures from one run only, never across runs.

Writes bench/results/train.json and the results block of bench/README.md's
"Training step" section. `--profile VARIANT` instead runs torch.profiler over a
few steps and writes the top ops to bench/results/profile_<preset>_<variant>.txt.

`--device cuda` times the same step on a GPU instead (the "GPU" part of this file):
the gpt2 preset at batch 16 x 1024 under bf16 autocast, eager and `torch.compile`d,
for gptkit, the reference and Hugging Face, in one process, with the same
interleaved rounds and medians; MFU against an 8192^3 bf16 matmul timed in the
same rounds, and peak GPU memory per variant. It writes bench/results/train_cuda.json
(or --json) and never the CPU results or bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _common import run_json_child
from reference_gpt import GPT, GPTConfig, from_gptkit

from config import RunConfig
from gptkit import GPTModel, ModelConfig, model_preset
from gptkit.interop.hf_convert import hf_config_dict, to_hf_state_dict
from gptkit.kernels import accelerate, training_memory
from gptkit.kernels import onednn_linear as linear_module
from trainer import make_optimizer

RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
SECTION = "## Training step"
BEGIN, END = "<!-- train-results:begin -->", "<!-- train-results:end -->"

VARIANTS = ("gptkit-fp32", "gptkit-bf16", "hf-fp32", "reference-fp32")
BASELINES = ("hf-fp32", "reference-fp32")
PHASES = ("forward", "backward", "optimizer")
GRAD_CLIP = 1.0  # trainer.py's default train.grad_clip
MATMUL_SIZE = 2048
ALLOCATORS = ("per-variant", "retain-all", "default-all")
ALLOCATOR = "per-variant"  # set from --allocator

# --device cuda: every variant under bf16 autocast (what a GPU run trains in), eager and compiled.
CUDA_VARIANTS = ("gptkit-bf16", "reference-bf16", "hf-bf16", "gptkit-bf16-compile", "reference-bf16-compile", "hf-bf16-compile")
CUDA_MATMUL_SIZE = 8192  # large enough to reach the tensor cores' peak, ~1 ms a product on an H100-class GPU
CUDA_RESULTS = RESULTS_DIR / "train_cuda.json"


@dataclass(frozen=True)
class Workload:
    preset: str
    batch: int
    seq_len: int
    overrides: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> ModelConfig:
        return model_preset(self.preset, **self.overrides)


WORKLOADS = {
    "gpt2": Workload("gpt2", batch=4, seq_len=256),
    # cpu-small's own context is 128; the benchmark trains it on 256-token windows.
    "cpu-small": Workload("cpu-small", batch=8, seq_len=256, overrides={"context_length": 256}),
}
# On a GPU: the GPT-2 124M recipe's micro-batch (configs/gpt2-124m.toml), full context.
CUDA_WORKLOADS = {"gpt2": Workload("gpt2", batch=16, seq_len=1024)}


# --- the variants ----------------------------------------------------------------


@dataclass
class Variant:
    name: str
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    amp_dtype: torch.dtype | None  # autocast dtype, None: plain float32
    # gptkit's Trainer keeps freed memory for reuse on CPU (gptkit.kernels.cpu_allocator); the
    # baselines run as their users run them, with glibc's defaults (see --allocator).
    retain_memory: bool = False
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.model.train()
        # trainer.make_optimizer on any module: decay on 2-D weights, the run config's lr and betas.
        self.optimizer = make_optimizer(self.model, RunConfig(), torch.device("cpu"))

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.amp_dtype == torch.bfloat16 else "float32"


def gptkit_variant(name: str, model: GPTModel, amp_dtype: torch.dtype | None) -> Variant:
    # As trainer.train_step calls it: the model switched over to gptkit.kernels, the loss
    # from the hidden states, no logits kept.
    accelerate(model)
    return Variant(name, model, lambda x, y: model(x, y, keep_logits=False)[1], amp_dtype, retain_memory=True)


def reference_variant(model: GPT) -> Variant:
    return Variant("reference-fp32", model, lambda x, y: model(x, y)[1], None)


def hf_variant(model: Any) -> Variant:
    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # HF's own `labels=` shifts the targets by one; the batch here is already shifted,
        # so the loss is taken on the logits, exactly as the other variants take it.
        # use_cache=False: training has no use for the key/value cache HF would build.
        logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    return Variant("hf-fp32", model, loss, None)


def hf_config(cfg: ModelConfig) -> Any:
    import transformers  # only the HF variant pays for importing transformers

    # attn_implementation is taken by every transformers config, but not in GPT2Config's signature.
    return transformers.GPT2Config(**hf_config_dict(cfg), attn_implementation="sdpa")  # type: ignore[call-arg]


def hf_copy(source: GPTModel) -> Any:
    """A GPT2LMHeadModel holding a copy of `source`'s weights."""
    import transformers

    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(hf_config(source.cfg))
    state = {k: v.clone() for k, v in to_hf_state_dict(source).items()}  # untransposed ones share memory
    result = model.load_state_dict(state, strict=False, assign=True)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    model.lm_head.weight = model.transformer.wte.weight
    return model


def copied_variants(source: GPTModel, names: Sequence[str]) -> list[Variant]:
    """The named variants, each with its own copy of `source`'s weights."""
    build: dict[str, Callable[[], Variant]] = {
        "gptkit-fp32": lambda: gptkit_variant("gptkit-fp32", copy.deepcopy(source), None),
        "gptkit-bf16": lambda: gptkit_variant("gptkit-bf16", copy.deepcopy(source), torch.bfloat16),
        "hf-fp32": lambda: hf_variant(hf_copy(source)),
        "reference-fp32": lambda: reference_variant(from_gptkit(source)),
    }
    return [build[name]() for name in names]


def native_variant(cfg: ModelConfig, name: str) -> Variant:
    """The variant built on its own, with its own initialisation: for memory, where no
    second model may be alive in the process, and where the weights' values do not matter."""
    if name.startswith("gptkit"):
        return gptkit_variant(name, GPTModel(cfg), torch.bfloat16 if name == "gptkit-bf16" else None)
    if name == "reference-fp32":
        return reference_variant(GPT(GPTConfig.from_model_config(cfg)))
    import transformers

    return hf_variant(transformers.GPT2LMHeadModel(hf_config(cfg)))


def random_batch(cfg: ModelConfig, work: Workload, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, cfg.vocab_size, (work.batch, work.seq_len + 1), generator=g)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def allocator_policy(v: Variant) -> contextlib.AbstractContextManager[bool]:
    """The malloc policy `v` runs under (see --allocator); held for a whole turn, never one step."""
    retain = {"per-variant": v.retain_memory, "retain-all": True, "default-all": False}[ALLOCATOR]
    # Retaining is what the Trainer holds around its steps on a CPU; otherwise glibc's defaults.
    return training_memory(torch.device("cpu")) if retain else contextlib.nullcontext(False)


def step(v: Variant, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], float]:
    """One training step as trainer.train_step takes it; seconds per phase and the loss."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=v.amp_dtype or torch.float32, enabled=v.amp_dtype is not None):
        loss = v.loss(x, y)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    nn.utils.clip_grad_norm_(v.model.parameters(), GRAD_CLIP)
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}, loss.item()


# Steps a variant takes each time its turn comes; only the last is timed. The first two settle
# the heap after the other variants' turns: a retained heap the others trimmed grows back,
# as in a Trainer's first step. (Switching the policy around every step instead would trim
# the retained heap between gptkit's own steps, which no training run does: about 100,000
# page faults a gpt2 bf16 step.)
STEPS_PER_TURN = 3


StepFn = Callable[[Variant, torch.Tensor, torch.Tensor], tuple[dict[str, float], float]]
TurnFn = StepFn  # a turn reports like a step: phases and a loss


def turn(v: Variant, x: torch.Tensor, y: torch.Tensor, take_step: StepFn = step) -> tuple[dict[str, float], float]:
    """`STEPS_PER_TURN` steps under `v`'s allocator policy: the last one's phases, the first one's loss."""
    with allocator_policy(v):
        _, first_loss = take_step(v, x, y)
        for _ in range(STEPS_PER_TURN - 1):
            phases, _ = take_step(v, x, y)
    return phases, first_loss


def flops_per_token(model: GPTModel, seq_len: int) -> float:
    """trainer.flops_per_token with the attention term for the sequences actually run
    (the gpt2 preset's context is 1024, the benchmark's windows 256)."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    cfg = model.cfg
    return 6 * matmul_weights + 12 * cfg.n_layers * cfg.emb_dim * seq_len


# --- peak FLOP/s -------------------------------------------------------------------


class MatmulPeak:
    """Best-of-`tries` seconds of an n x n x n matmul per dtype, collected once per round."""

    def __init__(self, n: int = MATMUL_SIZE, tries: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.n, self.tries = n, tries
        self.operands = {}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
            self.operands[name] = (a, b, torch.empty(n, n, dtype=dtype))
        self.seconds: dict[str, list[float]] = {name: [] for name in self.operands}

    def measure(self, record: bool = True) -> None:
        for name, (a, b, out) in self.operands.items():
            best = float("inf")
            for _ in range(self.tries):
                for matmul in self.kernels(name):
                    start = time.perf_counter()
                    matmul(a, b, out)
                    best = min(best, time.perf_counter() - start)
            if record:
                self.seconds[name].append(best)

    @staticmethod
    def kernels(name: str) -> list[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]]:
        """The fastest matmul this build offers is the peak: for float32 that is oneDNN's
        (what gptkit.Linear runs) as well as torch.matmul's MKL sgemm, which it outruns here."""
        found: list[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]] = [
            lambda a, b, out: torch.matmul(a, b, out=out)
        ]
        if name == "float32" and linear_module._ONEDNN:
            found.append(lambda a, b, out: linear_module._matmul_t(a, b))  # a @ b.T: same work
        return found

    def flops(self) -> dict[str, float]:
        return {name: 2 * self.n**3 / statistics.median(s) for name, s in self.seconds.items()}


# --- timing ------------------------------------------------------------------------


Times = dict[str, dict[str, list[float]]]


def run_rounds(
    work: Workload, variants: Sequence[Variant], x: torch.Tensor, y: torch.Tensor, rounds: int, warmup: int,
    peak: MatmulPeak, log: Callable[[str], None], take_turn: TurnFn = turn,
) -> tuple[Times, dict[str, float]]:
    """Warm-up rounds, then timed ones; each gives every variant one turn and times the matmuls.

    Returns each variant's timed phases and steps (one entry per timed round) and its first loss.
    """
    times: Times = {v.name: {p: [] for p in (*PHASES, "step")} for v in variants}
    first_loss: dict[str, float] = {}
    for r in range(warmup + rounds):
        # Rotate who goes first so that no variant always follows the same neighbour.
        order = [*variants[r % len(variants):], *variants[: r % len(variants)]]
        for v in order:
            phases, loss = take_turn(v, x, y)
            first_loss.setdefault(v.name, loss)
            if r >= warmup:
                for p, s in phases.items():
                    times[v.name][p].append(s)
                times[v.name]["step"].append(sum(phases.values()))
        peak.measure(record=r >= warmup)
        label = "warm-up" if r < warmup else "round"
        log(f"{work.preset}: {label} {r + 1 - (warmup if r >= warmup else 0)}/{rounds if r >= warmup else warmup} done")
    return times, first_loss


def summarise(
    work: Workload, variants: Sequence[Variant], times: Times, first_loss: dict[str, float], peak_flops: dict[str, float]
) -> dict[str, Any]:
    """Per variant: median step and phases, tokens/s, MFU against the peak of its dtype, first loss."""
    model_flops = flops_per_token(_shape_model(work.model_config()), work.seq_len)
    tokens = work.batch * work.seq_len
    results: dict[str, Any] = {}
    for v in variants:
        t = times[v.name]
        step_s = statistics.median(t["step"])
        tokens_per_s = tokens / step_s
        results[v.name] = {
            "dtype": v.dtype_name,
            "step_s": step_s,
            "tokens_per_s": tokens_per_s,
            "phase_s": {p: statistics.median(t[p]) for p in PHASES},
            "mfu": tokens_per_s * model_flops / peak_flops[v.dtype_name],
            "first_loss": first_loss[v.name],
            "runs_s": t,
        }
    return results


def time_variants(
    work: Workload, names: Sequence[str], rounds: int, warmup: int, log: Callable[[str], None]
) -> dict[str, Any]:
    cfg = work.model_config()
    torch.manual_seed(0)
    source = GPTModel(cfg)
    variants = copied_variants(source, names)
    del source
    x, y = random_batch(cfg, work)
    peak = MatmulPeak()
    times, first_loss = run_rounds(work, variants, x, y, rounds, warmup, peak, log)
    peak_flops = peak.flops()
    model_flops = flops_per_token(_shape_model(cfg), work.seq_len)
    results = summarise(work, variants, times, first_loss, peak_flops)
    fp32_losses = [first_loss[v.name] for v in variants if v.amp_dtype is None]
    if fp32_losses and max(fp32_losses) - min(fp32_losses) > 1e-4 * abs(fp32_losses[0]):
        log(f"WARNING: the float32 variants' first losses differ ({fp32_losses}): not the same weights or batch")
    baseline = max((results[b]["tokens_per_s"] for b in BASELINES if b in results), default=None)
    for r in results.values():
        r["vs_faster_baseline"] = r["tokens_per_s"] / baseline if baseline else None
    return {
        "workload": {"preset": work.preset, "batch": work.batch, "seq_len": work.seq_len, "overrides": work.overrides},
        "flops_per_token": model_flops,
        "peak_flops": peak_flops,
        "matmul_size": peak.n,
        "variants": results,
    }


def _shape_model(cfg: ModelConfig) -> GPTModel:
    """A GPTModel of this shape on the meta device: only its parameter counts are read."""
    with torch.device("meta"):
        return GPTModel(cfg)


# --- memory --------------------------------------------------------------------------


def proc_status_mib(key: str) -> float:
    """A "VmRSS"/"VmHWM" line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # given in kB
    raise KeyError(key)


def memory_child(work: Workload, name: str, steps: int) -> dict[str, float]:
    """Run in a fresh process: build one variant, take `steps` steps, report RSS."""
    cfg = work.model_config()
    return peak_rss(lambda: native_variant(cfg, name), lambda: random_batch(cfg, work), steps)


def peak_rss(
    build: Callable[[], Variant], batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int
) -> dict[str, float]:
    """In a fresh process: the resident set before `build()`, and its peak over `steps` steps on `batch()`."""
    before = proc_status_mib("VmRSS")
    torch.manual_seed(0)
    v = build()
    x, y = batch()
    with allocator_policy(v):
        for _ in range(steps):
            step(v, x, y)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of the
    # benchmark (holding four models) would report the parent's peak, not its own.
    return {
        "peak_rss_mib": proc_status_mib("VmHWM"),
        "rss_before_model_mib": before,
        "steps": steps,
    }


def run_child(flags: Sequence[str], threads: int, what: str, keep_log: bool = False) -> Any:
    """This script with `flags` under this run's --allocator, in a fresh interpreter (`run_json_child`)."""
    return run_json_child(__file__, [*flags, "--allocator", ALLOCATOR], threads, what, keep_log)


def time_in_child(work: Workload, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """`time_variants` for one preset in a fresh interpreter.

    The baselines run with glibc's malloc as it comes, and how often that malloc
    faults in fresh pages depends on the process's history: its mmap threshold and
    heap adapt to the sizes freed before. In one process that ran `gpt2` first, the
    baselines' `cpu-small` step took 1411 ms; as programs of their own, and when
    `cpu-small` is the first preset of a process, 1950-2200 ms. So each preset is
    timed in a process of its own, as a user runs one model.
    """
    flags = ["--timing-child", "--preset", work.preset, "--rounds", str(args.rounds), "--warmup", str(args.warmup),
             "--variants", ",".join(args.variants)]
    return run_child(flags, threads, f"timing run of {work.preset}", keep_log=True)


def measure_memory(work: Workload, names: Sequence[str], steps: int, threads: int) -> dict[str, dict[str, float]]:
    return {
        name: run_child(["--memory-child", name, "--preset", work.preset, "--memory-steps", str(steps)], threads, f"memory run of {name}")
        for name in names
    }


# --- targets, reporting ----------------------------------------------------------------


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run can judge (the loss-curve one is bench/loss_curve.py's)."""
    v = result["variants"]
    found = []
    for name, want in (("gptkit-fp32", 1.1), ("gptkit-bf16", 2.0)):
        ratio = v.get(name, {}).get("vs_faster_baseline")
        if ratio is not None:
            found.append({"target": f"{name} >= {want}x the faster fp32 baseline", "value": round(ratio, 3), "met": ratio >= want})
    ref_rss = v.get("reference-fp32", {}).get("peak_rss_mib")
    if result["workload"]["preset"] == "gpt2" and ref_rss is not None:
        for name in ("gptkit-fp32", "gptkit-bf16"):
            rss = v.get(name, {}).get("peak_rss_mib")
            if rss is not None:
                found.append({"target": f"{name} peak RSS <= reference-fp32's", "value": f"{rss:.0f} vs {ref_rss:.0f} MiB", "met": rss <= ref_rss})
    return found


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_rows(result: dict[str, Any], shares: bool) -> list[list[str]]:
    rows = []
    for name, r in result["variants"].items():
        ph = r["phase_s"]
        total = sum(ph.values())
        phases = [f"{1000 * ph[p]:.0f}" + (f" ({100 * ph[p] / total:.0f}%)" if shares else "") for p in PHASES]
        rows.append([
            name, f"{r['tokens_per_s']:.0f}", fmt(r["vs_faster_baseline"], ".2f", "x"), f"{1000 * r['step_s']:.0f}",
            *phases, f"{100 * r['mfu']:.1f}%", fmt(r.get("peak_rss_mib"), ".0f"), f"{r['first_loss']:.4f}",
        ])
    return rows


HEADERS = ["variant", "tokens/s", "vs faster baseline", "step ms", "forward ms", "backward ms", "optimizer ms",
           "MFU", "peak RSS MiB", "first loss"]


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {s['threads']} threads), torch {m['torch']}, "
        f"transformers {m['transformers']}; {s['warmup']} warm-up + {s['rounds']} interleaved rounds, medians"
        + (" (--quick: a smoke run, not a measurement)" if s["quick"] else "")
        + f"; load average {m['load_average_start']:.2f} at start, {m['load_average_end']:.2f} at end.",
        "",
    ]
    for preset, result in report["presets"].items():
        w, pk = result["workload"], result["peak_flops"]
        lines += [
            (f"**{preset}** (batch {w['batch']} x {w['seq_len']} tokens; {result['flops_per_token'] / 1e6:.0f} MFLOP/token; "
             f"peak {pk['float32'] / 1e9:.0f} GFLOP/s fp32, {pk['bfloat16'] / 1e9:.0f} GFLOP/s bf16 "
             f"from {result['matmul_size']}^3 matmuls)"),
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|---|" + "---:|" * (len(HEADERS) - 1),
            *("| " + " | ".join(row) + " |" for row in table_rows(result, shares=True)),
            "",
        ]
        for t in result["targets"]:
            lines.append(f"- {t['target']}: {t['value']}{'x' if isinstance(t['value'], float) else ''} — {'met' if t['met'] else 'NOT met'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_readme(path: Path, block: str) -> None:
    """Replace the results block of the "Training step" section, leaving every other section alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    fenced = f"{BEGIN}\n{block}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + fenced + rest.split(END, 1)[1]
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        cut = rest.find("\n## ")
        body, tail = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
        text = head + SECTION + body.rstrip("\n") + "\n\n" + fenced + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{fenced}\n"
    path.write_text(text, encoding="utf-8")


def print_table(result: dict[str, Any], headers: Sequence[str] = HEADERS, rows: list[list[str]] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    w = result["workload"]
    table = Table(title=f"{w['preset']}: batch {w['batch']} x {w['seq_len']}")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in table_rows(result, shares=False) if rows is None else rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: no terminal width to squeeze the table into
    console.print(table)
    for t in result["targets"]:
        console.print(f"  {t['target']}: {t['value']} -> {'met' if t['met'] else '[bold]NOT met[/bold]'}")


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- profiling ---------------------------------------------------------------------------


def profile(work: Workload, name: str, warmup: int, steps: int = 3, rows: int = 30) -> Path:
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    cfg = work.model_config()
    torch.manual_seed(0)
    (v,) = copied_variants(GPTModel(cfg), [name])
    x, y = random_batch(cfg, work)
    with allocator_policy(v):
        for _ in range(max(warmup, 1)):
            step(v, x, y)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                with record_function("step"):
                    step(v, x, y)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)
    text = (
        f"torch.profiler, {name}, {work.preset} batch {work.batch} x {work.seq_len}, {steps} steps after "
        f"{max(warmup, 1)} warm-up, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}\n\n"
        f"Top ops by self CPU time:\n{by_op}\n\nBy input shape:\n{by_shape}\n"
    )
    print(text)
    path = RESULTS_DIR / f"profile_{work.preset}_{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- GPU (--device cuda) ---------------------------------------------------------------
# The CPU machinery above — Variant and its builders, `turn`, `run_rounds`, `summarise`,
# `MatmulPeak.flops` — with what a GPU needs on top: steps timed between synchronisations
# (kernels run asynchronously), models compiled or not, and GPU memory per turn.


class CudaUnavailable(Exception):
    """--device cuda on a machine where torch sees no GPU: a one-line message, exit code 2."""


def cuda_step(v: Variant, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], float]:
    """`step` on a GPU: the clock is read only after the device has finished each phase's kernels."""
    sync = torch.cuda.synchronize
    sync()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=v.amp_dtype or torch.float32, enabled=v.amp_dtype is not None):
        loss = v.loss(x, y)
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    nn.utils.clip_grad_norm_(v.model.parameters(), GRAD_CLIP)
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    sync()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}, loss.item()


class CudaMatmulPeak(MatmulPeak):
    """The bf16 peak on the GPU: best of `tries` mean times of `repeats` back-to-back n^3 products.

    Back-to-back, because one product of 8192^3 takes about a millisecond, close enough to
    the cost of a synchronisation that timing products one by one would understate the peak.
    """

    def __init__(self, device: torch.device, n: int = CUDA_MATMUL_SIZE, tries: int = 3, repeats: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.n, self.tries, self.repeats = n, tries, repeats
        a, b = (torch.randn(n, n, generator=g).to(device, torch.bfloat16) for _ in range(2))
        self.operands = {"bfloat16": (a, b, torch.empty(n, n, dtype=torch.bfloat16, device=device))}
        self.seconds = {"bfloat16": []}

    def measure(self, record: bool = True) -> None:
        a, b, out = self.operands["bfloat16"]
        best = float("inf")
        for _ in range(self.tries):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(self.repeats):
                torch.matmul(a, b, out=out)
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / self.repeats)
        if record:
            self.seconds["bfloat16"].append(best)


def cuda_variant(name: str, source: GPTModel, device: torch.device) -> Variant:
    """`name` from CUDA_VARIANTS with its own copy of `source`'s weights, on `device`.

    The model is moved before the optimizer is built and before compiling; a compiled
    variant calls its loss through `torch.compile(model)`, as `run.compile=true` trains
    (trainer.py compiles the module, and keeps the loss inside it for gptkit).
    """
    family = name.split("-", 1)[0]
    copies: dict[str, Callable[[], nn.Module]] = {
        "gptkit": lambda: copy.deepcopy(source),
        "reference": lambda: from_gptkit(source),
        "hf": lambda: hf_copy(source),
    }
    model = copies[family]().to(device)
    module: Any = torch.compile(model) if name.endswith("-compile") else model
    built = {"gptkit": lambda: gptkit_variant(name, module, torch.bfloat16), "reference": lambda: reference_variant(module),
             "hf": lambda: hf_variant(module)}[family]()
    # The CPU builders name the float32 baselines and give gptkit the CPU malloc policy, which
    # a GPU run does not use (the Trainer keeps freed memory only on CPU).
    built.name, built.amp_dtype, built.retain_memory = name, torch.bfloat16, False
    return built


def state_bytes(v: Variant) -> int:
    """What `v` keeps on the GPU between steps: weights and optimizer state (gradients are freed)."""
    tensors = {id(p): p for p in v.model.parameters()}
    for per_param in v.optimizer.state.values():
        tensors.update({id(t): t for t in per_param.values() if isinstance(t, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def cuda_baselines(name: str) -> tuple[str, ...]:
    """The baselines a variant is compared with: eager against eager, compiled against compiled."""
    suffix = "-compile" if name.endswith("-compile") else ""
    return (f"hf-bf16{suffix}", f"reference-bf16{suffix}")


def time_cuda(
    work: Workload, names: Sequence[str], rounds: int, warmup: int, log: Callable[[str], None], device_name: str = "cuda"
) -> dict[str, Any]:
    """`time_variants` on the GPU, in this process: every variant is alive at once, interleaved.

    `device_name` is there for tests of this bookkeeping on a machine without a GPU; results are a GPU's only on one.
    """
    device = torch.device(device_name)
    cfg = work.model_config()
    torch.manual_seed(0)
    source = GPTModel(cfg)
    variants = [cuda_variant(name, source, device) for name in names]
    del source
    x, y = (t.to(device) for t in random_batch(cfg, work))
    peak = CudaMatmulPeak(device, n=CUDA_MATMUL_SIZE if device.type == "cuda" else 256)
    working: dict[str, list[int]] = {v.name: [] for v in variants}
    highest: dict[str, list[int]] = {v.name: [] for v in variants}
    first_turn: dict[str, float] = {}

    def cuda_turn(v: Variant, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], float]:
        # Peak memory per variant: the counter is reset before its turn, and what was allocated
        # then (every variant's weights and optimizer state) is subtracted from the turn's peak.
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        out = turn(v, x, y, take_step=cuda_step)
        first_turn.setdefault(v.name, time.perf_counter() - started)  # a compiled variant compiles here
        working[v.name].append(torch.cuda.max_memory_allocated() - resident)
        highest[v.name].append(torch.cuda.max_memory_allocated())
        return out

    times, first_loss = run_rounds(work, variants, x, y, rounds, warmup, peak, log, take_turn=cuda_turn)
    peak_flops = peak.flops()
    results = summarise(work, variants, times, first_loss, peak_flops)
    mib = 2**20
    for v in variants:
        r = results[v.name]
        # One entry per round, warm-up first: the timed rounds' worst turn counts.
        step_peak = max(working[v.name][warmup:])
        r["peak_gpu_mib"] = (state_bytes(v) + step_peak) / mib  # what it would peak at alone
        r["step_peak_above_resident_mib"] = step_peak / mib
        r["max_memory_allocated_mib"] = max(highest[v.name][warmup:]) / mib  # with every variant resident
        r["first_turn_s"] = first_turn[v.name]
        faster = max((results[b]["tokens_per_s"] for b in cuda_baselines(v.name) if b in results), default=None)
        r["vs_faster_baseline"] = r["tokens_per_s"] / faster if faster else None
    # bf16 rounds differently in each implementation (and compiled kernels fuse differently),
    # so the first losses agree to about 1%, not to float32's 1e-4; far more is another batch or weights.
    losses = list(first_loss.values())
    if max(losses) - min(losses) > 2e-2 * abs(losses[0]):
        log(f"WARNING: the variants' first losses differ ({first_loss}): not the same weights or batch")
    return {
        "workload": {"preset": work.preset, "batch": work.batch, "seq_len": work.seq_len, "overrides": work.overrides},
        "flops_per_token": flops_per_token(_shape_model(cfg), work.seq_len),
        "peak_flops": peak_flops,
        "matmul_size": peak.n,
        "variants": results,
        "targets": [],  # the targets are the CPU ones; on a GPU the table is the result
    }


CUDA_HEADERS = ["variant", "tokens/s", "vs faster baseline", "step ms", "forward ms", "backward ms", "optimizer ms",
                "MFU", "peak GPU MiB", "first turn s", "first loss"]


def cuda_table_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in result["variants"].items():
        ph = r["phase_s"]
        rows.append([
            name, f"{r['tokens_per_s']:.0f}", fmt(r["vs_faster_baseline"], ".2f", "x"), f"{1000 * r['step_s']:.1f}",
            *(f"{1000 * ph[p]:.1f}" for p in PHASES), f"{100 * r['mfu']:.1f}%", f"{r['peak_gpu_mib']:.0f}",
            f"{r['first_turn_s']:.1f}", f"{r['first_loss']:.4f}",
        ])
    return rows


def cuda_machine_info() -> dict[str, Any]:
    import transformers

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name, "gpu_memory_mib": props.total_memory / 2**20, "cuda": torch.version.cuda,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cuda_report(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole --device cuda run: one preset, in this process (there is no malloc history to isolate)."""
    if not torch.cuda.is_available():
        raise CudaUnavailable("bench/train.py: --device cuda, but torch sees no CUDA device "
                              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); run it on a GPU machine")
    report: dict[str, Any] = {
        "settings": {"device": "cuda", "rounds": args.rounds, "warmup": args.warmup, "quick": args.quick,
                     "variants": args.variants, "autocast": "bfloat16", "steps_per_turn": STEPS_PER_TURN,
                     "grad_clip": GRAD_CLIP, "optimizer": "trainer.make_optimizer(RunConfig()) (fused AdamW)"},
        "presets": {},
    }
    for preset in args.presets:
        result = time_cuda(CUDA_WORKLOADS[preset], args.variants, args.rounds, args.warmup, log)
        report["presets"][preset] = result
        print_table(result, CUDA_HEADERS, cuda_table_rows(result))
    report["machine"] = cuda_machine_info()
    return report



# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["all", *WORKLOADS], default="all")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; --quick 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default): the CPU benchmark; cuda: the GPU one (gpt2 at 16 x 1024, bf16, eager and compiled)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of " + ", ".join(VARIANTS) + "; with --device cuda of " + ", ".join(CUDA_VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None,
                   help="where the results go (default results/train.json; with --device cuda results/train_cuda.json)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--memory-steps", type=int, default=None, help="steps per memory subprocess (default 3; --quick 2)")
    p.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone (a --device cuda run always does)")
    p.add_argument("--quick", action="store_true", help="fewer rounds: shows the harness works, measures nothing")
    p.add_argument("--profile", metavar="VARIANT", choices=VARIANTS, help="profile this variant instead of benchmarking")
    p.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allocator", choices=ALLOCATORS, default="per-variant",
                   help="glibc malloc policy: each variant as its program runs it (gptkit's Trainer retains freed "
                        "memory, the baselines use glibc's defaults), or one policy for all")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.memory_steps = args.memory_steps or (2 if args.quick else 3)
    known = CUDA_VARIANTS if args.device == "cuda" else VARIANTS
    args.variants = [n.strip() for n in (args.variants or ",".join(known)).split(",") if n.strip()]
    unknown = sorted(set(args.variants) - set(known))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}{' for --device cuda' if args.device == 'cuda' else ''}; "
                f"choose from {', '.join(known)}")
    if args.device == "cuda":
        check_cuda_args(p, args)
    elif args.json is None:
        args.json = RESULTS_DIR / "train.json"
    return args


def check_cuda_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What --device cuda accepts: its own presets and variants, and never the CPU results' paths."""
    if args.profile or args.memory_child or args.timing_child:
        p.error("--profile is for the CPU benchmark; with --device cuda use torch.profiler on a GPU run instead")
    if args.preset != "all" and args.preset not in CUDA_WORKLOADS:
        p.error(f"--device cuda times {', '.join(CUDA_WORKLOADS)} only, not {args.preset}")
    args.presets = list(CUDA_WORKLOADS) if args.preset == "all" else [args.preset]
    args.json = args.json or CUDA_RESULTS
    # The CPU results stay the CPU run's: a GPU run must not overwrite them.
    if args.json.resolve() == (RESULTS_DIR / "train.json").resolve():
        p.error(f"{args.json} holds the CPU results; give a GPU run another --json (default {CUDA_RESULTS.relative_to(ROOT)})")


def main(argv: Sequence[str] | None = None) -> None:
    global ALLOCATOR
    args = parse_args(argv)
    if args.device == "cuda":
        main_cuda(args)
        return
    ALLOCATOR = args.allocator
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    presets = list(WORKLOADS) if args.preset == "all" else [args.preset]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    child_work = WORKLOADS[presets[0]]  # a child process is given one preset
    if args.memory_child:
        print(json.dumps(memory_child(child_work, args.memory_child, args.memory_steps)))
        return
    if args.timing_child:
        print(json.dumps(time_variants(child_work, args.variants, args.rounds, args.warmup, log)))
        return
    if args.profile:
        for preset in presets:
            print(f"written to {profile(WORKLOADS[preset], args.profile, args.warmup).relative_to(ROOT)}")
        return

    load_start = os.getloadavg()[0]
    report: dict[str, Any] = {
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "threads": threads, "quick": args.quick,
                     "variants": args.variants, "memory_steps": None if args.no_memory else args.memory_steps,
                     "grad_clip": GRAD_CLIP, "optimizer": "trainer.make_optimizer(RunConfig())",
                     "allocator": args.allocator},
        "presets": {},
    }
    for preset in presets:
        work = WORKLOADS[preset]
        result = time_in_child(work, args, threads)
        if not args.no_memory:
            log(f"{preset}: peak RSS, one subprocess per variant")
            for name, mem in measure_memory(work, args.variants, args.memory_steps, threads).items():
                result["variants"][name].update(mem)
        result["targets"] = targets(result)
        report["presets"][preset] = result
        print_table(result)
    report["machine"] = {**machine_info(threads), "load_average_start": load_start, "load_average_end": os.getloadavg()[0]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")
    if not args.no_readme:
        update_readme(README, markdown(report))
        print(f"results table updated in {README.relative_to(ROOT)}")


def main_cuda(args: argparse.Namespace) -> None:
    """--device cuda: time on the GPU, write args.json; bench/README.md's CPU block is never touched."""

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = cuda_report(args, log)
    except CudaUnavailable as err:
        print(err, file=sys.stderr)  # a user's mistake, not a bug: one line, no traceback
        raise SystemExit(2) from None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
