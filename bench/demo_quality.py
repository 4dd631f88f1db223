"""Does the demo show something worth looking at? Completions of a run, as the page asks for them.

    python bench/demo_quality.py --run runs/NAME [--seeds 10] [--min-chars 20] [--json PATH]

Starts `python main.py serve --run RUN --port 0` (the command a user runs), reads
the page it serves for its defaults (the max length field; the sampler fields,
which the page leaves to the server while they are untouched, so the run's own
chain applies), then for each prompt and seed posts to `/api/generate` exactly
what the page sends when only the prompt and the seed are typed in:
`{"prompt", "max_tokens", "seed"}`. A completion counts as worth looking at when
it has at least `--min-chars` non-whitespace characters. Prints one row per
completion and the count per prompt; the target is 8 of 10 seeds for each prompt.

Seeds are 0..N-1, so a figure can be reproduced on the same run and machine
(the draws are seeded; the model's arithmetic is the same from run to run on one CPU).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("def fibonacci(n):", "import os", "class Stack:")
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
TIMEOUT = 300  # seconds one generation may take


class PageDefaults(HTMLParser):
    """The value attribute of each input of the page, and its example prompt."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.prompt = ""
        self._in_prompt = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("id"):
            self.values[str(a["id"])] = a.get("value") or ""
        self._in_prompt = tag == "textarea" and a.get("id") == "prompt"

    def handle_endtag(self, tag: str) -> None:
        self._in_prompt = False

    def handle_data(self, data: str) -> None:
        if self._in_prompt:
            self.prompt += data


def start_server(run: Path) -> tuple[subprocess.Popen[str], str, int]:
    """`main.py serve --run RUN` on a free loopback port; (process, host, port) once it listens."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "serve", "--run", str(run), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    watchdog = threading.Timer(120, process.kill)  # loading must not hang the bench
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            process.kill()
            raise SystemExit(f"the server did not start:\n{line}{process.stdout.read()}")
    finally:
        watchdog.cancel()
    return process, "127.0.0.1", int(match.group(1))


def exchange(host: str, port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode("utf-8")
    finally:
        conn.close()


def page_generation(host: str, port: int, body: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(text, settings event, done event) of one /api/generate stream."""
    status, raw = exchange(host, port, "POST", "/api/generate", body)
    if status != 200:
        raise SystemExit(f"/api/generate answered {status}: {raw}")
    events = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: ")]
    text = "".join(e["text"] for e in events if e.get("type") == "text")
    settings = next(e for e in events if e.get("type") == "settings")
    done = next(e for e in events if e.get("type") == "done")
    return text, settings, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the run directory to serve (e.g. runs/NAME)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per prompt (default 10)")
    parser.add_argument("--min-chars", type=int, default=20, help="non-whitespace characters a good completion has (default 20)")
    parser.add_argument("--target", type=int, default=8, help="good completions wanted per prompt (default 8)")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), help="prompts (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the completions and counts here")
    args = parser.parse_args(argv)

    process, host, port = start_server(args.run)
    try:
        status, page = exchange(host, port, "GET", "/")
        if status != 200:
            raise SystemExit(f"GET / answered {status}")
        defaults = PageDefaults(page)
        max_tokens = int(defaults.values["max_tokens"])
        fields = {name: defaults.values[name] for name in SAMPLER_FIELDS}
        print(f"run {args.run}; the page's example prompt {defaults.prompt!r}; max length {max_tokens} tokens; "
              f"sampler fields {fields} (untouched: not sent, the server applies the run's chain)")
        rows: list[dict[str, Any]] = []
        for prompt in args.prompts:
            for seed in range(args.seeds):
                # What the page sends with only the prompt and the seed typed in.
                text, settings, done = page_generation(host, port, {"prompt": prompt, "max_tokens": max_tokens, "seed": seed})
                visible = sum(not c.isspace() for c in text)
                rows.append({
                    "prompt": prompt, "seed": seed, "non_whitespace": visible, "chars": len(text), "finish_reason": done["finish_reason"],
                    "tokens": done["usage"]["completion_tokens"], "samplers": settings["settings"]["samplers"], "text": text,
                })
                print(f"| {prompt!r:22} | {seed:2} | {visible:4} | {len(text):4} | {done['finish_reason']:6} | {text[:60]!r}", flush=True)
    finally:
        process.terminate()
        process.wait(30)

    print(f"\nsamplers: {' -> '.join(rows[0]['samplers'])}\n")
    print(f"| prompt | completions with >= {args.min_chars} non-whitespace characters | median non-whitespace characters |")
    print("|---|---|---|")
    counts: dict[str, int] = {}
    for prompt in args.prompts:
        mine = [r for r in rows if r["prompt"] == prompt]
        counts[prompt] = sum(r["non_whitespace"] >= args.min_chars for r in mine)
        median = sorted(r["non_whitespace"] for r in mine)[len(mine) // 2]
        print(f"| `{prompt}` | {counts[prompt]}/{len(mine)} | {median} |")
    target = min(args.target, args.seeds)
    met = all(n >= target for n in counts.values())
    print(f"\ntarget ({target}/{args.seeds} for each prompt): {'met' if met else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "max_tokens": max_tokens, "min_chars": args.min_chars,
                                         "counts": counts, "rows": rows}, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
