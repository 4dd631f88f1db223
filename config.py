"""The run config: model + data + train + sampling + run, with the default run built in.

Sources, each overriding the one before:

1. the defaults below (the `cpu-small` model, the standard-library corpus);
2. ``--preset NAME`` (a model preset, same as ``--set model.preset=NAME``);
3. a TOML or JSON file (``--config FILE``);
4. ``--set dotted.key=value`` overrides; the value is read as JSON when it parses
   (``3``, ``1e-3``, ``true``, ``["console"]``) and as a plain string otherwise.

A ``preset`` key inside the model section expands to that preset's values
before the section's other keys are applied. The resolved config is what a run
directory stores in ``config.json``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gptkit import ComponentSpec, ConfigError, ModelConfig, describe_validation_error
from gptkit.model.config import (
    fill_default_names,
    preset_values,
    registry_from,
    resolve_component,
)
from gptkit.registry import Registry

DEFAULT_MODEL_PRESET = "cpu-small"
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataConfig(Section):
    path: str | None = Field(None, description="Text file, directory, glob or http(s) URL; None: Python's standard library sources.")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of files (or of the text, for one file) kept for validation.")
    cache_dir: str | None = Field(None, description="Where token files are cached; None: $GPTKIT_CACHE or ~/.cache/gptkit.")
    tokenizer: ComponentSpec = Field(ComponentSpec(name="gpt2"), description="Tokenizer (registry kind 'tokenizer').")
    format: Literal["text", "instruction", "classification"] = Field(
        "text", description="text: a corpus to continue; instruction: Alpaca or chat JSON(L) records; classification: CSV or JSONL with a text and a label column."
    )
    prompt_style: ComponentSpec = Field(ComponentSpec(name="alpaca"), description="How an instruction example is written as text (registry kind 'prompt_style').")
    train_on_prompt: bool = Field(False, description="instruction: train on the prompt's tokens too, not only the response's.")
    packing: bool = Field(False, description="instruction: lay examples end to end in full rows instead of padding each batch.")
    overflow: Literal["truncate", "refuse"] = Field("truncate", description="An example longer than the context: cut it (and count it), or stop with its name.")
    text_field: str = Field("text", min_length=1, description="classification: the column holding the text.")
    label_field: str = Field("label", min_length=1, description="classification: the column holding the label.")
    labels: list[str] | None = Field(None, description="classification: the label names, in class order; None: the training data's, sorted.")

    @field_validator("tokenizer", mode="after")
    @classmethod
    def _known_tokenizer(cls, spec: ComponentSpec, info: ValidationInfo) -> ComponentSpec:
        return resolve_component("tokenizer", spec, registry_from(info))

    @field_validator("prompt_style", mode="after")
    @classmethod
    def _known_prompt_style(cls, spec: ComponentSpec, info: ValidationInfo) -> ComponentSpec:
        return resolve_component("prompt_style", spec, registry_from(info))


def default_callbacks() -> list[ComponentSpec]:
    names = ["console", "metrics", "loss_plot", "samples", "checkpoint", "early_stopping"]
    return [ComponentSpec(name=n) for n in names]


class LoRAConfig(Section):
    """`train.lora`: train low-rank adapters on some linears and freeze the rest (gptkit/layers/lora.py)."""

    rank: int = Field(8, gt=0, description="r: the adapters' inner width; each wrapped linear trains r * (d_in + d_out) numbers.")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    targets: list[str] = Field(
        # The attention's two projections (GPT-2's c_attn and c_proj), as the LoRA paper and LitGPT adapt them.
        default_factory=lambda: ["blocks.*.att.qkv", "blocks.*.att.out_proj"], min_length=1,
        description="Glob patterns over the model's linear layers' names: blocks.N.att.qkv, blocks.N.att.out_proj, blocks.N.ff.fc1, blocks.N.ff.fc2, out_head.",
    )


class TrainConfig(Section):
    """Defaults are the CPU run: about 4 minutes on 2 cores, validation loss from 10.9 to about 3.6."""

    batch_size: int = Field(8, gt=0, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches summed into one optimizer step.")
    max_steps: int | None = Field(250, gt=0, description="Stop after this many optimizer steps.")
    max_tokens: int | None = Field(None, gt=0, description="Stop after this many training tokens.")
    max_time: float | None = Field(None, gt=0, description="Stop after this many seconds of training.")
    max_epochs: float | None = Field(None, gt=0, description="instruction and classification data: stop after this many passes over the examples.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(2e-4, ge=0, description="Learning rate at the end of the decay.")
    scheduler: ComponentSpec = Field(ComponentSpec(name="cosine", warmup_steps=20), description="Learning-rate schedule.")
    optimizer: ComponentSpec = Field(
        ComponentSpec(name="adamw"), description="Optimizer (registry kind 'optimizer') with its parameters and parameter-group rules."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; None: no clipping.")
    eval_every: int = Field(50, gt=0, description="Validate every N steps (and at the end).")
    eval_batches: int = Field(10, gt=0, description="Fixed validation batches per evaluation.")
    nan_policy: Literal["stop", "skip"] = Field("stop", description="On a NaN/inf loss: stop the run, or skip that batch.")
    trainable: list[str] | None = Field(
        None, description="Glob patterns over parameter names: only these train (None: all), e.g. [\"blocks.11.*\", \"final_norm.*\", \"out_head.*\"]."
    )
    freeze: list[str] = Field(default_factory=list, description="Glob patterns over parameter names kept fixed (after train.trainable).")
    init_from: str | None = Field(
        None, description="Start from trained weights: a run directory, a checkpoint folder, a Hugging Face folder or a hub name (gpt2, owner/name); the model's shape comes from it."
    )
    lora: LoRAConfig | None = Field(None, description="Train LoRA adapters (needs train.init_from, the base they adapt); None: train the weights themselves.")
    callbacks: list[ComponentSpec] = Field(default_factory=default_callbacks)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        return fill_default_names(cls, data, ["scheduler", "optimizer"])

    @field_validator("scheduler", mode="after")
    @classmethod
    def _known_scheduler(cls, spec: ComponentSpec, info: ValidationInfo) -> ComponentSpec:
        return resolve_component("scheduler", spec, registry_from(info))

    @field_validator("optimizer", mode="after")
    @classmethod
    def _known_optimizer(cls, spec: ComponentSpec, info: ValidationInfo) -> ComponentSpec:
        return resolve_component("optimizer", spec, registry_from(info))

    @field_validator("callbacks", mode="after")
    @classmethod
    def _known_callbacks(cls, specs: list[ComponentSpec], info: ValidationInfo) -> list[ComponentSpec]:
        return [resolve_component("callback", spec, registry_from(info)) for spec in specs]

    @model_validator(mode="after")
    def _bounded(self) -> TrainConfig:
        if self.max_steps is None and self.max_tokens is None and self.max_time is None and self.max_epochs is None:
            raise ValueError("set at least one budget: train.max_steps, train.max_tokens, train.max_time or train.max_epochs")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) is above train.lr ({self.lr})")
        if self.lora is not None and self.init_from is None:
            raise ValueError("train.lora adapts trained weights: set train.init_from (or --init-from) to the base model")
        if self.lora is not None and (self.trainable is not None or self.freeze):
            raise ValueError("train.lora trains the adapters alone; leave train.trainable and train.freeze unset")
        return self


class SamplingConfig(Section):
    samplers: list[ComponentSpec] = Field(
        # The repetition penalty is there for small, briefly trained models: on Python
        # source they learn the commonest token (a space of indentation) first and,
        # unpenalised, repeat it for ever; with it their samples show the code they learnt.
        default_factory=lambda: [
            ComponentSpec(name="repetition_penalty", penalty=1.3),
            ComponentSpec(name="temperature", value=0.8),
            ComponentSpec(name="top_k", k=50),
        ],
        description="Applied in order to the logits before drawing a token.",
    )
    max_new_tokens: int = Field(200, gt=0)
    prompt: str = Field("", description="What the samples callback continues unless given a prompt of its own.")

    @field_validator("samplers", mode="after")
    @classmethod
    def _known_samplers(cls, specs: list[ComponentSpec], info: ValidationInfo) -> list[ComponentSpec]:
        return [resolve_component("sampler", spec, registry_from(info)) for spec in specs]


class RunSection(Section):
    out_dir: str = Field("runs", description="Parent of the run directories.")
    name: str | None = Field(None, description="Run directory name; None: a timestamp.")
    # torch's generators take 64-bit seeds; the margin leaves room for the per-process offsets added to it.
    seed: int = Field(1337, ge=0, lt=2**62, description="Seed of the weights, batches and dropout.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Autocast precision (float16: CUDA only).")
    compile: bool = Field(False, description="torch.compile the model.")
    kernels: bool = Field(True, description="gptkit's CPU speed paths (gptkit.kernels.accelerate); false: the plain model.")
    # An int, not a Literal of modes: "every k-th block" needs the number anyway, and pydantic's
    # int takes true/false as 1/0, so `run.activation_checkpointing=true` reads as it says.
    activation_checkpointing: int = Field(
        0, ge=0, description="Recompute block activations in the backward pass to save memory: 0/false off, 1/true every block, k every k-th block."
    )
    peak_flops: float | None = Field(None, gt=0, description="Device peak FLOP/s for MFU; None: known GPUs only.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Under torchrun: ddp (a whole model per process) or fsdp (sharded, for models too big for one device)."
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str | None) -> str | None:
        # The run directory is out_dir/name: a name with a separator or ".." would put it elsewhere.
        if name is not None and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"'{name}' must be one folder name (no '/', '\\', '.' or '..'), the run's folder inside run.out_dir")
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        # Checked by name here, without torch: torch's own refusal of a device string is a traceback.
        if not DEVICE_NAME.fullmatch(device):
            raise ValueError(f"'{device}' is not a device gptkit trains on; use auto, cpu, cuda, cuda:N or mps")
        return device

    @model_validator(mode="after")
    def _fsdp_precision(self) -> RunSection:
        if self.parallel == "fsdp" and self.dtype == "float16":
            # GradScaler checks only its own shard for inf, so processes could disagree on
            # skipping a step; bf16 needs no scaler.
            raise ValueError("run.parallel fsdp does not support run.dtype float16; use bfloat16")
        return self


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(**preset_values(DEFAULT_MODEL_PRESET)))
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        classifies = self.model.head.name != "lm"
        if self.data.format == "classification" and not classifies:
            # The book's recipe: the language-model head gives way to a classifier on the last token.
            self.model.head = ComponentSpec(name="last_token")
        elif classifies and self.data.format != "classification":
            raise ValueError(f"model.head '{self.model.head.name}' classifies; it needs data.format=classification (or model.head=lm)")
        if self.run.dtype == "float16" and not self.run.device.startswith("cuda"):
            raise ValueError("run.dtype float16 needs a CUDA device (set run.device=cuda); on CPU use bfloat16 or float32")
        return self


def read_config_file(path: str | Path) -> dict[str, Any]:
    given = str(path)  # messages quote the path as typed
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {given} is a directory; expected a .toml or .json file")
    if not path.is_file():
        raise ConfigError(f"config file {given} does not exist")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {given} must end in .toml or .json")
    kind = path.suffix[1:].upper()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {given} is not UTF-8 text: byte {err.object[err.start]:#04x} at byte offset {err.start}") from None
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {given} is not valid {kind}: {err}") from None
    if not isinstance(data, dict):
        # Valid JSON, but an array or a number has no sections to merge.
        raise ConfigError(f"config file {given} holds {json_kind(data)}; expected an object of sections (model, data, train, sampling, run)")
    return data


def json_kind(value: object) -> str:
    """What JSON calls the type of `value`, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-3"` -> (["train", "lr"], 0.001)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got '{text}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            # e.g. model.norm=rmsnorm then model.norm.eps=1e-6: promote the name to a spec.
            child = node[part] = {"name": child} if isinstance(child, str) else {}
        node = child
    node[path[-1]] = value


def expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    model = data.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        name = model.pop("preset")
        data = {**data, "model": {**preset_values(str(name)), **model}}
    elif model is None or isinstance(model, dict):
        # A full stored config overrides every preset key, so this is harmless on resume.
        data = {**data, "model": {**preset_values(DEFAULT_MODEL_PRESET), **(model or {})}}
    return data


def layered_config(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sources layered into one plain dict, with only what they say (no preset expanded)."""
    data: dict[str, Any] = copy.deepcopy(base or {})  # --set edits nested dicts in place
    if preset is not None:
        data = deep_merge(data, {"model": {"preset": preset}})
    if config_file is not None:
        data = deep_merge(data, read_config_file(config_file))
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(data, path, value)
    return data


def build_raw_config(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Layer the sources into one plain dict, before validation."""
    return expand_model_preset(layered_config(config_file, preset, overrides, base))


# Model settings a run started from trained weights may give: they change how it trains
# (dropout), cut what it attends over (a shorter context keeps the first positions) or
# put a fresh classifier in place of the output head; never the shape of a weight kept.
INIT_MAY_SET = ("drop_rate", "context_length", "head")


def with_source_model(data: dict[str, Any], source_model: dict[str, Any], source: str, source_tokenizer: Any = None) -> dict[str, Any]:
    """`data` (layered, unexpanded) with the model section of `--init-from source`.

    A model setting the user gave that contradicts the source fails naming the key: the
    weights fix the shape. `source_tokenizer` (a run's) applies unless data.tokenizer is given.
    """
    given = data.get("model") if isinstance(data.get("model"), dict) else {}
    if "preset" in given:
        raise ConfigError(f"model.preset={given['preset']} contradicts --init-from {source}: the model's shape comes from the source; drop the preset")
    source_cfg = validate_model_section(source_model, source)
    for key, value in given.items():
        if key in INIT_MAY_SET:
            continue
        try:
            same = validate_model_section({**source_model, key: value}, source).get(key) == source_cfg.get(key)
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(
                f"model.{key}={json.dumps(value)} contradicts --init-from {source}, whose model has "
                f"{key}={json.dumps(source_cfg.get(key))}; the shape comes from the source's weights "
                f"(a run started from them may set only {', '.join('model.' + k for k in INIT_MAY_SET)})"
            )
    context = given.get("context_length")
    if isinstance(context, int) and context > source_cfg["context_length"]:
        raise ConfigError(
            f"model.context_length={context} is longer than --init-from {source}'s {source_cfg['context_length']} "
            "positions; it may be shortened (the first positions are kept), not lengthened"
        )
    data = {**data, "model": {**source_model, **{k: v for k, v in given.items() if k in INIT_MAY_SET}}}
    data_section = data.get("data") if isinstance(data.get("data"), dict) else {}
    if source_tokenizer is not None and "tokenizer" not in data_section:
        data = {**data, "data": {**data_section, "tokenizer": source_tokenizer}}
    return data


def validate_model_section(model: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        return ModelConfig.model_validate(model).model_dump(mode="json")
    except ValidationError as err:
        raise ConfigError(f"the model of --init-from {source} is not valid: {describe_validation_error(err, 'model')}") from None


def validate_run_config(data: dict[str, Any], registry: Registry | None = None) -> RunConfig:
    """The checked run config; component names are looked up in `registry` (default: the process's)."""
    try:
        return RunConfig.model_validate(data, context={"registry": registry} if registry is not None else None)
    except ValidationError as err:
        raise ConfigError("invalid config:\n" + describe_validation_error(err)) from None


def load_run_config(
    config_file: str | Path | None = None, preset: str | None = None, overrides: Sequence[str] = (), registry: Registry | None = None
) -> RunConfig:
    return validate_run_config(build_raw_config(config_file, preset, overrides), registry)


# Settings a resumed run may change: budgets, reporting, where it runs, and the knobs that
# rescue a diverged run (the NaN stop names them: a lower peak lr, tighter clipping, bf16).
# Anything else (model shape, data, optimiser, schedule shape) would make it a different run.
RESUMABLE_PREFIXES = (
    "train.max_steps", "train.max_tokens", "train.max_time", "train.max_epochs", "train.callbacks", "train.eval_every",
    "train.nan_policy", "train.lr", "train.min_lr", "train.grad_clip", "sampling.", "run.device", "run.dtype",
    "run.compile", "run.kernels", "run.activation_checkpointing", "run.peak_flops", "run.out_dir", "run.name", "run.parallel",
)


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, path + "."))
        elif a != b:
            out.append(path)
    return out
