"""Load test: `python main.py serve` under concurrent /v1/completions clients on loopback.

    python bench/load_server.py [--clients 8] [--seconds 60] [--max-concurrent 2] [--max-queue 2]

Builds a small random-weight GPT-2 folder in a temporary directory, starts
`python main.py serve --hf-dir ... --port 0` on 127.0.0.1 (one torch thread),
warms it up, then runs `--clients` threads for `--seconds` seconds, each issuing
requests back to back: plain completions, streamed completions, and streams the
client abandons after the first event (its socket closed, as a browser tab
does). The server's limit on running generations is below the client count, so
some requests are turned away with 429; a client that gets one waits
`--backoff` seconds before its next request. The run stops by itself.

Records every request's outcome, latency of the complete ones, and the server's
resident memory (VmRSS from /proc) after warm-up, once a second during the run,
and at the end. Prints a Markdown table and writes bench/results/server_load.json.
Not a test (tests/test_server_load.py is, on a tinier model): latencies depend on
the machine and on whatever else runs on it (check `uptime`).
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
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
    folder: Path, log: Path, *, max_concurrent: int, max_queue: int, queue_timeout: float,
    max_tokens_cap: int, env: dict[str, str] | None = None, start_timeout: float = 120.0,
) -> Iterator[ServerProcess]:
    """`python main.py serve` on 127.0.0.1 and a free port, stopped (and waited for) on exit.

    Its output goes to `log`, not a pipe: nobody reads a pipe during the run, and a
    full one would stall the server.
    """
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable, str(ROOT / "main.py"), "serve", "--hf-dir", str(folder), "--host", "127.0.0.1", "--port", "0", "--quiet",
        "--max-concurrent", str(max_concurrent), "--max-queue", str(max_queue), "--queue-timeout", str(queue_timeout),
        "--max-tokens-cap", str(max_tokens_cap),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
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


def _read_stream(reply: http.client.HTTPResponse, abandon: bool) -> str | None:
    """Read server-sent events to [DONE] (or, when abandoning, to the first event); a problem or None."""
    if not reply.getheader("Content-Type", "").startswith("text/event-stream"):
        return f"stream with Content-Type {reply.getheader('Content-Type')!r}"
    finish = None
    while line := reply.readline():
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            if (rest := reply.read()) != b"\n":  # the blank line ending the event, then the end of the chunked body
                return f"{rest[:100]!r} after [DONE]"
            return None if finish in ("stop", "length") else f"stream ended with finish_reason {finish!r}"
        event = json.loads(data)
        if "error" in event:
            return f"error event: {event['error']}"
        if event.get("object") != "text_completion" or finish is not None:
            return f"unexpected event: {str(event)[:200]}"  # only the last event before [DONE] may say why it ended
        if abandon:
            return None
        finish = event["choices"][0]["finish_reason"]
    return "stream ended without [DONE]"


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


def run_load(host: str, port: int, settings: LoadSettings, *, pid: int | None = None, seed: int = 0) -> LoadRun:
    """`settings.clients` client threads for `settings.seconds`; RSS of `pid` sampled each second."""
    outcomes: list[Outcome] = []
    started = time.monotonic()
    until = started + settings.seconds
    threads = [
        threading.Thread(target=client_loop, args=(host, port, settings, seed * 1000 + i, until, outcomes), daemon=True)
        for i in range(settings.clients)
    ]
    for thread in threads:
        thread.start()
    samples: list[tuple[float, float]] = []
    while any(t.is_alive() for t in threads):
        if pid is not None:
            samples.append((round(time.monotonic() - started, 1), rss_mib(pid)))
        for thread in threads:
            thread.join(timeout=max(0.0, 1.0 / len(threads)))
        if time.monotonic() > until + settings.request_timeout + 5:
            raise RuntimeError("client threads are still running long after the end: a request hangs")
    return LoadRun(outcomes, time.monotonic() - started, samples)


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
        f"server threads idle: {result['server_threads']['start']} after warm-up, {result['server_threads']['end']} after the run",
        f"after the run: /health {result['health_after']}; malformed replies: {summary['problems']}",
    ]
    return "\n".join(lines)


def server_threads(pid: int) -> int:
    """Threads of process `pid`, from /proc/PID/status: one per open connection, plus the main one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads line for process {pid}")


@dataclass
class Measurement:
    run: LoadRun
    memory_mib: dict[str, Any]  # start (after warm-up), end, min and max during the run, the samples
    threads: dict[str, int]  # the server's threads, idle after warm-up and idle after the run
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
        threads_start = wait_threads(server.pid, 1)  # idle: the main thread alone (torch runs single-threaded)
        start = rss_mib(server.pid)
        run = run_load(server.host, server.port, settings, pid=server.pid)
        health = wait_idle(server.host, server.port)
        threads_end = wait_threads(server.pid, threads_start)
        end = rss_mib(server.pid)
        status, models = get_json(server.host, server.port, "/v1/models")
    during = [mib for _, mib in run.rss_mib] or [start]
    return Measurement(
        run, {"start": start, "end": end, "min": min(during), "max": max(during), "samples": run.rss_mib},
        {"start": threads_start, "end": threads_end}, health, status == 200 and bool(models["data"]),
    )


def wait_threads(pid: int, at_most: int, timeout: float = 5.0) -> int:
    """The server's thread count once it is at most `at_most` (handler threads end soon after their client leaves)."""
    deadline = time.monotonic() + timeout
    while (n := server_threads(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before memory is first read")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=2)
    parser.add_argument("--queue-timeout", type=float, default=10.0)
    parser.add_argument("--backoff", type=float, default=0.2)
    parser.add_argument("--emb-dim", type=int, default=ModelShape.emb_dim)
    parser.add_argument("--layers", type=int, default=ModelShape.n_layers)
    args = parser.parse_args(argv)
    shape = ModelShape(emb_dim=args.emb_dim, n_layers=args.layers)
    settings = LoadSettings(clients=args.clients, seconds=args.seconds, backoff=args.backoff)
    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gptkit-load-") as tmp:
        folder = make_model_folder(Path(tmp) / "load-gpt2", shape)
        log = Path(tmp) / "server.log"
        found = measure(folder, log, settings, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                        queue_timeout=args.queue_timeout, warmup_seconds=args.warmup)
        tracebacks = log.read_text(errors="replace").count("Traceback")
    import torch

    result = {
        "settings": {
            **asdict(settings), "model": f"GPT-2 layout, random weights, emb_dim {shape.emb_dim}, {shape.n_layers} layers, context {shape.context_length}",
            "max_concurrent": args.max_concurrent, "max_queue": args.max_queue, "queue_timeout": args.queue_timeout,
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
