"""Nothing gptkit reads from disk can run code: pickles are loaded as tensors only.

A `pytorch_model.bin` whose pickle would execute code when unpickled must be
refused with a `GptkitError`, and the code must not have run. The source is
also checked: every `torch.load` passes `weights_only=True` and no module loads
with `pickle`.
"""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import pytest
import torch

from gptkit.errors import CheckpointError, GptkitError
from gptkit.interop.hf_checkpoint import import_hf
from gptkit.interop.hf_convert import hf_config_dict
from gptkit.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


class _WritesMarker:
    """Unpickling this calls exec(), which creates `marker`; a safe loader never gets that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').write('pwned')"
        return (builtins.exec, (code,))


def _checkpoint_dir(tmp_path: Path, payload: object) -> Path:
    directory = tmp_path / "hf"
    directory.mkdir()
    cfg = ModelConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(cfg)), encoding="utf-8")
    torch.save(payload, directory / "pytorch_model.bin")
    return directory


def test_payload_really_runs_code_under_an_unsafe_loader(tmp_path: Path) -> None:
    # Guard against a test that passes because the payload is inert.
    marker = tmp_path / "control"
    path = tmp_path / "control.bin"
    torch.save({"x": _WritesMarker(marker)}, path)
    torch.load(path, weights_only=False)  # noqa: S614 - deliberately unsafe, on our own file
    assert marker.exists()


def test_import_hf_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = _checkpoint_dir(tmp_path, {"transformer.wte.weight": _WritesMarker(marker)})
    with pytest.raises(CheckpointError) as info:
        import_hf(directory)
    message = str(info.value)
    assert "pytorch_model.bin" in message
    assert "safely" in message and "only tensors" in message
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def test_import_hf_refuses_a_pickle_of_non_tensors(tmp_path: Path) -> None:
    directory = _checkpoint_dir(tmp_path, {"transformer.wte.weight": [1.0, 2.0]})
    with pytest.raises(GptkitError, match="does not hold a state dict of tensors"):
        import_hf(directory)


def _python_files() -> list[Path]:
    files = sorted((ROOT / "gptkit").rglob("*.py")) + sorted(ROOT.glob("*.py"))
    assert any(f.name == "hf_checkpoint.py" for f in files)
    return files


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_every_torch_load_is_weights_only() -> None:
    loads = 0
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Call) and _call_name(node) == "torch.load":
                loads += 1
                flags = {kw.arg: kw.value for kw in node.keywords}
                value = flags.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{path.relative_to(ROOT)}:{node.lineno}: torch.load without weights_only=True"
                )
    assert loads >= 1  # hf.py reads pytorch_model.bin


UNSAFE_LOADERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_no_module_loads_with_pickle() -> None:
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & UNSAFE_LOADERS, f"{path.relative_to(ROOT)}:{node.lineno} imports {names & UNSAFE_LOADERS}"
