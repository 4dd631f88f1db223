"""Finetuning data made of examples rather than a corpus: read, split and encoded once per run.

`data.format = "instruction"` reads Alpaca or chat records (`gptkit.data.instruction_files`)
and writes each with the run's prompt style; `"classification"` reads labelled texts
(`gptkit.data.classification`). Either way the validation split is held out by content
(`gptkit.data.instruction.split_examples`), so it stays the same when the file is reordered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gptkit.data.classification import encode_labelled, label_names, read_labelled
from gptkit.data.instruction import split_examples
from gptkit.data.instruction_encoding import encode_examples
from gptkit.data.instruction_files import read_examples
from gptkit.errors import DataError

Overflow = Literal["truncate", "refuse"]


@dataclass(frozen=True)
class ExampleData:
    """Encoded training and validation examples, and what encoding had to cut or drop."""

    format: Literal["instruction", "classification"]
    train: list[Any]  # EncodedExample (instruction) or EncodedText (classification)
    val: list[Any]
    truncated: int  # examples cut to the context
    dropped: tuple[str, ...] = ()  # instruction examples whose whole response was cut off
    classes: tuple[str, ...] = ()  # classification: the label names, class i first

    def summary(self) -> str:
        cut = f", {self.truncated} cut to the context" if self.truncated else ""
        dropped = f", {len(self.dropped)} dropped (no response left after the cut)" if self.dropped else ""
        classes = f"; classes {', '.join(self.classes)}" if self.classes else ""
        return f"{len(self.train):,} train / {len(self.val):,} val examples{cut}{dropped}{classes}"


def _need_file(path: str | None, kind: str) -> str:
    if path is None:
        raise DataError(f"data.format={kind} needs data.path: a file of {kind} examples")
    return path


def prepare_instruction_data(
    path: str | None, style: Any, tokenizer: Any, context_length: int, val_fraction: float, seed: int,
    train_on_prompt: bool = False, overflow: Overflow = "truncate",
) -> ExampleData:
    examples = read_examples(_need_file(path, "instruction"))
    train, val = split_examples(examples, val_fraction, seed)
    # An example of context + 1 tokens is context inputs, each with its target.
    encode = lambda part: encode_examples(part, style, tokenizer, context_length + 1, train_on_prompt, overflow)
    train_set, val_set = encode(train), encode(val)
    return ExampleData(
        "instruction", train_set.examples, val_set.examples,
        train_set.truncated + val_set.truncated, train_set.dropped + val_set.dropped,
    )


def prepare_classification_data(
    path: str | None, tokenizer: Any, context_length: int, val_fraction: float, seed: int,
    text_field: str = "text", label_field: str = "label", labels: Sequence[str] | None = None, overflow: Overflow = "truncate",
) -> ExampleData:
    path = _need_file(path, "classification")
    examples = read_labelled(path, text_field, label_field)
    key = lambda e: f"{e.label}\0{e.text}".encode()
    train, val = split_examples(examples, val_fraction, seed, key=key)
    classes = label_names(train, labels, path)
    if missing := sorted({e.label for e in val} - set(classes)):
        raise DataError(f"{path}: the validation split holds labels {missing} that no training example has; add examples of them")
    train_set, cut_train = encode_labelled(train, classes, tokenizer, context_length, overflow)
    val_set, cut_val = encode_labelled(val, classes, tokenizer, context_length, overflow)
    return ExampleData("classification", train_set, val_set, cut_train + cut_val, classes=tuple(classes))
