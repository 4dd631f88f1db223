"""Shared helpers for the core-library tests: the repository root and a clean subprocess environment."""

from __future__ import annotations

import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker already has a core of its own: intra-op threads on
# top of that only oversubscribe the CPU (the suite runs about twice as fast with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without gptkit's own variables, plus `extra`.

    A wide ``COLUMNS`` keeps rich from wrapping table cells, so each component is
    one line of `main.py components` output.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTKIT_") and k != "PYTHONPATH"}
    env.update({"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env
