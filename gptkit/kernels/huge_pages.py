"""A model's weights in transparent huge pages, for decoding on CPU.

Each decode step reads every weight once (GPT-2 124M: 497 MB per token), so its
speed is the speed of streaming memory. In 4 KiB pages that stream crosses a
page boundary every 4 KiB, where the TLB misses and the hardware prefetcher
stops; in 2 MiB pages the 49 matrix-vector products of a GPT-2 124M step took
17.2-17.8 ms against 18.1-19.2 ms (2 cores, bench notes in bench/README.md).

Linux's transparent huge pages are often set to "madvise": only memory that
asks gets them. PyTorch asks only when THP_MEM_ALLOC_ENABLE is set before it
starts, which a library cannot arrange; so `move_to_huge_pages` copies a
module's CPU parameters and buffers into one anonymous mapping that asks
(MADV_HUGEPAGE) and points them there. Tied parameters stay tied; the values
are copied exactly. Where huge pages are unavailable it changes nothing.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE = 2 << 20
ALIGN = 64  # every tensor starts on a cache line (and on any element size)
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """Linux with transparent huge pages in "always" or "madvise" mode."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def move_to_huge_pages(module: nn.Module) -> bool:
    """Put `module`'s CPU parameters and buffers in huge-page memory; True if it did.

    Meant for inference: a parameter's `.data` is replaced, so an optimizer
    built earlier keeps working, but memory allocated later (gradients,
    optimizer state) is ordinary memory.
    """
    if not huge_pages_available():
        return False
    tensors: dict[int, torch.Tensor] = {}  # by identity: a tied weight is one Parameter
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "cpu" and t.numel() and t.is_contiguous():
            tensors.setdefault(id(t), t)
    if not tensors:
        return False
    sizes = {key: _round_up(t.numel() * t.element_size(), ALIGN) for key, t in tensors.items()}
    # One spare huge page, so the used part can start on a 2 MiB boundary.
    region = mmap.mmap(-1, sum(sizes.values()) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # holds `region` alive as long as any view does
    offset = -raw.data_ptr() % HUGE_PAGE
    with torch.no_grad():
        for key, t in tensors.items():
            moved = raw[offset : offset + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            moved.copy_(t)
            t.data = moved
            offset += sizes[key]
    return True
