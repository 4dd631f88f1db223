"""retain_freed_memory: the second allocation of a large block faults in no new pages.

Measured in a fresh interpreter: a pytest-xdist worker's heap carries whatever earlier
tests left in it (and its execnet threads), which decides where a block can come from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
BLOCK = 64 << 20  # 16,384 pages of 4 KiB
PAGES = BLOCK // 4096

MEASURE = textwrap.dedent(f"""
    import json, resource, sys
    import torch
    from gptkit.cpu_allocator import retain_freed_memory

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones({BLOCK}, dtype=torch.uint8)  # touches every page
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    enabled = sys.argv[1] == "on"
    out = {{"default": [faults(), faults()]}}
    with retain_freed_memory(enabled) as active:
        out["active"] = active
        out["inside"] = [faults(), faults()]  # the first grows the heap once
    out["after"] = [faults(), faults()]
    print(json.dumps(out))
""")


def measure(mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, check=True,
        cwd=REPO_ROOT, env=subprocess_env(),
    )
    return json.loads(result.stdout)


def test_freed_block_is_reused_without_faults_and_policy_is_restored() -> None:
    out = measure("on")
    assert out["default"][1] > PAGES // 2  # glibc default: a fresh mmap each time
    assert out["active"]
    assert out["inside"][1] < 100
    assert out["after"][1] > PAGES // 2


def test_disabled_does_nothing() -> None:
    out = measure("off")
    assert not out["active"]
    assert out["inside"][1] > PAGES // 2
