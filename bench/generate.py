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
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptkit import GPTModel, model_preset
from gptkit.kernels import accelerate
from gptkit.kernels.decode_step import StockDecoder
from gptkit.generation.generate import generate
from gptkit.interop.hf_convert import hf_config_dict, to_hf_state_dict
from gptkit.kernels.huge_pages import move_to_huge_pages
from gptkit.generation.samplers import Greedy

RESULTS = ROOT / "bench" / "results" / "generate.json"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
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
