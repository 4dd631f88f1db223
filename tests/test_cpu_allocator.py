"""retain_freed_memory: the second allocation of a large block faults in no new pages."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from gptkit.cpu_allocator import retain_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
BLOCK = 64 << 20  # 16,384 pages of 4 KiB


def page_faults_of_one_allocation() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(BLOCK, dtype=torch.uint8)  # touches every page
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_block_is_reused_without_faults_and_policy_is_restored() -> None:
    page_faults_of_one_allocation()
    assert page_faults_of_one_allocation() > BLOCK // 4096 // 2  # glibc default: a fresh mmap each time
    with retain_freed_memory() as active:
        assert active
        page_faults_of_one_allocation()  # grows the heap once
        assert page_faults_of_one_allocation() < 100
    page_faults_of_one_allocation()
    assert page_faults_of_one_allocation() > BLOCK // 4096 // 2


def test_disabled_does_nothing() -> None:
    with retain_freed_memory(enabled=False) as active:
        assert not active
        page_faults_of_one_allocation()
        assert page_faults_of_one_allocation() > BLOCK // 4096 // 2
