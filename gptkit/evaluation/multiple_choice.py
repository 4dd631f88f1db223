"""Multiple-choice scoring, as HellaSwag is scored: which ending does the model find most likely?

Each record is a context and its endings, in HellaSwag's shape (`ctx`, `endings`, `label`)
or the lm-evaluation-harness's (`query`, `choices`, `gold`). An ending is scored by the
log-probability of its tokens after the context's (the ending written after a space, as
both HellaSwag's scoring and the harness join them): `acc` picks the highest sum,
`acc_norm` the highest mean per token, as build-nanogpt's hellaswag.py does. A context
and ending longer than the model's context keep their last tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptkit.data.instruction_files import (
    json_type,
    load_line,
    numbered_lines,
    read_utf8,
)
from gptkit.errors import DataError
from gptkit.evaluation.last_positions import logits_of_last
from gptkit.model.gpt import GPTModel

EXPECTED = "JSON lines of {ctx, endings, label} (HellaSwag) or {query, choices, gold} (lm-evaluation-harness)"


@dataclass(frozen=True)
class Question:
    context: str
    endings: tuple[str, ...]
    label: int
    source: str


@dataclass(frozen=True)
class ChoiceScores:
    acc: float
    acc_norm: float
    questions: int


def read_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    path = Path(path)
    text = read_utf8(path, "multiple-choice data file", EXPECTED)
    questions = []
    for n, line in numbered_lines(text):
        if limit is not None and len(questions) >= limit:
            break
        questions.append(_question(load_line(path, n, line), f"{path} line {n}"))
    if not questions:
        raise DataError(f"{path} holds no questions; expected {EXPECTED}")
    return questions


def _question(record: Any, where: str) -> Question:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {json_type(record)}")
    keys = ("ctx", "endings", "label") if "ctx" in record or "endings" in record else ("query", "choices", "gold")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}; expected {EXPECTED}")
    context, endings, label = (record[k] for k in keys)
    if not isinstance(context, str) or not isinstance(endings, list) or not all(isinstance(e, str) for e in endings) or len(endings) < 2:
        raise DataError(f"{where}: '{keys[0]}' should be text and '{keys[1]}' a list of at least two texts")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # HellaSwag's files write the label as a string
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise DataError(f"{where}: '{keys[2]}' is {label!r}; expected the index of one of the {len(endings)} endings (0 to {len(endings) - 1})")
    return Question(context, tuple(endings), label, where)


@torch.inference_mode()
def ending_logprobs(model: GPTModel, tokenizer: Any, question: Question) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each ending after the context."""
    context_ids = tokenizer.encode(question.context)
    out = []
    device = next(model.parameters()).device
    for ending in question.endings:
        ending_ids = tokenizer.encode(" " + ending)
        if not ending_ids:
            raise DataError(f"{question.source}: an ending tokenizes to nothing; every ending needs at least one token")
        ids = (context_ids + ending_ids)[-(model.cfg.context_length + 1) :]
        x = torch.tensor([ids[:-1]], device=device)
        scored = min(len(ending_ids), len(x[0]))  # an ending longer than the context keeps its last tokens
        with logits_of_last(model, scored):  # the ending's positions are all that is read
            log_probs = F.log_softmax(model(x)[0].float(), dim=-1)
        targets = torch.tensor(ids[-scored:], device=device)
        picked = log_probs.gather(-1, targets[:, None])[:, 0]
        out.append((float(picked.sum()), len(ending_ids)))
    return out


def score_questions(model: GPTModel, tokenizer: Any, questions: list[Question], progress: Any = None) -> ChoiceScores:
    correct = correct_norm = 0
    for i, q in enumerate(questions):
        scores = ending_logprobs(model, tokenizer, q)
        correct += max(range(len(scores)), key=lambda k: scores[k][0]) == q.label
        correct_norm += max(range(len(scores)), key=lambda k: scores[k][0] / scores[k][1]) == q.label
        if progress is not None:
            progress(i + 1, len(questions))
    return ChoiceScores(correct / len(questions), correct_norm / len(questions), len(questions))
