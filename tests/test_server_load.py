"""`python main.py serve` under load, for seconds: mixed clients past the limits, then streaming clients.

The load clients are bench/load_server.py's; this runs them on a tiny model and
checks what must hold on any machine, however slow: no 5xx, 429s past the limit
(as OpenAI-style JSON with Retry-After), well-formed replies, every stream complete
with its tokens timed, no growth in memory or threads beyond a bound, every slot
free afterwards. Throughput and latencies are the bench's business (its streaming
scenario, on GPT-2 124M shapes), not asserted here.
"""

from __future__ import annotations

import importlib.util
import statistics
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

TINY = load.ModelShape(emb_dim=32, n_layers=2, n_heads=2, context_length=64)
CLIENTS = 8
LIMIT, QUEUE = 2, 2  # generations at once and waiting, below CLIENTS: at most 4 of the 8 are served or waiting
# The server's worker pool (running + waiting + 8 spare, written out here rather than taken from the
# server), plus its event loop's thread. anyio keeps idle workers until new work comes after 10 s
# idle, so "threads at the end <= threads after warm-up" would depend on timing. The clients hold at
# most 8 workers at once (9 threads were seen), and a thread leaked per request would pass the bound
# within the run's first few requests.
MAX_SERVER_THREADS = LIMIT + QUEUE + 8 + 1
WARMUP_SECONDS, LOAD_SECONDS = 2, 5  # memory and threads are first read after the warm-up
# Growth allowed in the server's resident memory from the end of the warm-up to the end of the run.
# In 60 s runs glibc's heap fragmentation (handler threads' malloc arenas keep what they free) added
# +4 to +9 MiB, and the bound was 20 MiB over 150+ generations. This run is about a tenth as long:
# it grew +1.9 to +5.4 MiB (load average 3.7-4.4), in one step in its first second and flat after
# it, and makes fewer generations, so the bound is tightened with them: a leak of one step's logits
# (50257 floats, 196 KiB) per generation over MIN_GENERATIONS (64 x 196 KiB = 12.3 MiB) still fails it.
RSS_GROWTH_MIB = 12
MIN_GENERATIONS = 64  # complete 2xx replies; 140-170 are made in 5 s at load average 4.4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load.make_model_folder(tmp_path_factory.mktemp("load") / "tiny-gpt2", TINY)


def _health_fields(health: dict[str, object]) -> dict[str, object]:
    return {key: health.get(key) for key in ("status", "active", "waiting", "limit", "max_queue")}


@pytest.mark.slow
def test_server_under_load(tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    found = load.measure(
        tiny_model, log, load.LoadSettings(clients=CLIENTS, seconds=LOAD_SECONDS), max_concurrent=LIMIT, max_queue=QUEUE, queue_timeout=10,
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
    assert max(found.threads.values()) <= MAX_SERVER_THREADS, found.threads
    assert _health_fields(found.health_after) == {"status": "ok", "active": 0, "waiting": 0, "limit": LIMIT, "max_queue": QUEUE}
    assert found.answers_after


STREAM_TOKENS = 12
STREAMING_MAX_SERVER_THREADS = 2 + 1 + 8 + 1  # as MAX_SERVER_THREADS, for the limits below
# One client alone for a second, then 4 streaming clients against 2 running and 1 waiting: the one
# left over is turned away with 429 while the others stream, so both sides of the limit are seen.
STREAMING = load.StreamingSettings(
    clients=(4,), seconds=2.0, baseline_seconds=1.0, warmup_seconds=0.0, max_tokens=STREAM_TOKENS, request_timeout=30.0,
    max_concurrent=2, max_queue=1, queue_timeout=10.0,
)


def _p99_by_hand(arrivals: list[float]) -> float:
    """A stream's 99th percentile gap in ms, interpolated between the two sorted gaps around rank 0.99 (n - 1)."""
    gaps = sorted((b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False))
    if len(gaps) == 1:
        return gaps[0]
    rank = 0.99 * (len(gaps) - 1)
    low = int(rank)
    high = min(low + 1, len(gaps) - 1)
    return gaps[low] + (rank - low) * (gaps[high] - gaps[low])


@pytest.mark.slow
def test_streaming_clients(tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    found = load.measure_streaming(tiny_model, log, STREAMING, env=subprocess_env())
    context = f"server log:\n{log.read_text(errors='replace')[-3000:]}"
    [crowd] = found.loads
    assert (found.baseline.clients, crowd.clients) == (1, 4)

    for phase in (found.baseline, crowd):
        streams = [s for client in phase.streams for s in client]
        assert all(client for client in phase.streams), f"a client of {phase.clients} made no request"
        assert {s.status for s in streams} <= {200, 429}, [(s.status, s.problem) for s in streams]  # no 5xx, every request answered
        for s in streams:
            if s.status == 200:  # complete: finish_reason, usage, [DONE]; each text event timed
                assert s.problem is None, s.problem
                assert 1 <= len(s.arrivals) <= s.tokens <= STREAM_TOKENS, (len(s.arrivals), s.tokens)
                assert s.started < s.arrivals[0] and s.arrivals == sorted(s.arrivals), s.arrivals
            else:  # OpenAI's rate_limit_error body, and when to come back
                assert s.problem is None and s.retry_after is not None and s.retry_after.isdigit(), (s.problem, s.retry_after)
        assert _health_fields(phase.health_after) == {"status": "ok", "active": 0, "waiting": 0, "limit": 2, "max_queue": 1}

        # The summary against the streams it was made from, computed another way.
        summary = load.summarize_phase(phase)
        complete = [s for s in streams if s.status == 200]
        gaps_ms = [(b - a) * 1000 for s in complete for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
        assert summary["complete_streams"] == len(complete) > 0
        assert summary["tokens"] == sum(s.tokens for s in complete)
        assert summary["tokens_per_s"] == pytest.approx(summary["tokens"] / phase.run.seconds)
        assert summary["gap_ms"]["count"] == len(gaps_ms) > 0
        assert summary["gap_ms"]["p50"] == pytest.approx(statistics.median(gaps_ms))
        assert summary["gap_ms"]["max"] == pytest.approx(max(gaps_ms))
        assert summary["worst_stream_gap_p99_ms"] == pytest.approx(max(_p99_by_hand(s.arrivals) for s in complete if len(s.arrivals) > 1))
        assert summary["refused_429"] == summary["refused_with_retry_after"] == len(streams) - len(complete)
        assert summary["queue"]["max_waiting"] is not None and summary["queue"]["max_waiting"] <= 1, summary["queue"]
        assert max(phase.run.threads) <= STREAMING_MAX_SERVER_THREADS, phase.run.threads

    assert sum(s.status == 429 for client in found.baseline.streams for s in client) == 0  # one client is within the limits
    assert sum(s.status == 429 for client in crowd.streams for s in client) > 0, "4 clients never passed 2 running + 1 waiting"
    assert found.answers_after
    assert "Traceback" not in log.read_text(errors="replace"), context

    # The targets that hold on any machine pass; throughput and gap ratios are the bench's to report.
    baseline = load.summarize_phase(found.baseline)
    verdicts = {t["target"]: t["pass"] for t in load.check_targets(baseline, load.summarize_phase(crowd))}
    assert verdicts["no 5xx"] and verdicts["every request answered, every reply well-formed"], verdicts
    assert verdicts["queueing bounded: each 429 has Retry-After, the queue within max_queue"], verdicts
