"""Keep freed memory in the process, so each training step reuses the last one's pages.

glibc's malloc serves large blocks (a GPT step's activations, logits and gradients)
with fresh `mmap`s and returns them to the kernel on `free`. A training step frees and
re-allocates the same sizes every time, so every page is faulted in and zeroed by the
kernel again: on a 2-core VM that was a third of a small model's step (about 540,000
page faults a step for `cpu-small` at 8 x 256 tokens). Asking malloc to serve
everything from its heap and never give the top of it back makes every step after the
first few fault-free. The heap may grow a few times before then (torch's 64-byte aligned
requests need a free chunk a little larger than the block freed), so the resident size
can settle somewhat above the peak use.

Only glibc has `mallopt`; elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc's defaults, restored on exit (the dynamic mmap threshold re-adapts by itself).
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def set_retain_freed_memory(enabled: bool) -> bool:
    """Switch the policy process-wide; returns whether the C library took it."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if enabled:
        return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    return bool(mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) and mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD))


@contextlib.contextmanager
def retain_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, malloc keeps freed memory for reuse; yields whether that is in effect."""
    active = set_retain_freed_memory(True) if enabled else False
    try:
        yield active
    finally:
        if active:
            set_retain_freed_memory(False)
