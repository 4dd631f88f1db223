"""The weights a score is of: a gptkit run, a Hugging Face folder, or anything `--init-from` takes.

`evaluate` and the lm-evaluation-harness adapter both load through here, so a figure
from either names the same checkpoint and ran through the same model: in eval mode,
in the dtype asked for, on gptkit's CPU speed paths (`accelerate(model, inference=True)`),
as `generate` loads it. A classification run is refused: it predicts labels, not tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptkit.data.learned_tokenizer import load_tokenizer_state, run_dir_of
from gptkit.generation.loading import (
    check_precision,
    load_model,
    prepare_for_use,
    refuse_classifier,
)
from gptkit.model.config import ModelConfig
from gptkit.model.gpt import GPTModel
from gptkit.plugins import default_registry
from gptkit.training.init_from import load_initial_weights, resolve_init_source


@dataclass(frozen=True)
class ScoredModel:
    model: GPTModel
    tokenizer: Any
    description: str  # what the results call the checkpoint


def load_scored_model(
    run: str | Path | None = None,
    hf_dir: str | Path | None = None,
    init_from: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
) -> ScoredModel:
    """From exactly one of `run`, `hf_dir` and `init_from`, on `device` (the speed paths are the CPU's),
    its weights in `dtype` and, with `quantize`, its linears quantized as `load_model` does it."""
    if sum(source is not None for source in (run, hf_dir, init_from)) != 1:
        raise ValueError("give exactly one of run, hf_dir and init_from")
    if init_from is None:
        loaded = load_model(run, hf_dir, dtype, device=device, quantize=quantize)  # refuses a classifier run
        return ScoredModel(loaded.model, loaded.tokenizer, loaded.description)
    check_precision(dtype, device, quantize)  # before any weights are read
    source = resolve_init_source(init_from)
    model = GPTModel(ModelConfig.model_validate(source.model))
    refuse_classifier(Path(init_from), model)
    load_initial_weights(model, source)
    prepare_for_use(model, dtype, device=device, quantize=quantize)  # as load_model does
    # A run's own tokenizer travels with it (its data.tokenizer, and what a learned one learned);
    # a Hugging Face model's is GPT-2's.
    tokenizer = default_registry().create("tokenizer", source.tokenizer or "gpt2")
    if source.kind in ("run", "checkpoint"):
        tokenizer = load_tokenizer_state(tokenizer, run_dir_of(source.folder))
    return ScoredModel(model, tokenizer, f"{init_from} ({source.kind})")
