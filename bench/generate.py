"""Benchmark: greedy generation speed of GPT-2 124M on this machine's CPU.

    python bench/generate.py [--repeats 5] [--new-tokens 128] [--threads N]

Three ways to produce the same greedy continuation, timed in one process and
interleaved so that a slow moment hits them all alike: gptkit with its KV cache,
gptkit recomputing the whole context for every token, and Hugging Face's
`GPT2LMHeadModel.generate` (use_cache=True) holding the very same weights.
Random weights (`model_preset("gpt2")`), batch 1, a 16-token prompt, 128 new
tokens; one warm-up round, then the median of `--repeats` rounds. gptkit's
weights are moved into huge pages as `main.py generate`/`serve` load them
(`gptkit.kernels.huge_pages`); Hugging Face's copy stays in memory as transformers
allocates it (the two hold equal values, not the same memory). Then the
latency of one cached decode step at cache lengths 128, 512 and 1000, through
`StockDecoder` as `generate` steps this model.

Prints a Markdown table and writes bench/results/generate.json. Not a test:
figures depend on the machine and on whatever else runs on it (check `uptime`).

    python bench/generate.py --matrix [--preset gpt2 gpt2-xl] [--batch 1 8]
        [--dtype float32 bfloat16] [--quantize none int8] [--new-tokens N] [--repeats N]
    python bench/generate.py --quick --out PATH     # tiny settings, seconds: checks the script

The matrix: each preset (random weights) prepared as `main.py generate` loads it
(`prepare_for_use`: quantized, cast, kernels, huge pages) in every dtype x
quantization asked for, and Hugging Face's `generate` on the same weights in each
dtype (it has no int8 path on the CPU, so gptkit's int8 rows are set against its
float32 and bfloat16 ones). Greedy, a 16-token prompt per row, batch 1 and 8; one
warm-up round, then the median of `--repeats` interleaved rounds. Small presets
hold every variant at once and rotate through all of them; a preset over
`HOLD_ALL_BYTES` in float32 (gpt2-xl: 6.2 GB) holds two models at a time, gptkit's
variant and Hugging Face's in the same dtype, and rotates through that pair.
The memory bandwidth is measured in the same run (a sum over a large float32
tensor, median of several, before, between and after the groups), and each figure
is also given as weight bytes read per step x steps per second / that bandwidth.
Results in bench/results/generate_matrix.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptkit import GPTModel, ModelConfig, model_preset
from gptkit.dtypes import torch_dtype
from gptkit.generation.generate import generate
from gptkit.generation.loading import prepare_for_use
from gptkit.generation.samplers import Greedy
from gptkit.interop.hf_convert import hf_config_dict, to_hf_state_dict
from gptkit.kernels import accelerate
from gptkit.kernels.decode_step import StockDecoder
from gptkit.kernels.huge_pages import move_to_huge_pages

RESULTS = ROOT / "bench" / "results" / "generate.json"
MATRIX_RESULTS = ROOT / "bench" / "results" / "generate_matrix.json"
PROMPT_TOKENS = 16
CONTEXT_LENGTHS = (128, 512, 1000)


def hf_twin(model: GPTModel) -> Any:
    """A transformers GPT2LMHeadModel holding `model`'s weights, never stopping at <|endoftext|>."""
    import transformers

    config = transformers.GPT2Config(**hf_config_dict(model.cfg))
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(config)
    hf.load_state_dict(to_hf_state_dict(model), strict=False, assign=True)
    hf.lm_head.weight = hf.transformer.wte.weight
    # Random weights may well produce token 50256; every method must make all 128 tokens.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generation_rates(model: GPTModel, hf: Any, prompt: torch.Tensor, new: int, repeats: int) -> dict[str, dict]:
    greedy = [Greedy()]
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            outputs[name] = fn()
        return go

    methods = {
        "gptkit (KV cache)": run("cache", lambda: generate(model, prompt, new, greedy)),
        "gptkit (no cache)": run("no cache", lambda: generate(model, prompt, new, greedy, use_cache=False)),
        "Hugging Face generate": run("hf", lambda: hf.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=True)),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, fn in methods.items():
                elapsed = seconds(fn)
                if round_:
                    times[name].append(elapsed)
    assert all(out.shape == (1, PROMPT_TOKENS + new) for out in outputs.values()), {k: v.shape for k, v in outputs.items()}
    same = {k: int((v == outputs["cache"]).all(dim=0).sum()) - PROMPT_TOKENS for k, v in outputs.items()}
    return {
        name: {
            "median_s": statistics.median(ts),
            "tokens_per_s": new / statistics.median(ts),
            "runs_s": ts,
            "tokens_equal_to_cached": same[key],
        }
        for (name, ts), key in zip(times.items(), ("cache", "no cache", "hf"))
    }


def decode_step_ms(model: GPTModel, hf: Any, length: int, repeats: int) -> dict[str, float]:
    """One cached decode step with `length` positions already in the cache, for gptkit and HF."""
    ids = torch.randint(0, model.cfg.vocab_size, (1, length + 1), generator=torch.Generator().manual_seed(length))
    prefix, last = ids[:, :length], ids[:, length:]
    with torch.inference_mode():
        cache = model.make_kv_cache(1)
        model(prefix, kv_cache=cache, last_only=True)

        decoder = StockDecoder.for_model(model)  # what `generate` steps through for this model

        def ours() -> None:
            for layer in cache.layers:
                layer.length = length  # forget the previous timing's token
            if decoder is not None:
                decoder(last, length, cache)
            else:
                model(last, start_pos=length, kv_cache=cache, last_only=True)

        past = hf(prefix, use_cache=True).past_key_values

        def theirs() -> None:
            extra = past.get_seq_length() - length
            if extra:
                past.crop(-extra)  # transformers 5: a negative count of tokens to remove
            hf(last, past_key_values=past, use_cache=True)

        timings: dict[str, list[float]] = {"gptkit": [], "hf": []}
        for round_ in range(repeats + 2):
            for name, fn in (("gptkit", ours), ("hf", theirs)):
                elapsed = seconds(fn)
                if round_ >= 2:
                    timings[name].append(elapsed)
    return {name: 1000 * statistics.median(ts) for name, ts in timings.items()}


HOLD_ALL_BYTES = 2 * 10**9  # presets larger than this in float32 are timed two models at a time
BANDWIDTH_BYTES = 1 << 30  # the bandwidth probe: far larger than any cache
QUICK_CONFIG = {"vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2}
TARGETS = {"bfloat16 vs float32": 1.8, "int8 vs float32": 3.0, "batch 8 vs batch 1": 5.0}


@dataclass(frozen=True)
class Variant:
    library: str  # "gptkit" or "hf"
    dtype: str
    quantize: str | None = None

    @property
    def name(self) -> str:
        return f"{self.library} {self.dtype}" + (f" + {self.quantize}" if self.quantize else "")


def stream_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """GB/s at which this process reads memory now: a float32 sum over `nbytes`, median of `repeats`."""
    big = torch.ones(nbytes // 4)
    big.sum()  # pages touched, threads started
    times = [seconds(big.sum) for _ in range(repeats)]
    return nbytes / statistics.median(times) / 1e9


def weight_bytes_per_step(model: torch.nn.Module, skip: Sequence[torch.Tensor]) -> int:
    """Bytes of the parameters and buffers a decode step reads whole, each tensor once (a tied head is one).

    `skip`: the tables a step reads one row of (position embeddings, an untied token embedding).
    """
    skipped = {t.data_ptr() for t in skip}
    sizes = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.numel()}
    return sum(size for ptr, size in sizes.items() if ptr not in skipped)


def gptkit_step_bytes(model: GPTModel) -> int:
    skip = [model.tok_emb.weight] if getattr(model.out_head, "weight", None) is not model.tok_emb.weight else []
    skip += [p for p in model.pos_emb.parameters()]
    return weight_bytes_per_step(model, skip)


def hf_step_bytes(hf: Any) -> int:
    return weight_bytes_per_step(hf, [hf.transformer.wpe.weight])  # wte is the tied head: read whole


def gptkit_variant(base: GPTModel, variant: Variant) -> GPTModel:
    """`base`'s weights prepared as `main.py generate` loads a model, without a second float32 copy."""
    with torch.device("meta"):
        model = GPTModel(base.cfg)
    model.load_state_dict(base.state_dict(), assign=True)  # new parameters on base's memory
    if base.out_head.weight is base.tok_emb.weight:
        model.out_head.weight = model.tok_emb.weight
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    # Quantized, cast, kernels on, weights moved into huge pages: base's tensors are left as they are.
    prepare_for_use(model.eval(), torch_dtype(variant.dtype), quantize=variant.quantize)
    return model


def hf_variant(base: GPTModel, variant: Variant) -> Any:
    hf = hf_twin(base)  # float32: shares base's memory
    return hf.to(torch_dtype(variant.dtype))


def fresh_model(cfg: ModelConfig) -> GPTModel:
    """The benchmark's random weights: the same values every time for one config."""
    torch.manual_seed(0)
    return GPTModel(cfg).eval()


def build_pair(cfg: ModelConfig, group: list[Variant]) -> dict[Variant, Any]:
    """gptkit's variant (and Hugging Face in its dtype) from fresh weights, at most two float32 copies alive.

    The fresh model becomes gptkit's in place. Hugging Face's twin (its own transposed
    copy of the matrices) is made from the float32 weights: before they are cast or
    quantized, or from gptkit's prepared float32 model, which holds the same values.
    """
    base = fresh_model(cfg)
    ours, twin = group[0], (group[1] if len(group) > 1 else None)
    models: dict[Variant, Any] = {}
    if twin is not None and (ours.dtype != "float32" or ours.quantize):
        models[twin] = hf_variant(base, twin)
    prepare_for_use(base, torch_dtype(ours.dtype), quantize=ours.quantize)
    models[ours] = base
    if twin is not None and twin not in models:
        models[twin] = hf_variant(base, twin)
    return {v: models[v] for v in group}


def rotate(
    methods: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Each method once per round, in turn; round 0 warms up. Times and last outputs by name."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for name, fn in methods.items():
                start = time.perf_counter()
                outputs[name] = fn()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return times, outputs


def matrix_groups(variants: list[Variant], hold_all: bool) -> list[list[Variant]]:
    """The variants timed together: all of them, or each gptkit one with Hugging Face in its dtype."""
    if hold_all:
        return [variants]
    groups = []
    for v in (v for v in variants if v.library == "gptkit"):
        twin = Variant("hf", v.dtype)
        groups.append([v, twin] if twin in variants else [v])
    return groups


PROGRESS = Console(stderr=True)


def time_group(
    models: dict[Variant, Any], preset: str, group_index: int, batch: int, vocab_size: int, new: int, repeats: int
) -> list[dict[str, Any]]:
    """One batch size through every model of a group, interleaved: a row per model.

    A function of its own so that nothing here (the timed closures) keeps a model alive after its group.
    """
    rows: list[dict[str, Any]] = []
    prompt = torch.randint(0, vocab_size, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(prompt)
    methods: dict[str, Callable[[], torch.Tensor]] = {}
    for v, m in models.items():
        if v.library == "gptkit":
            methods[v.name] = lambda m=m, prompt=prompt: generate(m, prompt, new, [Greedy()])
        else:
            methods[v.name] = lambda m=m, prompt=prompt, mask=mask: m.generate(
                prompt, attention_mask=mask, max_new_tokens=new, do_sample=False, use_cache=True
            )
    times, outputs = rotate(methods, repeats)
    for v, m in models.items():
        median = statistics.median(times[v.name])
        out = outputs[v.name]
        assert out.shape == (batch, PROMPT_TOKENS + new), (v.name, out.shape)
        rows.append({
            "preset": preset, "group": group_index, "batch": batch, "library": v.library, "dtype": v.dtype, "quantize": v.quantize,
            "name": v.name, "median_s": median, "runs_s": times[v.name],
            "tokens_per_s": batch * new / median, "steps_per_s": new / median,
            "weight_bytes_per_step": gptkit_step_bytes(m) if v.library == "gptkit" else hf_step_bytes(m),
            "tokens": out[:, PROMPT_TOKENS:].tolist(),
        })
    return rows


def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    presets = ["quick"] if args.quick else args.preset
    new = args.new_tokens
    variants = [Variant("gptkit", d, None if q == "none" else q) for d in args.dtype for q in args.quantize]
    variants += [Variant("hf", d) for d in args.dtype]
    bandwidths: list[float] = []
    probe = 32 << 20 if args.quick else BANDWIDTH_BYTES
    bandwidths.append(stream_bandwidth(probe))
    rows: list[dict[str, Any]] = []
    for preset in presets:
        cfg = ModelConfig(**QUICK_CONFIG) if preset == "quick" else model_preset(preset)
        with torch.device("meta"):
            float32_bytes = sum(p.numel() * 4 for p in GPTModel(cfg).parameters())
        hold_all = float32_bytes <= HOLD_ALL_BYTES and not args.hold_two
        base = fresh_model(cfg) if hold_all else None
        for group_index, group in enumerate(matrix_groups(variants, hold_all)):
            if base is not None:
                models = {v: gptkit_variant(base, v) if v.library == "gptkit" else hf_variant(base, v) for v in group}
            else:
                models = build_pair(cfg, group)
            for batch in args.batch:
                # Hugging Face's bfloat16 on a CPU without AVX-512 BF16 decodes at a few tokens/s: a run can take
                # many minutes, so each group says what it times as it starts.
                # (print, not log: log keeps the caller's frame, and with it this group's models, alive)
                PROGRESS.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {preset}, batch {batch}: {', '.join(v.name for v in group)}")
                rows += time_group(models, preset, group_index, batch, cfg.vocab_size, new, args.repeats)
            del models
            gc.collect()
            bandwidths.append(stream_bandwidth(probe))
        base = None
        gc.collect()
    bandwidth = statistics.median(bandwidths)
    for row in rows:
        row["bandwidth_share"] = row["weight_bytes_per_step"] * row["steps_per_s"] / (bandwidth * 1e9)
        reference = find_row(rows, row["preset"], row["batch"], Variant("gptkit", "float32"))
        row["tokens_equal_to_gptkit_float32"] = (
            None if reference is None else sum(a == b for r, q in zip(row["tokens"], reference["tokens"]) for a, b in zip(r, q))
        )
    return {"bandwidth_gb_s": bandwidth, "bandwidth_probes_gb_s": bandwidths, "runs": rows, "ratios": ratios(rows)}


def find_row(rows: list[dict[str, Any]], preset: str, batch: int, v: Variant, group: int | None = None) -> dict[str, Any] | None:
    """`v`'s row for `preset` and `batch`: the one timed in `group` where there is one (a pair's twin), else the first."""
    found = [r for r in rows if (r["preset"], r["batch"], r["library"], r["dtype"], r["quantize"]) ==
             (preset, batch, v.library, v.dtype, v.quantize)]
    return next((r for r in found if r["group"] == group), found[0] if found else None)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's tokens/s against gptkit float32, Hugging Face (same dtype; int8: both) and its own batch 1."""
    out = []
    for row in rows:
        def against(v: Variant, batch: int | None = None, row: dict[str, Any] = row) -> float | None:
            other = find_row(rows, row["preset"], batch or row["batch"], v, row["group"])
            return None if other is None else row["tokens_per_s"] / other["tokens_per_s"]

        entry = {"preset": row["preset"], "batch": row["batch"], "name": row["name"],
                 "vs_gptkit_float32": against(Variant("gptkit", "float32"))}
        for dtype in (("float32", "bfloat16") if row["quantize"] else (row["dtype"],)):
            entry[f"vs_hf_{dtype}"] = against(Variant("hf", dtype))
        if row["batch"] != 1:
            entry["vs_batch_1"] = against(Variant(row["library"], row["dtype"], row["quantize"]), 1)
        out.append(entry)
    return out


def print_matrix(result: dict[str, Any], new: int) -> None:
    print(f"\nmemory bandwidth (float32 sum, median of probes): {result['bandwidth_gb_s']:.1f} GB/s "
          f"(probes {', '.join(f'{b:.1f}' for b in result['bandwidth_probes_gb_s'])}); {new} new tokens\n")
    print("| preset | batch | method | tokens/s | vs gptkit fp32 | vs HF (same dtype) | vs batch 1 | bandwidth share | tokens = gptkit fp32 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row, ratio in zip(result["runs"], result["ratios"]):
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}x"
        hf = " / ".join(fmt(ratio[k]) for k in ratio if k.startswith("vs_hf_"))
        equal = row["tokens_equal_to_gptkit_float32"]
        same = "-" if equal is None else f"{equal}/{row['batch'] * new}"
        print(f"| {row['preset']} | {row['batch']} | {row['name']} | {row['tokens_per_s']:.1f} | {fmt(ratio['vs_gptkit_float32'])} | "
              f"{hf} | {fmt(ratio.get('vs_batch_1'))} | {100 * row['bandwidth_share']:.0f}% | "
              f"{same} |")


def matrix_main(args: argparse.Namespace) -> None:
    if args.quick:
        args.new_tokens, args.repeats = min(args.new_tokens, 4), 1
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    result = run_matrix(args)
    print_matrix(result, args.new_tokens)
    import transformers

    from gptkit.kernels import gemv

    out = Path(args.out) if args.out else MATRIX_RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": {
            "presets": ["quick"] if args.quick else args.preset, "batches": args.batch, "dtypes": args.dtype,
            "quantize": args.quantize, "prompt_tokens": PROMPT_TOKENS, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "threads": torch.get_num_threads(), "weights": "random (seed 0)",
            "load_average_at_start": load_before, "load_average_at_end": os.getloadavg()[0],
            "int8_kernel": "gptkit gemv" if gemv.available() else "aten _weight_int8pack_mm",
            "hugging_face_int8": "none on the CPU: int8 rows are compared with its float32 and bfloat16",
        },
        "machine": machine(transformers.__version__),
        "targets": TARGETS,
        **result,
    }, indent=2) + "\n")
    print(f"\nwritten to {out}")


def machine(transformers_version: str) -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers_version, "python": platform.python_version(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--matrix", action="store_true", help="presets x batches x dtypes x quantization -> generate_matrix.json")
    parser.add_argument("--quick", action="store_true", help="the matrix on a tiny model with 4 new tokens: checks the script")
    parser.add_argument("--preset", nargs="+", default=["gpt2"], choices=["gpt2", "gpt2-xl"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--quantize", nargs="+", default=["none", "int8"], choices=["none", "int8"])
    parser.add_argument("--hold-two", action="store_true", help="time two models at a time whatever the preset's size")
    parser.add_argument("--out", default=None, help="where the matrix's JSON goes (default bench/results/generate_matrix.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.matrix or args.quick:
        matrix_main(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    torch.manual_seed(0)
    model = GPTModel(model_preset("gpt2")).eval()
    hf = hf_twin(model)  # shares the weights' current memory
    # As gptkit.generation.loading.load_model prepares a model: the CPU kernels switched on
    # (accelerate(model, inference=True)), which moves gptkit's copy of the weights into huge pages.
    accelerate(model)
    model_in_huge_pages = move_to_huge_pages(model)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))

    rates = generation_rates(model, hf, prompt, args.new_tokens, args.repeats)
    steps = {length: decode_step_ms(model, hf, length, 10) for length in CONTEXT_LENGTHS}

    cached = rates["gptkit (KV cache)"]["tokens_per_s"]
    print(f"\nGPT-2 124M, fp32, batch 1, greedy, {PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (1-min load average at start: {load_before:.2f})\n")
    print("| method | tokens/s | median s | gptkit-cache speed-up | tokens equal to gptkit-cache |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['median_s']:.2f} | {cached / r['tokens_per_s']:.2f}x | "
              f"{r['tokens_equal_to_cached']}/{args.new_tokens} |")
    print("\n| cache length | gptkit ms/token | Hugging Face ms/token |")
    print("|---:|---:|---:|")
    for length, ms in steps.items():
        print(f"| {length} | {ms['gptkit']:.1f} | {ms['hf']:.1f} |")

    import transformers

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "settings": {
            "model": "gpt2 (124M, random weights)", "dtype": "float32", "batch": 1, "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "load_average_at_start": load_before, "gptkit_weights_in_huge_pages": model_in_huge_pages,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        },
        "generation": rates,
        "speedup_vs_hf": cached / rates["Hugging Face generate"]["tokens_per_s"],
        "speedup_vs_no_cache": cached / rates["gptkit (no cache)"]["tokens_per_s"],
        "decode_step_ms": {str(k): v for k, v in steps.items()},
    }, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
