"""What the step benchmarks (bench/train.py, bench/finetune.py) share beyond train.py's own helpers.

Both run parts of themselves in fresh interpreters — timing runs, so that glibc's
malloc carries no history from an earlier model, and one process per variant for
peak RSS — and read back a JSON line. That protocol lives here, so that each
script only says which of its own flags a child is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_json_child(script: Path | str, flags: Sequence[str], threads: int, what: str, keep_log: bool = False) -> Any:
    """Run `script` with `flags` and `--threads threads` in a fresh interpreter; the JSON its last stdout line holds.

    `keep_log` lets the child's stderr through to the terminal (its progress);
    otherwise it is captured and shown only if the child fails.
    """
    cmd = [sys.executable, str(script), *flags, "--threads", str(threads)]
    # OpenMP's pool starts at `threads` too, before the child's own torch.set_num_threads runs.
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.PIPE,
                          stderr=None if keep_log else subprocess.PIPE, text=True, check=False)
    if done.returncode:
        log = "its log is above" if keep_log else done.stderr[-2000:]
        raise RuntimeError(f"{what} failed (exit code {done.returncode}): {log}")
    return json.loads(done.stdout.strip().splitlines()[-1])
