"""Labelled texts for classification finetuning (Raschka ch. 6): reading, encoding and batches.

A file is CSV (``.csv``; ``.tsv`` tab-separated), with a header row naming its
columns, or JSON lines of objects; `text_field` and `label_field` name the two
columns used (other columns are ignored). A label is kept as text ("spam", "1");
the run's classes are the label names in order, given (`data.labels`) or the
training data's own, sorted, and class i is the i-th name.

Batches reuse the instruction batches' order: each epoch a permutation of the
examples fixed by (seed, epoch), a step's examples a function of (seed, step). A batch
is right-padded with the end-of-text id and carries each row's real length, so the
classifier head pools only real tokens (`gptkit.layers.heads`); a causal model's real
tokens never attend to the padding after them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gptkit.data.instruction_batches import InstructionBatches
from gptkit.data.instruction_files import (
    json_type,
    load_line,
    numbered_lines,
    read_utf8,
)
from gptkit.errors import DataError

EXPECTED = "a CSV file with a header row, or JSON lines of objects"
LabelledBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids (batch, width), lengths (batch,), classes (batch,)


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    source: str  # "<file> line N": where messages point


@dataclass(frozen=True)
class EncodedText:
    ids: np.ndarray  # int32, at most the context length
    label: int
    source: str
    truncated: bool = False


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[LabelledText]:
    """Every (text, label) of `path`, in file order."""
    path = Path(path)
    text = read_utf8(path, "classification data file", EXPECTED)
    if not text.strip():
        raise DataError(f"{path} is empty; expected {EXPECTED}")
    rows = _csv_rows(path, text) if path.suffix.lower() in (".csv", ".tsv") else _jsonl_rows(path, text)
    examples = [_labelled(record, where, text_field, label_field) for where, record in rows]
    if not examples:
        raise DataError(f"{path} has a header but no rows; expected at least one labelled text")
    return examples


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        # DictReader's line_num after a row is the line it ended on: a quoted field may span lines.
        return [(f"{path} line {reader.line_num}", row) for row in reader]
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for n, line in numbered_lines(text):
        value = load_line(path, n, line)
        if not isinstance(value, dict):
            raise DataError(f"{path} line {n}: expected a JSON object with a text and a label, got {json_type(value)}")
        rows.append((f"{path} line {n}", value))
    return rows


def _labelled(record: dict[str, Any], where: str, text_field: str, label_field: str) -> LabelledText:
    for field, setting in ((text_field, "data.text_field"), (label_field, "data.label_field")):
        if record.get(field) is None:
            present = ", ".join(str(k) for k in record if k is not None) or "none"
            raise DataError(f"{where}: no '{field}' column ({setting}); the columns are: {present}")
    text, label = record[text_field], record[label_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: '{text_field}' should be text, got {json_type(text)}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f"{where}: '{label_field}' should be a string or a whole number, got {json_type(label)}")
    return LabelledText(text, str(label).strip(), where)


def label_names(examples: Sequence[LabelledText], given: Sequence[str] | None, path: str) -> list[str]:
    """The classes in order: `given`, or the examples' distinct labels sorted; at least two."""
    seen = sorted({e.label for e in examples})
    if given is not None:
        unknown = [label for label in seen if label not in given]
        if unknown:
            raise DataError(f"{path}: labels {unknown} are not in data.labels {list(given)}")
        names = list(given)
    else:
        names = seen
    if len(names) < 2:
        raise DataError(f"{path}: every example has the label '{seen[0]}'; classification needs at least two classes")
    return names


def encode_labelled(
    examples: Sequence[LabelledText], classes: Sequence[str], tokenizer: Any, context_length: int,
    overflow: Literal["truncate", "refuse"] = "truncate",
) -> tuple[list[EncodedText], int]:
    """Token ids and class of each example, and how many were cut to the context."""
    index = {name: i for i, name in enumerate(classes)}
    encoded, truncated = [], 0
    for e in examples:
        ids = tokenizer.encode(e.text)
        if not ids:
            raise DataError(f"{e.source}: the text is empty; every example needs at least one token")
        cut = len(ids) > context_length
        if cut and overflow == "refuse":
            raise DataError(f"{e.source} is {len(ids)} tokens, longer than the context of {context_length}; shorten it or set data.overflow=truncate")
        truncated += cut
        encoded.append(EncodedText(np.asarray(ids[:context_length], dtype=np.int32), index[e.label], e.source, cut))
    return encoded, truncated


def pad_labelled(examples: Sequence[EncodedText], pad_id: int) -> LabelledBatch:
    """(ids, lengths, classes): ids right-padded with `pad_id` to the longest row."""
    lengths = torch.tensor([len(e.ids) for e in examples], dtype=torch.long)
    x = torch.full((len(examples), int(lengths.max())), pad_id, dtype=torch.long)
    for row, e in enumerate(examples):
        x[row, : len(e.ids)] = torch.from_numpy(e.ids.astype(np.int64))
    return x, lengths, torch.tensor([e.label for e in examples], dtype=torch.long)


class ClassificationBatches(InstructionBatches):
    """Training batches of labelled texts, in the instruction batches' order (see that class)."""

    def batch(self, step: int, micro_step: int = 0, rank: int = 0) -> LabelledBatch:  # type: ignore[override]
        return pad_labelled([self.encoded[i] for i in self.indices(step, micro_step, rank)], self.pad_id)


def fixed_labelled_batches(
    encoded_val: Sequence[EncodedText], batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> list[LabelledBatch]:
    """This process's share of the validation set, each example once, the same every call."""
    n = len(encoded_val)
    share = list(encoded_val[rank * n // world_size : (rank + 1) * n // world_size])
    return [pad_labelled(share[i : i + batch_size], pad_id) for i in range(0, len(share), batch_size)]
