"""docs/errors.md stays true: every test its tables name exists, and every bad-input test has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "errors.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows() -> list[str]:
    rows = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    return [row for row in rows if not row.startswith(("| input ", "| fault "))]  # headers


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_a_test_that_exists() -> None:
    rows = table_rows()
    assert len(rows) > 60
    missing = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert len(cells) == 3 and all(cells), f"a row needs input, message and test: {row}"
        references = REFERENCE.findall(cells[2])
        assert references, f"no test named in: {row}"
        for file, name in references:
            path = ROOT / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(f"{file}::{name}")
    assert missing == [], f"docs/errors.md names tests that do not exist: {missing}"


def test_every_bad_input_and_fault_test_has_a_row() -> None:
    named = {name for row in table_rows() for _, name in REFERENCE.findall(row)}
    for file in ("test_bad_inputs.py", "test_faults.py"):
        unlisted = defined_tests(ROOT / "tests" / file) - named
        assert unlisted == set(), f"tests/{file} has tests docs/errors.md does not list: {sorted(unlisted)}"
