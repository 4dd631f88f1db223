"""Where a finetuning run's first weights come from: `train.init_from` (`--init-from SOURCE`).

A source is, in the order they are tried:

1. a gptkit run directory (its latest checkpoint) or one of its checkpoints
   (`RUN/checkpoints/step_N`);
2. a local Hugging Face GPT-2 folder (`config.json` + weights);
3. a hub name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `owner/name`), fetched
   once with `huggingface_hub` into its cache (`HF_HOME`, `HF_ENDPOINT` and
   `HF_HUB_OFFLINE` apply as for every Hugging Face tool) and a local folder from then on.

The new run takes the source's model shape (`source_model_section`) and its weights
(`load_initial_weights`); its optimizer and schedule start fresh at step 0. The run's
`config.json` records the source and a SHA-256 of each weights file read
(`provenance`), so a finetuned model can be traced to the exact bytes it started from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gptkit.errors import CheckpointError, ConfigError

# The config.json key holding where the run's first weights came from: provenance, not a setting.
INIT_FROM_KEY = "initial_weights"
# A hub repository id: a name, or owner/name, of letters, digits and -_. (the hub's own rule).
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# What a GPT-2 repository on the hub holds its weights in, in the order tried.
HUB_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

SourceKind = Literal["run", "checkpoint", "hugging-face", "hub"]


@dataclass(frozen=True)
class InitSource:
    """A resolved `--init-from`: what it was, where its weights lie, and the model they fit."""

    given: str  # as the user typed it: messages quote this
    kind: SourceKind
    folder: Path  # a checkpoint folder (run, checkpoint) or a Hugging Face folder (hugging-face, hub)
    model: dict[str, Any]  # the source's model section, as config values
    tokenizer: Any = None  # a run's data.tokenizer; None: GPT-2's, as for every Hugging Face model

    @property
    def weight_files(self) -> list[Path]:
        if self.kind in ("run", "checkpoint"):
            return [self.folder / "model.safetensors"]
        from gptkit.interop.hf_checkpoint import weight_files

        return weight_files(self.folder)


def resolve_init_source(given: str) -> InitSource:
    """The source `given` names; reads configs only (and fetches a hub name), not weights."""
    path = Path(given)
    if path.is_dir():
        return _local_source(given, path)
    if path.exists():
        raise ConfigError(f"--init-from {given} is a file; expected a gptkit run directory, a checkpoint folder, a Hugging Face GPT-2 folder or a hub name")
    if not HUB_NAME.fullmatch(given) or given.startswith((".", "~")):
        raise ConfigError(
            f"--init-from {given}: no such folder, and not a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl or owner/name)"
        )
    return _hub_source(given, fetch_from_hub(given))


def _local_source(given: str, path: Path) -> InitSource:
    from gptkit.generation.loading import hugging_face_folder
    from gptkit.training.checkpoint import latest_checkpoint, read_run_config

    if (path / "trainer.json").is_file() and (path / "model.safetensors").is_file():
        run_dir = path.parent.parent  # RUN/checkpoints/step_N
        return _run_source(given, "checkpoint", path, read_run_config(run_dir), run_dir)
    if (path / "config.json").is_file() and not hugging_face_folder(path):
        stored = read_run_config(path)
        return _run_source(given, "run", latest_checkpoint(path), stored, path)
    if hugging_face_folder(path):
        return _hub_source(given, path, kind="hugging-face")
    raise ConfigError(
        f"--init-from {given} is a folder but not a gptkit run (config.json and checkpoints/), a checkpoint "
        "(trainer.json and model.safetensors) or a Hugging Face GPT-2 folder (config.json with model_type)"
    )


def _run_source(given: str, kind: SourceKind, checkpoint: Path, stored: dict[str, Any], run_dir: Path) -> InitSource:
    model, data = stored.get("model"), stored.get("data")
    if not isinstance(model, dict):
        raise CheckpointError(f"{run_dir / 'config.json'} has no 'model' section; cannot start from {given}")
    return InitSource(given, kind, checkpoint, model, data.get("tokenizer") if isinstance(data, dict) else None)


def _hub_source(given: str, folder: Path, kind: SourceKind = "hub") -> InitSource:
    from gptkit.interop.hf_checkpoint import read_hf_config
    from gptkit.interop.hf_convert import model_config_from_hf

    try:
        cfg = model_config_from_hf(read_hf_config(folder))
    except (CheckpointError, ConfigError) as err:
        raise type(err)(f"--init-from {given}: {err}") from None
    return InitSource(given, kind, folder, cfg.model_dump(mode="json"))


def fetch_from_hub(name: str) -> Path:
    """The local snapshot folder of hub repository `name`: its config.json and weights, fetched once."""
    from gptkit.interop.hf_checkpoint import shard_names

    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise ConfigError(f"--init-from {name} names a hub model, which needs huggingface_hub: pip install huggingface_hub") from None
    try:
        config = Path(huggingface_hub.hf_hub_download(name, "config.json"))
        for filename in HUB_WEIGHT_FILES:
            try:
                weights = Path(huggingface_hub.hf_hub_download(name, filename))
            except EntryNotFoundError:
                continue
            if filename.endswith(".index.json"):
                for shard in shard_names(weights):
                    huggingface_hub.hf_hub_download(name, shard)
            return config.parent
    except Exception as err:  # noqa: BLE001 - the hub client raises HTTP, connection, cache and OS errors alike
        raise ConfigError(
            f"--init-from {name}: could not fetch '{name}' from the Hugging Face hub ({_first_line(err)}). "
            f"Without a network, download it where there is one (`hf download {name} --local-dir DIR`) "
            "and pass --init-from DIR"
        ) from None
    raise CheckpointError(f"--init-from {name}: the hub repository has a config.json but none of {', '.join(HUB_WEIGHT_FILES)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def source_weights(source: InitSource) -> dict[str, torch.Tensor]:
    """The source's weights under gptkit's parameter names (a tied head stored once, as checkpoints keep it)."""
    from gptkit.interop.hf_checkpoint import read_hf_weights
    from gptkit.interop.hf_convert import from_hf_state_dict
    from gptkit.model.config import ModelConfig
    from gptkit.training.checkpoint import read_tensors

    if source.kind in ("run", "checkpoint"):
        return read_tensors(source.folder / "model.safetensors")
    cfg = ModelConfig.model_validate(source.model)
    try:
        return from_hf_state_dict(read_hf_weights(source.folder), cfg)
    except CheckpointError as err:
        raise CheckpointError(f"--init-from {source.given}: weights do not match their config: {err}") from None


def crop_positions(weights: dict[str, torch.Tensor], context_length: int) -> dict[str, torch.Tensor]:
    """Learned position embeddings cut to a shorter context, as nanoGPT's `crop_block_size` does.

    The first positions keep what they learnt; a shorter context trains and decodes faster.
    """
    table = weights.get("pos_emb.weight")
    if table is not None and table.shape[0] > context_length:
        weights = {**weights, "pos_emb.weight": table[:context_length].clone()}
    return weights


def load_initial_weights(model: torch.nn.Module, source: InitSource) -> None:
    """Copy the source's weights into `model` (built with the source's shape, perhaps a shorter context)."""
    from gptkit.training.checkpoint import load_state_into

    weights = crop_positions(source_weights(source), model.cfg.context_length)  # type: ignore[union-attr]
    if model.cfg.head.name != "lm":  # type: ignore[union-attr]
        # A classifier head replaces the output head: it starts fresh, as Raschka's does.
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith("out_head.")}
        weights = {**{k: v for k, v in weights.items() if not k.startswith("out_head.")}, **fresh}
    load_state_into(model, weights, f"--init-from {source.given}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def provenance(source: InitSource) -> dict[str, Any]:
    """What config.json records: the source as given, what it was, and each weights file's SHA-256."""
    return {
        "source": source.given,
        "kind": source.kind,
        "folder": str(source.folder.resolve()),
        "sha256": {path.name: file_sha256(path) for path in source.weight_files},
    }
