"""gptkit's kernel thread pool (every thread but the first): the same sums as one thread and as OpenMP, at once
from several threads, and after fork."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from gptkit.kernels import decode_attention, gemv, native, thread_pool

needs_pool = pytest.mark.skipif(not (thread_pool.available() and gemv.available()), reason="no C compiler here to build the kernels")


def product(x: torch.Tensor, weight: torch.Tensor, threads: int) -> torch.Tensor:
    out = torch.empty(x.shape[0], weight.shape[0])
    lib = gemv._LIBRARY.get()
    assert lib is not None
    assert lib.gemv(0, x.data_ptr(), x.shape[0], x.shape[1], gemv.WEIGHT_KINDS[weight.dtype], weight.data_ptr(), weight.shape[0], None, None, out.data_ptr(), threads) == 0
    return out


def on_another_thread(fn):  # the pool serves every thread but the first (see native.PRELUDE's parallel)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join(timeout=60)
    assert result, "the call did not return"
    return result[0]


@needs_pool
def test_the_pool_splits_a_product_into_the_same_sums_as_one_thread_and_as_openmp(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(3, 96), torch.randn(1000, 96)
    alone = product(x, weight, 1)
    if thread_pool._cpus() > 1:  # a call off the first thread starts the pool's workers, as many as it needs
        on_another_thread(lambda: product(x, weight, 2))
        assert 1 <= thread_pool.started_workers() <= thread_pool._cpus() - 1
    for threads in (2, 3, 7):  # more threads than this machine's cores too: the pool takes as many as there are
        assert torch.equal(on_another_thread(lambda threads=threads: product(x, weight, threads)), alone)
        assert torch.equal(product(x, weight, threads), alone)  # the first thread: OpenMP
    # The same kernel with no pool connected: OpenMP's threads. (Another source, so another library: the
    # loaded one stays connected.)
    monkeypatch.setattr(thread_pool, "connect", lambda kernel: False)
    monkeypatch.setattr(gemv, "SOURCE", gemv.SOURCE + "\n/* built apart from the connected one */\n")
    monkeypatch.setattr(gemv, "_LIBRARY", native.Library(gemv._build))
    assert torch.equal(on_another_thread(lambda: product(x, weight, 2)), alone)


@needs_pool
def test_calls_from_other_threads_and_from_two_at_once_are_right() -> None:
    torch.manual_seed(1)
    weights = [torch.randn(2000, 64) for _ in range(4)]
    x = torch.randn(2, 64)
    expected = [x @ w.T for w in weights]
    failures: list[str] = []

    def run(index: int) -> None:
        for _ in range(200):  # the two threads' calls overlap: one gets the pool, the other runs alone
            got = product(x, weights[index], 2)
            if not torch.allclose(got, expected[index], rtol=1e-5, atol=1e-4):
                failures.append(f"thread {index}")
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a call never returned"
    assert failures == []


@needs_pool
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_starts_workers_of_its_own() -> None:
    torch.manual_seed(2)
    x, weight = torch.randn(1, 32), torch.randn(4000, 32)
    expected = on_another_thread(lambda: product(x, weight, 2))  # the parent's workers exist now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first parallel call must not wait for the parent's workers
        try:
            ok = torch.equal(on_another_thread(lambda: product(x, weight, 2)), expected)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"1"


@needs_pool
def test_attention_through_the_pool_matches_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(3, 5, 1, 16, generator=generator)
    k, v = (torch.randn(3, 5, 300, 16, generator=generator) for _ in range(2))
    monkeypatch.setattr(decode_attention, "PARALLEL_WORK", 1 << 40)  # one thread
    alone = decode_attention.one_query_attention(q, k, v)
    monkeypatch.setattr(decode_attention, "PARALLEL_WORK", 1)  # every call split, over two threads at least
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))
        split = on_another_thread(lambda: decode_attention.one_query_attention(q, k, v))
        assert torch.equal(decode_attention.one_query_attention(q, k, v), alone)  # the first thread: OpenMP
    finally:
        torch.set_num_threads(before)
    assert torch.equal(split, alone)
