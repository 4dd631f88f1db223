"""Benchmark: one lm-evaluation-harness task's wall time with gptkit as the model, against the harness's `hf` model.

    python bench/harness.py [--preset gpt2|cpu-small] [--questions 64] [--batch-size 8] [--rounds 3] [--out bench/results/harness.json]

Both sides run the same multiple-choice task, written here (a YAML over a local JSONL
file: `--questions` questions of four endings, cut from the standard library's
docstrings, so nothing is fetched), with the same random weights: gptkit's model
exported by `export_hf`, read back by gptkit (`load_scored_model`, as `evaluate`
loads it) and by the harness's `HFLM` (transformers, float32). Each round is one
`simple_evaluate` per side, the same batch size, alternating which goes first; one
warm-up round, then the median of `--rounds`. Before timing, every request's
log-likelihood must agree to 1e-4 and the accuracies must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from gptkit import GPTModel, model_preset
from gptkit.data.corpus import default_corpus_files, read_text
from gptkit.evaluation.harness import GptkitLM
from gptkit.evaluation.model_source import load_scored_model
from gptkit.interop.hf_checkpoint import export_hf

TASK = "gptkit_bench_choices"


def questions(n: int) -> list[dict]:
    """Contexts of about 60 words from docstrings; the true ending is the next 8 words, three others are drawn from elsewhere."""
    words: list[str] = []
    for path in default_corpus_files():
        words += read_text(path).split()
        if len(words) > n * 200:
            break
    out = []
    for i in range(n):
        at = i * 150
        endings = [" ".join(words[at + 60 : at + 68])] + [" ".join(words[at + 90 + 10 * k : at + 98 + 10 * k]) for k in range(3)]
        out.append({"query": " ".join(words[at : at + 60]), "choices": endings, "gold": 0})
    return out


def write_task(folder: Path, n: int) -> None:
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions(n)))
    (folder / "task.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )


def evaluate(lm: object, folder: Path) -> tuple[dict, float]:
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0)
    return results, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", choices=["gpt2", "cpu-small"])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "harness.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_hf(GPTModel(model_preset(args.preset)), folder / "hf")
        write_task(folder, args.questions)
        scored = load_scored_model(hf_dir=folder / "hf")
        sides = {
            "gptkit": GptkitLM(scored.model, scored.tokenizer, batch_size=args.batch_size),
            "hf": HFLM(pretrained=str(folder / "hf"), batch_size=args.batch_size, device="cpu"),
        }
        warm = {name: evaluate(lm, folder)[0] for name, lm in sides.items()}
        ll = {name: [r[0][0] for s in w["samples"][TASK] for r in s["resps"]] for name, w in warm.items()}
        diff = max(abs(a - b) for a, b in zip(ll["gptkit"], ll["hf"], strict=True))
        acc = {name: w["results"][TASK]["acc,none"] for name, w in warm.items()}
        if diff > 1e-4 or acc["gptkit"] != acc["hf"]:
            raise SystemExit(f"the two sides disagree: largest log-likelihood difference {diff}, acc {acc}")
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                seconds[name].append(evaluate(sides[name], folder)[1])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "preset": args.preset, "questions": args.questions, "requests": len(ll["hf"]), "batch_size": args.batch_size,
        "largest_loglikelihood_difference": diff, "acc": acc, "seconds": seconds, "median_s": median,
        "speedup": median["hf"] / median["gptkit"], "threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(ll['hf'])} requests, log-likelihoods within {diff:.1e}, acc {acc['gptkit']:.4f} on both; "
          f"median wall time gptkit {median['gptkit']:.2f} s, hf {median['hf']:.2f} s: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
