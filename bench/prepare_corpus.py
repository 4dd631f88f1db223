"""Benchmark: preparing a corpus larger than memory (default 5 GB) with the GPT-2 tokenizer.

    python bench/prepare_corpus.py [--size-gb 5] [--layout single|files] [--kill-at 0.5] [--keep]

Generates the corpus in a temporary folder from the Python standard library's
sources, copied over and over, each copy headed by a line with its counter so
no two copies are byte-identical: `single` writes one file of the whole size
(the hard case for memory: one document, split by position), `files` one file
per copy of the library (about 9 MB each, split by file). Before and after the
uninterrupted run, two GIL-free hashing threads measure how much of two cores
any job could get at that moment.

Then `prepare_dataset` runs in a child process, timed from outside: wall time,
CPU time (user + sys, from wait4) and peak resident memory (ru_maxrss of the
child). The child also reports the tokenizing phase on its own (after the
corpus has been hashed), whose CPU/wall ratio shows how many cores the
tokenizer kept busy. With --kill-at F (0 turns it off) a second preparation
into another cache is killed with SIGKILL once its journal shows F of the
text done, and then run again: its shards must be byte-identical to the
uninterrupted run's, and the shards finished before the kill must not have
been rewritten. The corpus and caches are deleted at the end unless --keep.

Writes bench/results/prepare_corpus.json. Not a test: MB/s and CPU/wall
depend on what else runs on the machine; the load average and the share of
all CPU time taken by other processes are recorded alongside.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptkit.data.corpus import default_corpus_files, resolve_source, split_files, stdlib_root

RESULTS = ROOT / "bench" / "results" / "prepare_corpus.json"

# The preparing process. Prints one JSON line with its own view of the run.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from gptkit.data.dataset import prepare_dataset
    from gptkit.data.tokenizer import Tokenizer

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    source, cache, chunk_bytes, shard_tokens = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    tokenizer = Tokenizer()
    marks = {}
    last_print = [0.0]

    def progress(done, total):
        now = time.perf_counter()
        if "tokenize_start" not in marks:
            marks.update(tokenize_start=now, tokenize_start_cpu=cpu(), start_done=done)
        if now - last_print[0] > 30 or done == total:
            last_print[0] = now
            print(f"  {done / 1e9:.2f} / {total / 1e9:.2f} GB", file=sys.stderr, flush=True)

    start, start_cpu = time.perf_counter(), cpu()
    data = prepare_dataset(source, tokenizer, cache, 0.05, progress, chunk_bytes=chunk_bytes, shard_tokens=shard_tokens)
    end, end_cpu = time.perf_counter(), cpu()
    s = data.stats
    tokenized = s.text_bytes - marks["start_done"]
    print(json.dumps({
        "manifest": str(data.manifest_path),
        "text_bytes": s.text_bytes, "tokens": s.tokens, "n_shards": s.n_shards, "resumed_bytes": s.resumed_bytes,
        "prepare_s": end - start, "prepare_cpu_s": end_cpu - start_cpu,
        "hash_s": marks["tokenize_start"] - start,
        "tokenize_s": end - marks["tokenize_start"],
        "tokenize_cpu_s": end_cpu - marks["tokenize_start_cpu"],
        "tokenized_bytes": tokenized,
    }))
    """
)


def cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def calibrate(seconds: float = 10.0) -> float:
    """CPU/wall of two threads hashing (GIL-free) for `seconds`: how much of two cores anything could get now."""
    block = os.urandom(1 << 24)
    stop = time.perf_counter() + seconds

    def burn() -> None:
        while time.perf_counter() < stop:
            hashlib.sha256(block).digest()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=burn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round((time.process_time() - cpu0) / (time.perf_counter() - wall0), 3)


def generate(corpus: Path, size: int, layout: str) -> int:
    """Write about `size` bytes of repeated stdlib source under `corpus`; returns the bytes written."""
    root = stdlib_root()
    texts = [(f.relative_to(root).as_posix(), f.read_text(encoding="utf-8")) for f in default_corpus_files()]
    corpus.mkdir(parents=True)
    written, copy = 0, 0
    while written < size:
        target = corpus / ("corpus.txt" if layout == "single" else f"copy-{copy:05d}.txt")
        with open(target, "a", encoding="utf-8") as handle:
            for name, text in texts:
                chunk = f"# copy {copy} of {name}\n{text}\n"
                handle.write(chunk)
                written += len(chunk.encode("utf-8"))
                if written >= size:
                    break
        copy += 1
    return written


def run_child(corpus: Path, cache: Path, args: argparse.Namespace, kill_at: float = 0.0) -> dict[str, Any]:
    """Run one preparation; with `kill_at` > 0, SIGKILL it once its journal shows that fraction done."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CHILD, str(corpus), str(cache), str(args.chunk_bytes), str(args.shard_tokens)]
    busy0 = cpu_busy_jiffies()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    killed: dict[str, Any] | None = None
    if kill_at > 0:
        streams = stream_files(corpus)
        total = sum(f.stat().st_size for files in streams.values() for f in files)
        while proc.poll() is None:
            journal = next(cache.glob("tokens/*/progress.json"), None)
            if journal is not None:
                state = json.loads(journal.read_text())
                done = journal_bytes(streams, state)
                if done >= kill_at * total:
                    proc.send_signal(signal.SIGKILL)
                    killed = {"after_s": time.perf_counter() - start, "done_bytes": done, "journal": str(journal), "shards": state["streams"]}
                    break
            time.sleep(0.5)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    busy1 = cpu_busy_jiffies()
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    result: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_per_wall": round((usage.ru_utime + usage.ru_stime) / wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "machine_busy_share": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
        "exit_status": status,
    }
    if killed is not None:
        result["killed"] = killed
        return result
    if status != 0:
        raise SystemExit(f"preparation failed with status {status}")
    child = json.loads(stdout.strip().splitlines()[-1])
    result.update(child)
    result["mb_per_s"] = round(child["text_bytes"] / 1e6 / wall, 2)
    result["tokenize_mb_per_s"] = round(child["tokenized_bytes"] / 1e6 / child["tokenize_s"], 2)
    result["tokenize_cpu_per_wall"] = round(child["tokenize_cpu_s"] / child["tokenize_s"], 3)
    result["hash_mb_per_s"] = round(child["text_bytes"] / 1e6 / child["hash_s"], 1)
    return result


def stream_files(corpus: Path) -> dict[str, list[Path]]:
    """The files of each stream `prepare_dataset` makes of `corpus`, in its order."""
    files = resolve_source(str(corpus))
    if len(files) == 1:
        return {"text": files}
    train, val = split_files(files, 0.05, root=corpus)
    return {"train": train, "val": val}


def journal_bytes(streams: dict[str, list[Path]], journal: dict[str, Any]) -> int:
    """Source bytes covered by the journaled shards: each stream's files before its last shard's stop."""
    done = 0
    for name, shards in journal["streams"].items():
        if shards:
            index, offset = shards[-1]["stop"]
            done += sum(f.stat().st_size for f in streams[name][:index]) + offset
    return done


def output_digest(manifest_path: Path) -> dict[str, Any]:
    """SHA-256 of every shard file's bytes, read back from disk, in manifest order."""
    manifest = json.loads(manifest_path.read_text())
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        total = hashlib.sha256()
        for shard in manifest[split]["shards"]:
            with open(manifest_path.parent / shard["file"], "rb") as f:
                while block := f.read(1 << 24):
                    total.update(block)
        out[split] = {"tokens": manifest[split]["tokens"], "shards": len(manifest[split]["shards"]), "sha256": total.hexdigest()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=5.0, help="corpus size in GB (10**9 bytes)")
    parser.add_argument("--layout", choices=["single", "files"], default="single")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction done at which to SIGKILL the second run (0: no resume check)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the corpus and caches go")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and caches")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gptkit-corpus-", dir=args.tmp))
    try:
        corpus = work / "corpus"
        started = time.perf_counter()
        size = generate(corpus, int(args.size_gb * 1e9), args.layout)
        print(f"generated {size / 1e9:.2f} GB ({args.layout}) in {time.perf_counter() - started:.0f} s", flush=True)
        load_before = os.getloadavg()
        calibration_before = calibrate()
        full = run_child(corpus, work / "cache-full", args)
        calibration_after = calibrate()
        full["output"] = output_digest(Path(full["manifest"]))
        print(json.dumps(full, indent=1), flush=True)
        resume: dict[str, Any] | None = None
        if args.kill_at > 0:
            killed = run_child(corpus, work / "cache-resume", args, kill_at=args.kill_at)
            info = killed.get("killed")
            if info is None:
                raise SystemExit("the run meant to be killed finished first; use a smaller --kill-at")
            out_dir = Path(info["journal"]).parent
            kept = {s["file"]: os.stat(out_dir / s["file"]).st_ino for v in info["shards"].values() for s in v}
            mtimes = {f: os.stat(out_dir / f).st_mtime_ns for f in kept}
            again = run_child(corpus, work / "cache-resume", args)
            again["output"] = output_digest(Path(again["manifest"]))
            untouched = all(
                os.stat(out_dir / f).st_ino == ino and os.stat(out_dir / f).st_mtime_ns == mtimes[f]
                for f, ino in kept.items()
                if (out_dir / f).exists()
            )
            resume = {
                "killed_run": {k: killed[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")} | {
                    "killed_after_s": round(info["after_s"], 1),
                    "done_bytes_at_kill": info["done_bytes"],
                    "shards_done_at_kill": sum(len(v) for v in info["shards"].values()),
                },
                "resumed_run": again,
                "identical_output": again["output"] == full["output"],
                "finished_shards_not_rewritten": untouched,
            }
            print(json.dumps(resume, indent=1), flush=True)
        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "two_thread_cpu_per_wall_before": calibration_before,
                "two_thread_cpu_per_wall_after": calibration_after,
            },
            "corpus": {"bytes": size, "layout": args.layout, "files": sum(1 for f in corpus.rglob("*") if f.is_file())},
            "settings": {"chunk_bytes": args.chunk_bytes, "shard_tokens": args.shard_tokens, "kill_at": args.kill_at},
            "uninterrupted": full,
            "resume": resume,
            "note": (
                "machine_busy_share is the fraction of all CPU time on the machine that was busy during the run, "
                "ours and other processes'. two_thread_cpu_per_wall is what two GIL-free hashing threads got "
                "just before and after the uninterrupted run: the most of two cores any job could get then. "
                "Where it is well below 2, other work took the cores, and MB/s and cpu_per_wall are underestimates"
            ),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
