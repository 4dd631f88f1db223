"""The house's rules, checked on the code itself (docs/architecture.md draws them).

- `gptkit/layers/` and the model files read as plain PyTorch: they never import the kernels;
- the library never imports the application (`config`, `trainer`, `main`, `commands`) or `plugins/`;
- no module imports a folder above it in the layering.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gptkit"
APPLICATION = {"config", "trainer", "main", "commands", "plugins"}
# Each folder and the folders it may import from (besides the top-level modules of gptkit).
LAYERS: dict[str, set[str]] = {
    "layers": set(),
    "model": {"layers"},
    "kernels": {"layers", "model"},
    "data": {"layers", "model"},
    # interop: --init-from a Hugging Face folder; evaluation: the evaluate callback
    "training": {"layers", "model", "data", "generation", "kernels", "interop", "evaluation"},
    "generation": {"layers", "model", "data", "training", "kernels", "interop"},
    "interop": {"layers", "model", "data"},
    "serving": {"layers", "model", "data", "generation", "kernels", "interop"},
    # generation, training, kernels: a model to score is loaded as generate loads one (or as --init-from
    # reads it), and the harness adapter's generate_until decodes with generation's loop
    "evaluation": {"layers", "model", "data", "generation", "training", "kernels"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module a file imports, deferred and TYPE_CHECKING imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "gptkit":
                found.extend((node.lineno, f"gptkit.{alias.name}") for alias in node.names)
    return found


def library_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40, "the package moved?"
    return files


def folder_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_layers_and_model_never_import_the_kernels() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in library_files()
        if path.parent.name in ("layers", "model")
        for line, module in imported_modules(path)
        if module == "gptkit.kernels" or module.startswith("gptkit.kernels.")
    ]
    assert offenders == []


def test_the_library_never_imports_the_application() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in library_files()
        for line, module in imported_modules(path)
        if module.split(".")[0] in APPLICATION
    ]
    assert offenders == []


def test_no_folder_imports_one_above_it() -> None:
    offenders = []
    for path in library_files():
        folder = path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else None
        if folder not in LAYERS:
            continue
        allowed = LAYERS[folder] | {folder}
        for line, module in imported_modules(path):
            target = folder_of(module) if module.startswith("gptkit.") else None
            if target is not None and target in LAYERS and target not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module} ({folder} may import {sorted(allowed)})")
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import gptkit.layers.attention, gptkit.kernels", "gptkit.kernels"),
        ("from gptkit.kernels.onednn_linear import OneDNNLinear", "gptkit.kernels.onednn_linear"),
        ("import trainer", "trainer"),
    ],
)
def test_the_checks_see_imports(tmp_path: Path, source: str, module: str) -> None:
    # The checks above pass on an empty list too; this is what keeps them honest.
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n    {source}\n")
    assert module in [m for _, m in imported_modules(path)]


def test_importing_gptkit_and_a_model_config_loads_no_plugin_file() -> None:
    # Plugins are discovered when a registry is made, not as a side effect of an import.
    code = (
        "import sys, gptkit, gptkit.model.config, gptkit.registry\n"
        "print(sorted(m for m in sys.modules if m.startswith('gptkit_plugins') or m == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_are_the_learner_facing_ones() -> None:
    import gptkit

    assert sorted(gptkit.__all__) == sorted(gptkit._EXPORTS)
    for name in gptkit.__all__:
        assert getattr(gptkit, name) is not None
    # Internals stay where they live: they are not the reading path's names.
    for internal in ("StockDecoder", "move_to_huge_pages", "bf16_causal_attention", "Linear", "OneDNNLinear"):
        assert internal not in gptkit.__all__
        with pytest.raises(AttributeError):
            getattr(gptkit, internal)
