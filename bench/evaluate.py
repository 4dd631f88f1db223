"""Benchmark: tokens scored per second by `evaluate --task perplexity`, gptkit against Hugging Face.

    python bench/evaluate.py [--preset gpt2|cpu-small] [--tokens 8192] [--rounds 3] [--out bench/results/evaluate.json]

Both sides score the same token stream (the first `--tokens` of the Python standard
library's sources, gptkit's default corpus, tokenized with GPT-2's tokenizer) with the
same random weights (gptkit's, copied into `GPT2LMHeadModel` by bench/train.py's
`hf_copy`) and the same windows (context 1024, stride 512): gptkit through
`gptkit.evaluation.perplexity.sliding_window_loss` on the model as `evaluate` loads it
(`accelerate(model, inference=True)`), Hugging Face through its perplexity guide's loop
(`model(input_ids, labels=...)`, `torch.no_grad`). The two losses must agree to 1e-4
before anything is timed. Rounds alternate which side goes first; one warm-up round,
then the median of `--rounds`. Float32, all threads. Target: gptkit at least 1.5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from train import hf_copy

from gptkit import GPTModel, accelerate, model_preset
from gptkit.data.corpus import default_corpus_files, read_text
from gptkit.data.tokenizer import Tokenizer
from gptkit.evaluation.perplexity import sliding_window_loss


def token_stream(n: int) -> torch.Tensor:
    tokenizer, ids = Tokenizer(), []
    for path in default_corpus_files():
        ids += tokenizer.encode(read_text(path))
        if len(ids) >= n:
            return torch.tensor(ids[:n])
    raise SystemExit(f"the standard library has fewer than {n} tokens")


@torch.no_grad()
def guide_loss(model: torch.nn.Module, ids: torch.Tensor, context: int, stride: int) -> float:
    """Hugging Face's perplexity-guide loop, each window weighted by the tokens it really scores."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        input_ids = ids[None, begin:end]
        labels = input_ids.clone()
        labels[:, : -(end - prev_end)] = -100
        loss = model(input_ids, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())
        nll, count, prev_end = nll + loss.item() * scored, count + scored, end
        if end == len(ids):
            break
    return nll / count


def timed(fn: callable) -> tuple[float, float]:  # type: ignore[valid-type]
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", choices=["gpt2", "cpu-small"])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "evaluate.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = GPTModel(model_preset(args.preset)).eval()
    theirs = hf_copy(ours).eval()
    accelerate(ours, inference=True)
    context = ours.cfg.context_length
    stride = context // 2
    ids = token_stream(args.tokens)
    sides = {
        "gptkit": lambda: sliding_window_loss(ours, ids, stride).loss,
        "hf": lambda: guide_loss(theirs, ids, context, stride),
    }
    losses = {name: fn() for name, fn in sides.items()}  # also the warm-up round
    if abs(losses["gptkit"] - losses["hf"]) > 1e-4:
        raise SystemExit(f"the two losses differ: {losses}")
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds[name].append(timed(sides[name])[1])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    scored = len(ids) - 1
    rate = {name: scored / statistics.median(s) for name, s in seconds.items()}
    result = {
        "preset": args.preset, "tokens": len(ids), "context": context, "stride": stride, "losses": losses,
        "seconds": seconds, "tokens_per_s": rate, "ratio": rate["gptkit"] / rate["hf"], "threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"losses {losses['gptkit']:.6f} / {losses['hf']:.6f}; tokens/s gptkit {rate['gptkit']:.0f}, hf {rate['hf']:.0f}: "
          f"{result['ratio']:.2f}x (target 1.5x: {'met' if result['ratio'] >= 1.5 else 'not met'})")


if __name__ == "__main__":
    main()
