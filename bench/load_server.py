"""Load test: `python main.py serve` under concurrent /v1/completions clients on loopback.

    python bench/load_server.py [--clients 8] [--seconds 60] [--max-concurrent 2] [--max-queue 2]
    python bench/load_server.py --scenario streaming --preset gpt2 [--clients 8,32] [--seconds 60] [--baseline-seconds 20]

Builds a random-weight GPT-2 folder in a temporary directory (`--preset small`, the
default, or `gpt2`: 124M shapes), starts `python main.py serve --hf-dir ... --port 0`
on 127.0.0.1 (one torch thread) and drives it from client threads. The run stops by
itself: every request has a timeout, and the server is killed at the end whatever happens.

The mixed scenario (the default) warms the server up, then runs `--clients` threads for
`--seconds` seconds, each issuing requests back to back: plain completions, streamed
completions, and streams the client abandons after the first event (its socket closed,
as a browser tab does). The server's limit on running generations (2 unless given) is
below the client count, so some requests are turned away with 429; a client that gets
one waits `--backoff` seconds before its next request. Records every request's outcome,
latency of the complete ones, and the server's resident memory (VmRSS from /proc) after
warm-up, once a second during the run, and at the end. Prints a Markdown table and
writes bench/results/server_load.json.

The streaming scenario leaves the server its default limits unless `--max-concurrent`,
`--max-queue` or `--queue-timeout` are given. Each client streams completions back to
back (`--max-tokens`, temperature sampling with a seed per request) and notes when each
text event arrives. One client alone for `--baseline-seconds` comes first, then each
load of `--clients` (e.g. 8,32) for `--seconds`, each after `--warmup` seconds of the
same load. Reports aggregate tokens/s and p50/p99 gaps between tokens against the
baseline, time to first token, 2xx/429/5xx counts (and whether each 429 had
Retry-After), /health's queue once a second, and resident memory after warm-up and at
the end; checks the targets and prints PASS or MISS for each. Writes
bench/results/server_load_streaming.json.

Not a test (tests/test_server_load.py is, on a tinier model, for seconds): throughput
and latencies depend on the machine and on whatever else runs on it (check `uptime`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "server_load.json"
PROMPTS = ("Hello world", "The quick brown fox", "Once upon a time", "In 1999,", "<|endoftext|>", "def main():")
Kind = Literal["plain", "stream", "abandon"]


# --- the server ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    emb_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context_length: int = 128


def make_model_folder(dest: Path, shape: ModelShape, seed: int = 0) -> Path:
    """A random-weight GPT-2 in Hugging Face's layout, which `main.py serve --hf-dir` loads."""
    import torch

    from gptkit import GPTModel, ModelConfig
    from gptkit.interop.hf_checkpoint import export_hf

    torch.manual_seed(seed)
    model = GPTModel(ModelConfig(**asdict(shape))).eval()
    return export_hf(model, dest)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    folder: Path, log: Path, *, max_concurrent: int | None, max_queue: int | None, queue_timeout: float | None,
    max_tokens_cap: int | None, env: dict[str, str] | None = None, start_timeout: float = 300.0, dtype: str | None = None,
) -> Iterator[ServerProcess]:
    """`python main.py serve` on 127.0.0.1 and a free port, stopped (and waited for) on exit.

    A limit given as None is not passed: the server's own default applies. Its output
    goes to `log`, not a pipe: nobody reads a pipe during the run, and a full one would
    stall the server.
    """
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, str(ROOT / "main.py"), "serve", "--hf-dir", str(folder), "--host", "127.0.0.1", "--port", "0", "--quiet"]
    limits = {"--max-concurrent": max_concurrent, "--max-queue": max_queue, "--queue-timeout": queue_timeout, "--max-tokens-cap": max_tokens_cap}
    limits["--dtype"] = dtype  # None: serve's default (float32)
    command += [part for flag, value in limits.items() if value is not None for part in (flag, str(value))]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:  # killed whatever happens, a failed start included
        deadline = time.monotonic() + start_timeout
        while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield ServerProcess(process, "127.0.0.1", int(match.group(1)), log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid`, from /proc/PID/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS line for process {pid}")


def server_threads(pid: int) -> int:
    """Threads of process `pid`, from /proc/PID/status: the event loop's, the worker pool's (idle ones are kept a while), torch's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads line for process {pid}")


def get_json(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def wait_idle(host: str, port: int, timeout: float = 10.0) -> dict[str, Any]:
    """GET /health until no generation runs or waits; the last reply."""
    deadline = time.monotonic() + timeout
    while True:
        _, health = get_json(host, port, "/health")
        if (health["active"] == 0 and health["waiting"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


# --- the clients -------------------------------------------------------------------


@dataclass
class Outcome:
    """One request: its kind, status (0: no HTTP reply at all), and what was wrong with the reply, if anything."""

    kind: Kind
    status: int
    seconds: float
    problem: str | None = None


def _well_formed_completion(body: dict[str, Any], max_tokens: int) -> str | None:
    choice = body["choices"][0]
    if body.get("object") != "text_completion" or not isinstance(choice.get("text"), str):
        return f"not a text completion: {str(body)[:200]}"
    if choice.get("finish_reason") not in ("stop", "length"):
        return f"finish_reason {choice.get('finish_reason')!r}"
    if not 1 <= body["usage"]["completion_tokens"] <= max_tokens:
        return f"completion_tokens {body['usage']['completion_tokens']} outside 1..{max_tokens}"
    return None


def _check_429(reply: http.client.HTTPResponse) -> str | None:
    """None when a 429 is the JSON error OpenAI's clients expect, with a Retry-After."""
    try:
        error = json.loads(reply.read())["error"]
    except (ValueError, KeyError, TypeError):
        return "429 without a JSON error body"
    if error.get("type") != "rate_limit_error" or not error.get("message") or reply.getheader("Retry-After") is None:
        return f"429 body or headers unexpected: {error}"
    return None


class StreamProblem(Exception):
    """A server-sent stream that is not what the API promises."""


def sse_events(reply: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent stream, up to its [DONE]; StreamProblem for a malformed one."""
    if not reply.getheader("Content-Type", "").startswith("text/event-stream"):
        raise StreamProblem(f"stream with Content-Type {reply.getheader('Content-Type')!r}")
    while line := reply.readline():
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            if (rest := reply.read()) != b"\n":  # the blank line ending the event, then the end of the chunked body
                raise StreamProblem(f"{rest[:100]!r} after [DONE]")
            return
        event = json.loads(data)
        if "error" in event:
            raise StreamProblem(f"error event: {event['error']}")
        yield event
    raise StreamProblem("stream ended without [DONE]")


def _read_stream(reply: http.client.HTTPResponse, abandon: bool) -> str | None:
    """Read server-sent events to [DONE] (or, when abandoning, to the first event); a problem or None."""
    finish = None
    try:
        for event in sse_events(reply):
            if event.get("object") != "text_completion" or finish is not None:
                return f"unexpected event: {str(event)[:200]}"  # only the last event before [DONE] may say why it ended
            if abandon:
                return None
            finish = event["choices"][0]["finish_reason"]
    except StreamProblem as problem:
        return str(problem)
    return None if finish in ("stop", "length") else f"stream ended with finish_reason {finish!r}"


def one_request(conn: http.client.HTTPConnection, kind: Kind, rng: random.Random, max_tokens: int) -> Outcome:
    """Send one completion request on `conn` and read (or abandon) the reply."""
    body = {
        "prompt": rng.choice(PROMPTS), "max_tokens": max_tokens, "stream": kind != "plain",
        "temperature": rng.choice((0.0, 0.8, 1.0)), "seed": rng.randrange(2**31),
    }
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
    except (OSError, http.client.HTTPException) as err:
        conn.close()
        return Outcome(kind, 0, time.perf_counter() - started, f"{type(err).__name__}: {err}")
    try:
        if reply.status == 429:
            problem = _check_429(reply)
        elif reply.status != 200:
            problem = f"{reply.status}: {reply.read()[:300]!r}"
        elif kind == "plain":
            problem = _well_formed_completion(json.loads(reply.read()), max_tokens)
        else:
            problem = _read_stream(reply, abandon=kind == "abandon")
    except (OSError, http.client.HTTPException, ValueError, LookupError, TypeError) as err:  # cut short, or not the shape expected
        problem = f"{type(err).__name__}: {err}"
    if problem is not None or (kind == "abandon" and reply.status == 200):
        conn.close()  # abandoning mid-stream: the server must notice, stop generating and free the slot
    return Outcome(kind, reply.status, time.perf_counter() - started, problem)


@dataclass(frozen=True)
class LoadSettings:
    clients: int = 8
    seconds: float = 60.0
    max_tokens: tuple[int, int] = (4, 24)  # each request draws its max_tokens from this range
    abandon_max_tokens: int = 256  # abandoned streams ask for many, so a server that ran on would be seen
    mix: tuple[float, float, float] = (0.45, 0.45, 0.10)  # plain, stream, abandon
    backoff: float = 0.2  # seconds a client waits after a 429 (jittered +-50%)
    request_timeout: float = 60.0


def client_loop(host: str, port: int, settings: LoadSettings, seed: int, until: float, outcomes: list[Outcome]) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=settings.request_timeout)
    try:
        while time.monotonic() < until:
            kind: Kind = rng.choices(("plain", "stream", "abandon"), weights=settings.mix)[0]
            max_tokens = settings.abandon_max_tokens if kind == "abandon" else rng.randint(*settings.max_tokens)
            outcome = one_request(conn, kind, rng, max_tokens)
            outcomes.append(outcome)  # list.append is atomic under the GIL
            if outcome.status == 429:
                time.sleep(settings.backoff * rng.uniform(0.5, 1.5))
    finally:
        conn.close()


@dataclass
class LoadRun:
    outcomes: list[Outcome]
    seconds: float
    rss_mib: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MiB)
    threads: list[int] = field(default_factory=list)  # the server's threads, sampled with its memory
    health: list[dict[str, Any]] = field(default_factory=list)  # GET /health, sampled with it ({}: no answer)


def drive(clients: list[Callable[[], None]], until: float, request_timeout: float, *, pid: int | None = None,
          address: tuple[str, int] | None = None) -> LoadRun:
    """Run each of `clients` on a thread of its own until they end (they stop starting requests at `until`).

    Once a second: the resident memory and threads of `pid` and, given `address`, its /health.
    Fails (the caller's `serve` then kills the server) when a client is still busy well past
    `until`, which only a request that hangs past its timeout can make.
    """
    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    run = LoadRun([], 0.0)
    while any(t.is_alive() for t in threads):
        if pid is not None:
            run.rss_mib.append((round(time.monotonic() - started, 1), rss_mib(pid)))
            run.threads.append(server_threads(pid))
        if address is not None:
            try:
                run.health.append(get_json(*address, "/health", timeout=request_timeout)[1])
            except (OSError, http.client.HTTPException, ValueError):
                run.health.append({})
        tick = time.monotonic() + 1.0
        for thread in threads:
            thread.join(timeout=max(0.0, tick - time.monotonic()))
        if time.monotonic() > until + request_timeout + 5:
            raise RuntimeError("client threads are still running long after the end: a request hangs")
    run.seconds = time.monotonic() - started
    return run


def run_load(host: str, port: int, settings: LoadSettings, *, pid: int | None = None, seed: int = 0) -> LoadRun:
    """`settings.clients` client threads for `settings.seconds`; memory and threads of `pid` sampled each second."""
    outcomes: list[Outcome] = []
    until = time.monotonic() + settings.seconds
    clients = [functools.partial(client_loop, host, port, settings, seed * 1000 + i, until, outcomes) for i in range(settings.clients)]
    run = drive(clients, until, settings.request_timeout, pid=pid)
    run.outcomes = outcomes
    return run


# --- the report ------------------------------------------------------------------------


def status_class(status: int) -> str:
    return "no reply" if status == 0 else "429" if status == 429 else f"{status // 100}xx"


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (inclusive method); None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(run: LoadRun) -> dict[str, Any]:
    outcomes = run.outcomes
    complete = [o.seconds * 1000 for o in outcomes if o.status == 200 and o.kind != "abandon" and o.problem is None]
    by_kind: dict[str, Any] = {}
    for kind in ("plain", "stream", "abandon"):
        mine = [o for o in outcomes if o.kind == kind]
        ok_ms = [o.seconds * 1000 for o in mine if o.status == 200 and o.problem is None]
        by_kind[kind] = {
            "requests": len(mine), "statuses": dict(Counter(status_class(o.status) for o in mine)),
            "p50_ms": percentile(ok_ms, 50), "p99_ms": percentile(ok_ms, 99),
        }
    problems = [f"{o.kind} {o.status}: {o.problem}" for o in outcomes if o.problem is not None]
    return {
        "requests": len(outcomes),
        "requests_per_s": len(outcomes) / run.seconds,
        "statuses": dict(Counter(status_class(o.status) for o in outcomes)),
        "complete_2xx": len(complete),
        "latency_ms": {"p50": percentile(complete, 50), "p99": percentile(complete, 99), "max": max(complete, default=None)},
        "by_kind": by_kind,
        "problems": len(problems),
        "first_problems": problems[:10],
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    s, summary, memory = result["settings"], result["summary"], result["memory_mib"]
    lines = [
        (f"{s['clients']} clients for {s['seconds']:g} s against max_concurrent {s['max_concurrent']}, max_queue {s['max_queue']}"
         f" ({s['model']}; load average {s['load_average_at_start']:.2f} at start)"),
        "",
        "| requests | kind | 2xx | 429 | 4xx | 5xx | no reply | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("all", {**summary, "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"]}), *summary["by_kind"].items()]
    for kind, row in rows:
        st = row["statuses"]
        lines.append(
            f"| {row['requests']} | {kind} | {st.get('2xx', 0)} | {st.get('429', 0)} | {st.get('4xx', 0)} | {st.get('5xx', 0)}"
            f" | {st.get('no reply', 0)} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} |"
        )
    lines += [
        "",
        "latency: complete 2xx replies only (abandoned streams: time to their first event), queueing included",
        (f"server RSS: {memory['start']:.1f} MiB after warm-up, {memory['end']:.1f} MiB at the end"
         f" ({memory['end'] - memory['start']:+.1f}), {memory['min']:.1f}..{memory['max']:.1f} during the run"),
        (f"server threads: {result['server_threads']['start']} after warm-up, at most {result['server_threads']['max']} during the run,"
         f" {result['server_threads']['end']} after it (idle pool workers are kept a while)"),
        f"after the run: /health {result['health_after']}; malformed replies: {summary['problems']}",
    ]
    return "\n".join(lines)


@dataclass
class Measurement:
    run: LoadRun
    memory_mib: dict[str, Any]  # start (after warm-up), end, min and max during the run, the samples
    threads: dict[str, int]  # the server's threads: idle after warm-up, most seen during the run, after the run
    health_after: dict[str, Any]  # GET /health once the run is over
    answers_after: bool  # GET /v1/models still answered after the run


def measure(folder: Path, log: Path, settings: LoadSettings, *, max_concurrent: int, max_queue: int, queue_timeout: float,
            warmup_seconds: float, env: dict[str, str] | None = None) -> Measurement:
    """Start the server on `folder`, warm it up with the same load, then run the load and look at the server after.

    The server's output stays in `log` for the caller to read.
    """
    cap = max(settings.abandon_max_tokens, settings.max_tokens[1])
    with serve(folder, log, max_concurrent=max_concurrent, max_queue=max_queue, queue_timeout=queue_timeout, max_tokens_cap=cap, env=env) as server:
        # Warm-up with the same traffic: torch's allocator, glibc's per-thread malloc arenas and
        # the interpreter's free lists reach their working size here; growth after it would be a leak.
        run_load(server.host, server.port, LoadSettings(**{**asdict(settings), "seconds": warmup_seconds}), seed=999)
        wait_idle(server.host, server.port)
        threads_start = server_threads(server.pid)
        start = rss_mib(server.pid)
        run = run_load(server.host, server.port, settings, pid=server.pid)
        health = wait_idle(server.host, server.port)
        threads_end = server_threads(server.pid)
        end = rss_mib(server.pid)
        status, models = get_json(server.host, server.port, "/v1/models")
    during = [mib for _, mib in run.rss_mib] or [start]
    return Measurement(
        run, {"start": start, "end": end, "min": min(during), "max": max(during), "samples": run.rss_mib},
        {"start": threads_start, "max": max(run.threads, default=threads_start), "end": threads_end}, health,
        status == 200 and bool(models["data"]),
    )


# --- streaming clients ---------------------------------------------------------------------
#
# Each client streams completions back to back and notes when each text event arrives, so
# every stream's gaps between tokens are known. A baseline of one client alone comes first;
# then each load of N clients, after a warm-up of the same load. Targets (from the issue): for
# loads of up to 8 clients (the 8, within the default limits) no 429, aggregate tokens/s
# at least half of linear scaling (4x one client's for 8) and p99 gap under 4x one client's; for every load no
# 5xx, no malformed reply, bounded queueing (every 429 has Retry-After, every request an
# answer, /health's queue within its bound) and RSS under +20 MiB from warm-up to the end.

STREAMING_RESULTS = ROOT / "bench" / "results" / "server_load_streaming.json"
PRESETS = {"small": ModelShape(), "gpt2": ModelShape(emb_dim=768, n_layers=12, n_heads=12, context_length=1024)}
SCALING_SHARE = 0.5  # aggregate tokens/s of N clients >= this x N x one client's (4x for 8)
GAP_FACTOR = 4.0  # p99 gap between tokens of N clients < this x one client's
WITHIN_LIMITS_CLIENTS = 8  # loads up to this many clients must see no 429 (the default limits admit them)
RSS_GROWTH_MIB = 20.0


@dataclass
class Stream:
    """One streamed completion as its client saw it; times are time.perf_counter() seconds."""

    status: int  # 0: no HTTP reply at all
    started: float
    arrivals: list[float] = field(default_factory=list)  # each event carrying text
    tokens: int = 0  # completion_tokens of the usage event
    problem: str | None = None
    retry_after: str | None = None  # a 429's header

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.problem is None

    def gaps(self) -> list[float]:
        """Seconds between consecutive text events (a token that decodes to no text yet joins the next)."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@dataclass(frozen=True)
class StreamingSettings:
    clients: tuple[int, ...] = (8, 32)  # one load after another, each after the same baseline
    seconds: float = 60.0
    baseline_seconds: float = 20.0
    warmup_seconds: float = 10.0
    max_tokens: int = 64
    temperature: float = 0.8
    request_timeout: float = 60.0
    max_concurrent: int | None = None  # None: the server's defaults
    max_queue: int | None = None
    queue_timeout: float | None = None
    dtype: str | None = None  # serve --dtype; None: its default (float32)


def _read_token_stream(reply: http.client.HTTPResponse, stream: Stream, max_tokens: int) -> str | None:
    """Read events to [DONE], timing each text event; a problem or None."""
    finish = usage = None
    try:
        for event in sse_events(reply):
            if event.get("usage") is not None:
                usage = event["usage"]
                continue
            if event.get("object") != "text_completion" or finish is not None:
                return f"unexpected event: {str(event)[:200]}"
            choice = event["choices"][0]
            if choice["text"]:
                stream.arrivals.append(time.perf_counter())
            finish = choice["finish_reason"]
    except StreamProblem as problem:
        return str(problem)
    if finish not in ("stop", "length") or usage is None:
        return f"stream ended with finish_reason {finish!r}, usage {usage!r}"
    stream.tokens = usage["completion_tokens"]
    if not len(stream.arrivals) <= stream.tokens <= max_tokens:
        return f"{len(stream.arrivals)} text events and completion_tokens {stream.tokens} (max_tokens {max_tokens})"
    return None


def stream_completion(conn: http.client.HTTPConnection, rng: random.Random, settings: StreamingSettings) -> Stream:
    """One streamed completion on `conn`, read to its end."""
    body = {
        "prompt": rng.choice(PROMPTS), "max_tokens": settings.max_tokens, "temperature": settings.temperature,
        "seed": rng.randrange(2**31), "stream": True, "stream_options": {"include_usage": True},
    }
    stream = Stream(0, time.perf_counter())
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        stream.status = reply.status
        if reply.status == 429:
            stream.retry_after = reply.getheader("Retry-After")
            stream.problem = _check_429(reply)
        elif reply.status != 200:
            stream.problem = f"{reply.status}: {reply.read()[:300]!r}"
        else:
            stream.problem = _read_token_stream(reply, stream, settings.max_tokens)
    except (OSError, http.client.HTTPException, ValueError, LookupError, TypeError) as err:  # no reply, cut short, or not the shape expected
        stream.problem = f"{type(err).__name__}: {err}"
    if stream.problem is not None:
        conn.close()  # the next request starts on a fresh connection
    return stream


def streaming_client(host: str, port: int, settings: StreamingSettings, seed: int, until: float, streams: list[Stream]) -> None:
    """Stream completions back to back until `until`; after a 429, wait what its Retry-After says (a little more, jittered)."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=settings.request_timeout)
    try:
        while time.monotonic() < until:
            stream = stream_completion(conn, rng, settings)
            streams.append(stream)
            if stream.status == 429:
                wait = float(stream.retry_after) if stream.retry_after and stream.retry_after.isdigit() else 1.0
                time.sleep(min(wait * rng.uniform(1.0, 1.5), max(0.0, until - time.monotonic())))
    finally:
        conn.close()


@dataclass
class StreamingPhase:
    """One stretch of N clients: every client's streams, and the server looked at during and around it."""

    clients: int
    streams: list[list[Stream]]  # per client, in order
    run: LoadRun  # wall time and the once-a-second samples
    rss_mib: dict[str, float]  # after this phase's warm-up, and at its end
    health_after: dict[str, Any]
    window: tuple[float, float] = (0.0, 0.0)  # perf_counter() when the clients started, and when they stopped starting requests


def run_streaming(server: ServerProcess, settings: StreamingSettings, clients: int, seconds: float, seed: int) -> tuple[list[list[Stream]], LoadRun]:
    """`clients` streaming clients for `seconds` (then each ends its stream under way): each client's streams, the samples."""
    streams: list[list[Stream]] = [[] for _ in range(clients)]
    until = time.monotonic() + seconds
    loops = [functools.partial(streaming_client, server.host, server.port, settings, seed * 1000 + i, until, streams[i]) for i in range(clients)]
    return streams, drive(loops, until, settings.request_timeout, pid=server.pid, address=(server.host, server.port))


def streaming_phase(server: ServerProcess, settings: StreamingSettings, clients: int, seconds: float, seed: int) -> StreamingPhase:
    """`clients` clients for `settings.warmup_seconds`, then, memory read, for `seconds`."""
    run_streaming(server, settings, clients, settings.warmup_seconds, seed=seed + 500)
    wait_idle(server.host, server.port)
    start = rss_mib(server.pid)
    began = time.perf_counter()
    streams, run = run_streaming(server, settings, clients, seconds, seed=seed)
    health = wait_idle(server.host, server.port)
    return StreamingPhase(clients, streams, run, {"start": start, "end": rss_mib(server.pid)}, health, (began, began + seconds))


@dataclass
class StreamingMeasurement:
    baseline: StreamingPhase  # one client
    loads: list[StreamingPhase]  # one per settings.clients
    pool_threads: int  # most threads the server had, any phase
    answers_after: bool


def measure_streaming(folder: Path, log: Path, settings: StreamingSettings, env: dict[str, str] | None = None) -> StreamingMeasurement:
    """Start the server on `folder` (its default limits unless `settings` gives them), run the baseline, then each load."""
    with serve(folder, log, max_concurrent=settings.max_concurrent, max_queue=settings.max_queue, queue_timeout=settings.queue_timeout,
               max_tokens_cap=None, env=env, dtype=settings.dtype) as server:
        baseline = streaming_phase(server, settings, 1, settings.baseline_seconds, seed=1)
        loads = [streaming_phase(server, settings, n, settings.seconds, seed=10 + i) for i, n in enumerate(settings.clients)]
        status, models = get_json(server.host, server.port, "/v1/models")
    threads = max(max(p.run.threads, default=0) for p in [baseline, *loads])
    return StreamingMeasurement(baseline, loads, threads, status == 200 and bool(models["data"]))


def summarize_phase(phase: StreamingPhase) -> dict[str, Any]:
    streams = [s for client in phase.streams for s in client]
    complete = [s for s in streams if s.complete]
    gaps_ms = [g * 1000 for s in complete for g in s.gaps()]
    client_p99 = [percentile([g * 1000 for s in client if s.complete for g in s.gaps()], 99) for client in phase.streams]
    stream_p99 = [percentile([g * 1000 for g in s.gaps()], 99) for s in complete]
    first_token_ms = [(s.arrivals[0] - s.started) * 1000 for s in complete if s.arrivals]
    refused = [s for s in streams if s.status == 429]
    tokens = sum(s.tokens for s in complete)
    queue = [h for h in phase.run.health if h]
    # A cross-check on tokens/s, which counts finished streams over the whole phase, the clients'
    # last streams after the window included: text events (a token, or a few when one decodes to
    # no text yet) that arrived within the window, finished streams or not.
    opened, closed = phase.window
    in_window = sum(opened <= t < closed for client in phase.streams for s in client for t in s.arrivals)
    rss = [mib for _, mib in phase.run.rss_mib]
    return {
        "clients": phase.clients, "seconds": phase.run.seconds, "requests": len(streams),
        "statuses": dict(Counter(status_class(s.status) for s in streams)), "complete_streams": len(complete),
        "tokens": tokens, "tokens_per_s": tokens / phase.run.seconds,
        "text_events_per_s_in_window": in_window / (closed - opened) if closed > opened else None,
        "gap_ms": {"count": len(gaps_ms), "p50": percentile(gaps_ms, 50), "p99": percentile(gaps_ms, 99), "max": max(gaps_ms, default=None)},
        "worst_client_gap_p99_ms": max((p for p in client_p99 if p is not None), default=None),
        # The "each stream's time between tokens at p99": the worst stream's own p99 (of its 63 gaps).
        "worst_stream_gap_p99_ms": max((p for p in stream_p99 if p is not None), default=None),
        "first_token_ms": {"p50": percentile(first_token_ms, 50), "p99": percentile(first_token_ms, 99), "max": max(first_token_ms, default=None)},
        "refused_429": len(refused), "refused_with_retry_after": sum(s.retry_after is not None for s in refused),
        "queue": {
            "samples": len(phase.run.health), "unanswered_samples": len(phase.run.health) - len(queue),
            "max_waiting": max((h["waiting"] for h in queue), default=None), "max_active": max((h["active"] for h in queue), default=None),
            "max_queue": queue[0]["max_queue"] if queue else None, "limit": queue[0]["limit"] if queue else None,
        },
        "rss_mib": {
            **phase.rss_mib, "growth": phase.rss_mib["end"] - phase.rss_mib["start"],
            # leak or not: a leak keeps growing, a heap reaching its working size levels off
            "growth_second_half": phase.rss_mib["end"] - rss[len(rss) // 2] if rss else None, "samples": phase.run.rss_mib,
        },
        "server_threads_max": max(phase.run.threads, default=None),
        "health_after": phase.health_after,
        "problems": sum(s.problem is not None for s in streams),
        "first_problems": [f"{s.status}: {s.problem}" for s in streams if s.problem is not None][:10],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def check_targets(baseline: dict[str, Any], load: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue that applies to `load` (a summary), and whether it holds."""
    n, st, queue = load["clients"], load["statuses"], load["queue"]
    throughput = _ratio(load["tokens_per_s"], baseline["tokens_per_s"])
    gap = _ratio(load["gap_ms"]["p99"], baseline["gap_ms"]["p99"])
    worst_stream_gap = _ratio(load["worst_stream_gap_p99_ms"], baseline["gap_ms"]["p99"])
    targets = [
        ("no 5xx", st.get("5xx", 0) == 0, f"{st.get('5xx', 0)} 5xx"),
        ("every request answered, every reply well-formed", load["problems"] == 0 and st.get("no reply", 0) == 0,
         f"{st.get('no reply', 0)} without a reply, {load['problems']} problems"),
        ("queueing bounded: each 429 has Retry-After, the queue within max_queue",
         load["refused_with_retry_after"] == load["refused_429"] and queue["max_waiting"] is not None and queue["max_waiting"] <= queue["max_queue"],
         f"{load['refused_429']} 429 ({load['refused_with_retry_after']} with Retry-After), waiting at most {queue['max_waiting']} of {queue['max_queue']}"),
        (f"RSS flat: under +{RSS_GROWTH_MIB:g} MiB after warm-up", load["rss_mib"]["growth"] < RSS_GROWTH_MIB, f"{load['rss_mib']['growth']:+.1f} MiB"),
    ]
    if n <= WITHIN_LIMITS_CLIENTS:
        want = SCALING_SHARE * n
        targets += [
            ("no 429", st.get("429", 0) == 0, f"{st.get('429', 0)} 429"),
            (f"tokens/s at least {want:g}x one client's", throughput is not None and throughput >= want, f"{_fmt(throughput, 2)}x"),
            (f"p99 gap under {GAP_FACTOR:g}x one client's", gap is not None and gap < GAP_FACTOR, f"{_fmt(gap, 2)}x"),
            (f"every stream's own p99 gap under {GAP_FACTOR:g}x one client's p99", worst_stream_gap is not None and worst_stream_gap < GAP_FACTOR,
             f"worst stream {_fmt(load['worst_stream_gap_p99_ms'], 1)} ms, {_fmt(worst_stream_gap, 2)}x"),
        ]
    return [{"clients": n, "target": name, "pass": bool(ok), "found": found} for name, ok, found in targets]


def streaming_table(result: dict[str, Any]) -> str:
    s, baseline = result["settings"], result["baseline"]
    lines = [
        (f"streaming clients, {s['max_tokens']} tokens each at temperature {s['temperature']:g}: 1 client for {s['baseline_seconds']:g} s,"
         f" then {', '.join(map(str, s['clients']))} for {s['seconds']:g} s each ({s['model']}, {s.get('dtype') or 'float32'};"
         f" limits {s['limits']};"
         f" load average {s['load_average_at_start']:.2f} at start)"),
        "",
        "| clients | streams 2xx | 429 | 5xx | no reply | tokens/s | x one | gap p50 ms | gap p99 ms | p99 x one | first token p99 ms | waiting max | RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in [baseline, *result["loads"]]:
        st, gap, rss = row["statuses"], row["gap_ms"], row["rss_mib"]
        lines.append(
            f"| {row['clients']} | {row['complete_streams']} | {st.get('429', 0)} | {st.get('5xx', 0)} | {st.get('no reply', 0)}"
            f" | {row['tokens_per_s']:.1f} | {_fmt(_ratio(row['tokens_per_s'], baseline['tokens_per_s']), 2)}"
            f" | {_fmt(gap['p50'], 1)} | {_fmt(gap['p99'], 1)} | {_fmt(_ratio(gap['p99'], baseline['gap_ms']['p99']), 2)}"
            f" | {_fmt(row['first_token_ms']['p99'])} | {_fmt(row['queue']['max_waiting'])} | {rss['start']:.1f} -> {rss['end']:.1f} ({rss['growth']:+.1f}) |"
        )
    rows = [baseline, *result["loads"]]
    lines += [
        "",
        "tokens/s: finished streams' completion_tokens over the phase, its last streams' ends included; text events/s within it: "
        + ", ".join(f"{r['clients']}: {_fmt(r['text_events_per_s_in_window'], 1)}" for r in rows),
        "gaps: between consecutive text events of a stream, all streams pooled; first token: from the request, queueing included",
        "worst stream's own p99 gap: " + ", ".join(f"{r['clients']}: {_fmt(r['worst_stream_gap_p99_ms'], 1)} ms" for r in rows),
        "RSS growth over the second half of each phase: " + ", ".join(f"{r['clients']}: {_fmt(r['rss_mib']['growth_second_half'], 1)} MiB" for r in rows),
        "",
    ]
    lines += [f"{'PASS' if t['pass'] else 'MISS'}  {t['clients']} clients: {t['target']} ({t['found']})" for t in result["targets"]]
    return "\n".join(lines)


def main_streaming(args: argparse.Namespace, shape: ModelShape, clients: tuple[int, ...]) -> int:
    settings = StreamingSettings(
        clients=clients, seconds=args.seconds, baseline_seconds=args.baseline_seconds, warmup_seconds=args.warmup,
        max_tokens=args.max_tokens, temperature=args.temperature, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
        queue_timeout=args.queue_timeout, dtype=args.dtype,
    )
    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gptkit-load-") as tmp:
        folder = make_model_folder(Path(tmp) / "load-gpt2", shape)
        log = Path(tmp) / "server.log"
        found = measure_streaming(folder, log, settings)
        tracebacks = log.read_text(errors="replace").count("Traceback")
    import torch

    baseline = summarize_phase(found.baseline)
    loads = [summarize_phase(phase) for phase in found.loads]
    given = {"max_concurrent": args.max_concurrent, "max_queue": args.max_queue, "queue_timeout": args.queue_timeout}
    result = {
        "settings": {
            **asdict(settings), "model": _model_name(shape), "server_torch_threads": 1, "load_average_at_start": load_average,
            "limits": ", ".join(f"{k} {v}" for k, v in given.items() if v is not None) or "the server's defaults",
        },
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "baseline": baseline,
        "loads": loads,
        "targets": [t for load in loads for t in check_targets(baseline, load)],
        "server_threads_max": found.pool_threads,
        "answers_after": found.answers_after,
        "server_log_tracebacks": tracebacks,
    }
    return write_results(STREAMING_RESULTS, result, streaming_table(result))


def write_results(path: Path, result: dict[str, Any], text: str) -> int:
    """The run's JSON to `path` and its table to the terminal; the exit status."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


def _model_name(shape: ModelShape) -> str:
    return f"GPT-2 layout, random weights, emb_dim {shape.emb_dim}, {shape.n_layers} layers, {shape.n_heads} heads, context {shape.context_length}"


def _client_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(",") if part.strip())
    if not counts or min(counts) < 1:
        raise ValueError(text)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("mixed", "streaming"), default="mixed",
                        help="mixed: plain, streamed and abandoned requests past the limits; streaming: streaming clients against a baseline of one")
    parser.add_argument("--clients", default=None, metavar="N[,N...]", help="mixed: one count (default 8); streaming: loads run one after another (default 8,32)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each load")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before memory is first read")
    parser.add_argument("--baseline-seconds", type=float, default=20.0, help="streaming: seconds of one client alone, first")
    parser.add_argument("--max-tokens", type=int, default=64, help="streaming: max_tokens of each completion")
    parser.add_argument("--temperature", type=float, default=0.8, help="streaming: sampling temperature (each request has a seed)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="streaming: serve --dtype (default: serve's, float32)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="given to serve (default: mixed 2; streaming the server's own)")
    parser.add_argument("--max-queue", type=int, default=None, help="given to serve (default: mixed 2; streaming the server's own)")
    parser.add_argument("--queue-timeout", type=float, default=None, help="given to serve (default: mixed 10; streaming the server's own)")
    parser.add_argument("--backoff", type=float, default=0.2, help="mixed: seconds a client waits after a 429")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape: small (default) or gpt2 (124M shapes)")
    parser.add_argument("--emb-dim", type=int, default=None, help="overrides the preset's")
    parser.add_argument("--layers", type=int, default=None, help="overrides the preset's")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    shape = ModelShape(emb_dim=args.emb_dim or preset.emb_dim, n_layers=args.layers or preset.n_layers,
                       n_heads=preset.n_heads, context_length=preset.context_length)
    try:
        clients = _client_counts(args.clients or ("8" if args.scenario == "mixed" else "8,32"))
    except ValueError:
        parser.error(f"--clients must be positive counts separated by commas, got {args.clients!r}")
    if args.scenario == "streaming":
        return main_streaming(args, shape, clients)
    if len(clients) != 1:
        parser.error(f"--clients takes one count in the mixed scenario, got {args.clients!r}")
    max_concurrent = 2 if args.max_concurrent is None else args.max_concurrent
    max_queue = 2 if args.max_queue is None else args.max_queue
    queue_timeout = 10.0 if args.queue_timeout is None else args.queue_timeout
    settings = LoadSettings(clients=clients[0], seconds=args.seconds, backoff=args.backoff)
    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gptkit-load-") as tmp:
        folder = make_model_folder(Path(tmp) / "load-gpt2", shape)
        log = Path(tmp) / "server.log"
        found = measure(folder, log, settings, max_concurrent=max_concurrent, max_queue=max_queue,
                        queue_timeout=queue_timeout, warmup_seconds=args.warmup)
        tracebacks = log.read_text(errors="replace").count("Traceback")
    import torch

    result = {
        "settings": {
            **asdict(settings), "model": _model_name(shape),
            "max_concurrent": max_concurrent, "max_queue": max_queue, "queue_timeout": queue_timeout,
            "warmup_seconds": args.warmup, "server_torch_threads": 1, "load_average_at_start": load_average,
        },
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "summary": summarize(found.run),
        "memory_mib": found.memory_mib,
        "server_threads": found.threads,
        "health_after": found.health_after,
        "answers_after": found.answers_after,
        "server_log_tracebacks": tracebacks,
    }
    return write_results(RESULTS, result, table(result))


if __name__ == "__main__":
    sys.exit(main())
