"""`python main.py classify --run RUN_DIR [--text TEXT ...]`: the label of each text, and its probability.

Without --text, each line of standard input is a text. One line out per text:
the label, a tab, its probability (`--all`: every label's, most likely first).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from commands.options import Once

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "label texts with a classification run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action=Once, required=True, metavar="RUN_DIR", help="a run trained with data.format=classification")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to label (repeatable); default: each line of stdin")
    parser.add_argument("--all", action="store_true", help="print every label's probability, not only the most likely")


def run(args: argparse.Namespace, registry: Registry) -> int:
    from pathlib import Path

    from gptkit.errors import GptkitError
    from gptkit.generation.classify import check_classifier, classify_texts
    from gptkit.training.checkpoint import load_run_model, read_run_config

    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise GptkitError("no text to classify: give --text TEXT or lines on standard input")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise GptkitError(f"run directory {args.run} does not exist")
    model = load_run_model(run_dir)
    check_classifier(model, args.run)
    stored = read_run_config(run_dir)
    labels = stored["data"]["labels"]
    tokenizer = registry.create("tokenizer", stored["data"].get("tokenizer") or "gpt2")
    for prediction in classify_texts(model, tokenizer, texts, labels):
        if args.all:
            ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
            line = "\t".join(f"{label}\t{p:.4f}" for label, p in ranked)
        else:
            line = f"{prediction.label}\t{prediction.probability:.4f}"
        # Plain writes: rich would turn the tabs into spaces, and the output is for other programs too.
        sys.stdout.write(line + "\n")
    return 0
