"""Benchmark: what torch.compile (inductor) costs and gains on this machine's CPU.

    python bench/compile.py [--preset cpu-small|gpt2|all] [--rounds 5] [--new-tokens 64]
                            [--threads 1,2] [--warm-cache] [--json PATH] [--no-readme]

Three workloads per preset, each eager against compiled, float32, random weights:

- train step: forward with loss and backward (no optimizer step, so every round
  sees the same weights), through `torch.compile(model)` as `trainer.py` does;
- eval forward: the same model in eval mode under no_grad, as `Trainer.evaluate`;
- greedy generation: `generate(..., compile=True)` against `compile=False`, batch 1,
  a 16-token prompt, `--new-tokens` new ones, on an eval-mode copy as
  `main.py generate` loads it. Reported as tokens/s of the whole call.

Compile time is the first call's wall time less the steady-state median (the
first call also runs the workload once). Inductor's caches would make a second
compile cheap, so by default each preset and thread count starts from fresh,
empty ones (`--warm-cache` keeps the usual ones). Then, after one more untimed round, each
round times eager and compiled once each, the order alternating, and the median
over `--rounds` is reported. Also recorded: graphs compiled per workload
(dynamo's counter), whether compiled greedy tokens equal eager ones, and the
load average before and after: figures from a shared machine drift, so compare
within one run only. `--threads 1,2` repeats everything per intra-op thread count
(dynamo compiles afresh for each; inductor may reuse kernels from its disk cache):
on a busy machine, threads that wait for each other at the end of every parallel
kernel cost compiled code, with its many small kernels, the most.

Writes bench/results/compile.json and the results block of bench/README.md's
"torch.compile" section.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptkit import GPTModel, accelerate, model_preset  # noqa: E402
from gptkit.generation.generate import generate  # noqa: E402
from gptkit.generation.samplers import Greedy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "compile.json"
README = ROOT / "bench" / "README.md"
SECTION = "## torch.compile"
BEGIN, END = "<!-- compile-results:begin -->", "<!-- compile-results:end -->"
# (batch, sequence length) of the train step and eval forward.
SHAPES = {"cpu-small": (8, 128), "gpt2": (4, 256)}
PROMPT_TOKENS = 16


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def workloads(model: GPTModel, preset: str, new_tokens: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """For each workload, an eager and a compiled callable doing the same work."""
    batch, seq = SHAPES[preset]
    data = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, model.cfg.vocab_size, (batch, seq), generator=data) for _ in range(2))
    compiled = torch.compile(model)  # what trainer.py does with run.compile=true

    def train_step(forward: Callable[..., Any]) -> Callable[[], float]:
        def step() -> float:
            model.train()
            _, loss = forward(x, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.item()
        return step

    def eval_forward(forward: Callable[..., Any]) -> Callable[[], float]:
        @torch.no_grad()
        def run() -> float:
            model.eval()
            return forward(x, y)[1].item()
        return run

    decoder = copy.deepcopy(model).eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (1, PROMPT_TOKENS), generator=data)

    def greedy(compile: bool) -> Callable[[], list[int]]:
        return lambda: generate(decoder, prompt, new_tokens, [Greedy()], compile=compile)[0].tolist()

    return {
        "train step (fwd+bwd)": {"eager": train_step(model), "compiled": train_step(compiled)},
        "eval forward": {"eager": eval_forward(model), "compiled": eval_forward(compiled)},
        f"greedy generation ({new_tokens} tokens)": {"eager": greedy(False), "compiled": greedy(True)},
    }


def measure(name: str, pair: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    counters.clear()
    eager_first = timed(pair["eager"])
    outputs: dict[str, Any] = {}
    start = time.perf_counter()
    outputs["compiled"] = pair["compiled"]()
    compiled_first = time.perf_counter() - start
    graphs = counters["stats"]["unique_graphs"]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(rounds + 1):  # round 0 is one more warm-up
        order = ["eager", "compiled"] if r % 2 else ["compiled", "eager"]
        for variant in order:
            start = time.perf_counter()
            outputs[variant] = pair[variant]()
            if r:
                times[variant].append(time.perf_counter() - start)
    eager, compiled = (statistics.median(times[v]) for v in ("eager", "compiled"))
    result = {
        "eager_median_s": eager, "compiled_median_s": compiled, "speedup": eager / compiled,
        "compiled_first_call_s": compiled_first, "compile_s": compiled_first - compiled,
        "eager_first_call_s": eager_first, "graphs_compiled": graphs, "times_s": times,
        "recompiled_after_first_call": counters["stats"]["unique_graphs"] - graphs,
    }
    if isinstance(outputs["eager"], list):  # greedy tokens: must be the very same
        result["tokens_equal"] = outputs["eager"] == outputs["compiled"]
        new = len(outputs["eager"]) - PROMPT_TOKENS
        result["eager_tokens_per_s"], result["compiled_tokens_per_s"] = new / eager, new / compiled
    else:
        result["loss_eager"], result["loss_compiled"] = outputs["eager"], outputs["compiled"]
    print(f"  {name}: eager {eager:.3f}s, compiled {compiled:.3f}s ({eager / compiled:.2f}x), "
          f"compile {result['compile_s']:.1f}s, {graphs} graphs", flush=True)
    return result


def table(results: dict[str, Any]) -> str:
    lines = [
        "| preset | threads | workload | eager | compiled | speedup | compile time | graphs |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key, entries in results["presets"].items():
        preset, threads = key.split("/")
        for name, r in entries.items():
            if "eager_tokens_per_s" in r:
                eager, compiled = f"{r['eager_tokens_per_s']:.1f} tok/s", f"{r['compiled_tokens_per_s']:.1f} tok/s"
            else:
                eager, compiled = f"{r['eager_median_s'] * 1000:.0f} ms", f"{r['compiled_median_s'] * 1000:.0f} ms"
            lines.append(
                f"| {preset} | {threads.removesuffix(' threads')} | {name} | {eager} | {compiled} | {r['speedup']:.2f}x | {r['compile_s']:.0f} s | {r['graphs_compiled']} |"
            )
    m = results["machine"]
    lines.append("")
    lines.append(
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {results['date']}; "
        f"load average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after "
        f"(the run itself loads the CPU; a load above 0.5 before it means other work shared it). Inductor cache: {'warm' if results['warm_cache'] else 'cold'}."
    )
    return "\n".join(lines)


def update_readme(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    readme = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        readme = head + block + rest.split(END, 1)[1]
    else:
        readme = readme.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    README.write_text(readme, encoding="utf-8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("cpu-small", "gpt2", "all"), default="cpu-small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", default=str(torch.get_num_threads()), help="torch intra-op thread counts, e.g. 1,2 (default: torch's)")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's usual on-disk cache")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    args = parser.parse_args()
    thread_counts = [int(n) for n in args.threads.split(",")]
    presets = ["cpu-small", "gpt2"] if args.preset == "all" else [args.preset]
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "warm_cache": args.warm_cache, "rounds": args.rounds,
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "threads": thread_counts,
            "torch": torch.__version__, "python": platform.python_version(), "load_before": os.getloadavg(),
        },
        "note": "this machine is shared: compare figures within this run only, and see load_before",
        "shapes": {p: {"batch": SHAPES[p][0], "seq_len": SHAPES[p][1]} for p in presets},
        "presets": {},
    }
    for preset in presets:
        for threads in thread_counts:
            key = f"{preset}/{threads} threads"
            print(f"{key}:", flush=True)
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = GPTModel(model_preset(preset))
            accelerate(model)  # as the trainer and the model loader prepare it
            torch._dynamo.reset()
            pairs = workloads(model, preset, args.new_tokens)
            # A fresh, empty inductor cache (on disk and in memory) for each: what a first run pays.
            with contextlib.nullcontext() if args.warm_cache else fresh_cache():
                results["presets"][key] = {name: measure(name, pair, args.rounds) for name, pair in pairs.items()}
    results["machine"]["load_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = table(results)
    print(text)
    if not args.no_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
