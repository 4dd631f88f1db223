"""Small finetuning sets gptkit writes itself, so the README's recipes and the tests need no download.

    python -m gptkit.data.sample_sets DIR

writes into DIR:

- `notes.txt`: plain text for continued pretraining;
- `instructions.jsonl`: Alpaca-style records whose answers follow from the question
  (arithmetic, word reversal, capitals), so a finetuned model's answers can be checked;
- `reviews.csv`: short film reviews, labelled positive or negative by the one
  sentiment word each holds, which a small model learns in seconds.

The sets are fixed by a seed: the same bytes on every machine.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo", "Peru": "Lima"}
WORDS = ["garden", "river", "window", "pencil", "candle", "forest", "bridge", "rocket"]
POSITIVE = ["wonderful", "delightful", "moving", "brilliant", "charming"]
NEGATIVE = ["dreadful", "boring", "clumsy", "tedious", "awful"]
FILLER = ["the", "film", "story", "actors", "music", "ending", "plot", "scenes", "was", "and", "felt", "quite"]


def instruction_records(n: int = 60, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            records.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."})
        elif kind == 1:
            word = rng.choice(WORDS)
            records.append({"instruction": "Reverse the letters of the word.", "input": word, "output": word[::-1]})
        else:
            country = rng.choice(sorted(CAPITALS))
            records.append({"instruction": f"What is the capital of {country}?", "input": "", "output": f"{CAPITALS[country]}."})
    return records


def review_rows(n: int = 400, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


def notes_text(n: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(f"Note {i}: the {rng.choice(WORDS)} by the {rng.choice(WORDS)} was {rng.choice(POSITIVE)}.\n" for i in range(n))


def write_sample_sets(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    notes, instructions, reviews = directory / "notes.txt", directory / "instructions.jsonl", directory / "reviews.csv"
    notes.write_text(notes_text(), encoding="utf-8")
    instructions.write_text("".join(json.dumps(r) + "\n" for r in instruction_records()), encoding="utf-8")
    with reviews.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(review_rows())
    return [notes, instructions, reviews]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gptkit.data.sample_sets DIR")
    for path in write_sample_sets(Path(sys.argv[1])):
        print(path)
