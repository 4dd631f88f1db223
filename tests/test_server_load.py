"""`python main.py serve` under load: 8 loopback clients for 60 s against a limit of 2 generations.

The load client is bench/load_server.py's; this runs it on a tiny model and checks
what must hold on any machine, however slow: no 5xx, 429s past the limit (as
OpenAI-style JSON), well-formed replies, no growth in memory or threads, every
slot free afterwards. Latencies are the bench's business, not asserted here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, subprocess_env

_spec = importlib.util.spec_from_file_location("bench_load_server", REPO_ROOT / "bench" / "load_server.py")
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load  # dataclasses look their module up while the file executes
_spec.loader.exec_module(load)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc (Linux)")

CLIENTS = 8
LIMIT = 2  # generations at once, below CLIENTS; with a queue of 2, at most 4 of the 8 are served or waiting
WARMUP_SECONDS, LOAD_SECONDS = 5, 55  # 60 s of load in all; memory and threads are first read after the warm-up
# Growth allowed in the server's resident memory from the end of the warm-up to the end of the run.
# What still grows after warm-up is glibc's heap fragmentation: with handler threads on up to 8
# malloc arenas per core, freed memory is kept, not returned. Measured: +7.3 MiB in this test on a
# machine at load average 11, +4 to +9 MiB in 60-90 s runs of bench/load_server.py; over 180 s of
# that load glibc's mallinfo2 showed the heap in use flat (114.2-114.9 MiB) while the free part
# it held went 22.0 -> 24.7 MiB, and Python's allocated blocks stayed flat: fragmentation, no leak.
# A leak of one step's logits (50257 floats, 196 KiB) per generation over MIN_GENERATIONS would
# not pass the bound; leaked handler threads are counted apart.
RSS_GROWTH_MIB = 20
MIN_GENERATIONS = 150  # complete 2xx replies; 600+ are made in 55 s even at load average 11


@pytest.mark.slow
def test_server_under_load(tmp_path: Path) -> None:
    folder = load.make_model_folder(tmp_path / "tiny-gpt2", load.ModelShape(emb_dim=32, n_layers=2, n_heads=2, context_length=64))
    log = tmp_path / "server.log"
    found = load.measure(
        folder, log, load.LoadSettings(clients=CLIENTS, seconds=LOAD_SECONDS), max_concurrent=LIMIT, max_queue=2, queue_timeout=10,
        warmup_seconds=WARMUP_SECONDS, env=subprocess_env(),
    )
    summary = load.summarize(found.run)
    memory = found.memory_mib
    print(  # shown by `pytest -rP`: the figures behind the assertions
        f"{summary['requests']} requests: {summary['statuses']}, p50 {summary['latency_ms']['p50']:.0f} ms, p99 {summary['latency_ms']['p99']:.0f} ms;"
        f" RSS {memory['start']:.1f} -> {memory['end']:.1f} MiB; threads {found.threads}"
    )
    statuses = summary["statuses"]
    context = f"{summary}\nserver log:\n{log.read_text(errors='replace')[-3000:]}"

    assert set(statuses) <= {"2xx", "429"}, context  # no 5xx, no 4xx, no request left without a reply
    assert statuses.get("429", 0) > 0, context
    # Each 429 is {"error": {"type": "rate_limit_error", ...}} with Retry-After; each 200 a complete
    # completion (non-streamed: finish_reason and usage; streamed: events, a finish_reason, then [DONE]).
    assert summary["problems"] == 0, context
    assert summary["complete_2xx"] >= MIN_GENERATIONS, context
    assert summary["by_kind"]["abandon"]["statuses"].get("2xx", 0) > 0, "no stream was abandoned mid-way"
    assert "Traceback" not in log.read_text(errors="replace"), context

    assert memory["end"] - memory["start"] < RSS_GROWTH_MIB, memory
    assert found.threads["end"] <= found.threads["start"], found.threads  # every handler thread ended
    assert found.health_after == {"status": "ok", "active": 0, "waiting": 0, "limit": LIMIT, "max_queue": 2}
    assert found.answers_after
