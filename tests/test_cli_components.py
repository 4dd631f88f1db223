"""`python main.py components` and `--help`, run as a user would: a subprocess in the repository root."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CHECKOUT_COMPONENTS, REPO_ROOT, subprocess_env

from gptkit import default_registry

EXPECTED = CHECKOUT_COMPONENTS


def main(*args: str) -> subprocess.CompletedProcess[str]:
    # Entry points off: a package installed on this machine must not change the listing.
    env = subprocess_env(GPTKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def table_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, name) -> (description, source) from rich's box-drawn table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0] and cells[0] != "kind":
            kind, name, description, source = cells
            rows[(kind, name)] = (description, source)
    return rows


@pytest.fixture(scope="module")
def listing() -> subprocess.CompletedProcess[str]:
    return main("components")


def test_components_exits_zero(listing: subprocess.CompletedProcess[str]) -> None:
    assert listing.returncode == 0, listing.stderr
    assert "Traceback" not in listing.stderr


def test_components_lists_the_core_names_with_their_sources(listing: subprocess.CompletedProcess[str]) -> None:
    rows = table_rows(listing.stdout)
    for key, source in EXPECTED.items():
        assert key in rows, key
        assert rows[key][1] == source, key


def test_components_lists_every_registered_name_of_every_kind(listing: subprocess.CompletedProcess[str]) -> None:
    rows = table_rows(listing.stdout)
    registry = default_registry()
    registered = {(c.kind, c.name): c for c in registry.list() if not c.source.startswith("package ")}
    assert set(registered) <= set(rows)
    for key, component in registered.items():
        assert rows[key] == (component.description, component.source), key


def test_components_lists_presets(listing: subprocess.CompletedProcess[str]) -> None:
    assert "gpt2, gpt2-medium, gpt2-large, gpt2-xl, cpu-small" in listing.stdout


def test_components_pattern_filters_names() -> None:
    result = main("components", "rms*")
    assert result.returncode == 0, result.stderr
    assert set(table_rows(result.stdout)) == {("norm", "rmsnorm")}


def test_help_exits_zero_and_mentions_components() -> None:
    result = main("--help")
    assert result.returncode == 0, result.stderr
    assert "components" in result.stdout
    assert result.stdout.lstrip().startswith("usage:")


@pytest.mark.parametrize("command", ["", "train", "config", "components", "generate", "chat", "serve", "export", "classify", "evaluate", "merge-lora"])
def test_help_does_not_import_torch(command: str) -> None:
    # Help is parsing only: torch (about 2 s to import) waits until a command runs.
    argv = ["main.py", *command.split(), "--help"]
    code = (
        "import contextlib, io, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    runpy.run_path('main.py', run_name='__main__')\n"
        "print(out.getvalue().startswith('usage:'), 'torch' in sys.modules)\n"
    )
    env = subprocess_env(GPTKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
