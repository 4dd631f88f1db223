"""gptkit/serving/server.py over real loopback HTTP: the OpenAI client, the page's stream, limits and errors."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gptkit import GPTModel, ModelConfig, default_registry
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.generate import generate_tokens
from gptkit.serving.server import CompletionServer, make_server

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Hello world"
TIMEOUT = 10  # seconds any one HTTP exchange may take


def tiny_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=1)).eval()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture()
def model() -> GPTModel:
    return tiny_model()


@pytest.fixture()
def start(tokenizer: Tokenizer) -> Iterator[Callable[..., CompletionServer]]:
    """start(model, **make_server options) -> a serving server, shut down when the test ends."""
    running: list[tuple[CompletionServer, threading.Thread]] = []

    def start(model: GPTModel, **options: Any) -> CompletionServer:
        # options["tokenizer"]: another tokenizer than GPT-2's, for a model of its own vocabulary.
        server = make_server(model, options.pop("tokenizer", tokenizer), host="127.0.0.1", port=0, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def greedy_ids(model: GPTModel, tokenizer: Tokenizer, prompt: str, n: int) -> list[int]:
    """What generate_tokens itself gives for temperature 0, cut at end-of-text as the server does."""
    prompt_ids = torch.tensor([tokenizer.encode(prompt)])
    greedy = default_registry().create("sampler", "greedy")
    ids = [int(t[0, 0]) for t in generate_tokens(model, prompt_ids, max_new_tokens=n, samplers=[greedy], eos_id=tokenizer.eot_id)]
    return ids[: ids.index(tokenizer.eot_id)] if tokenizer.eot_id in ids else ids


def client(server: CompletionServer) -> Any:
    openai = pytest.importorskip("openai")
    # No retries: a 429 or a 5xx must reach the test, not be retried away.
    return openai.OpenAI(base_url=f"{server.url}v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def request(server: CompletionServer, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> tuple[int, Any]:
    """One raw HTTP exchange; the reply parsed as JSON when it is JSON."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=TIMEOUT)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        raw = reply.read()
        is_json = reply.getheader("Content-Type", "").startswith("application/json")
        return reply.status, json.loads(raw) if is_json else raw.decode()
    finally:
        conn.close()


def sse_events(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ") and line != "data: [DONE]"]


def slow_down(model: GPTModel, *, delay: float = 0.0, gate: threading.Event | None = None) -> tuple[threading.Event, list[int]]:
    """Make each forward pass wait (for `gate` or `delay`); returns (first forward entered, call log)."""
    real_forward = model.forward
    entered, calls = threading.Event(), []

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        entered.set()
        if gate is not None:
            gate.wait(TIMEOUT)
        time.sleep(delay)
        return real_forward(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign,assignment]  # nn.Module.__call__ looks it up on the instance
    return entered, calls


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


# --- the OpenAI client ----------------------------------------------------------


def test_openai_client_greedy_equals_generate_tokens(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    expected = greedy_ids(model, tokenizer, PROMPT, 20)
    server = start(model, model_name="tiny")
    reply = client(server).completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    assert reply.object == "text_completion" and reply.model == "tiny" and reply.id.startswith("cmpl-")
    [choice] = reply.choices
    assert choice.text == tokenizer.decode(expected)
    assert choice.finish_reason == "length" and choice.index == 0 and choice.logprobs is None
    prompt_tokens = len(tokenizer.encode(PROMPT))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (prompt_tokens, 20, prompt_tokens + 20)
    # A temperature too small to divide by is served as greedy, not as a failed draw.
    tiny = client(server).completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1e-300)
    assert tiny.choices[0].text == choice.text


def test_openai_client_streaming(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    expected = tokenizer.decode(greedy_ids(model, tokenizer, PROMPT, 12))
    server = start(model)
    chunks = list(client(server).completions.create(
        model="gptkit", prompt=[PROMPT], max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True},
    ))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) >= 2, "the text came in one piece, not streamed"
    assert "".join(texts) == expected
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "length" and set(finished[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)


def test_stop_strings(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    ids = greedy_ids(model, tokenizer, PROMPT, 20)
    full = tokenizer.decode(ids)
    stop = tokenizer.decode(ids[3:5])
    cut = full.index(stop)
    assert 0 < cut < len(full) - len(stop), "the stop string must fall inside the text for this test to mean anything"
    api = client(start(model))
    reply = api.completions.create(model="gptkit", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "never seen \u2603"])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (full[:cut], "stop")
    assert reply.usage.completion_tokens < 20
    chunks = list(api.completions.create(model="gptkit", prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    api = client(start(model))
    settings = {"model": "gptkit", "prompt": PROMPT, "max_tokens": 15, "temperature": 0.9, "top_p": 0.9, "extra_body": {"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.2}}
    first = api.completions.create(seed=7, **settings).choices[0].text
    assert api.completions.create(seed=7, **settings).choices[0].text == first
    assert first


def test_models_and_page(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model, model_name="tiny")
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    status, page = request(server, "GET", "/")
    assert status == 200 and "Generate" in page
    assert "://" not in page, "the page must load nothing from elsewhere (it works offline)"
    status, info = request(server, "GET", "/api/info")
    assert status == 200 and info["model"] == "tiny" and info["context_length"] == 64


def test_page_stream_echoes_settings(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model)
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.7, "top_k": 40, "top_p": 0.95, "seed": 3}
    status, text = request(server, "POST", "/api/generate", body)
    assert status == 200
    events = sse_events(text)
    assert events[0]["type"] == "settings"
    settings = events[0]["settings"]
    assert (settings["temperature"], settings["top_k"], settings["top_p"], settings["seed"]) == (0.7, 40, 0.95, 3)
    assert settings["samplers"] == ["temperature(0.7)", "top_k(40)", "top_p(0.95)"]
    assert {e["type"] for e in events[1:-1]} == {"text"}, "only text between settings and done"
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] == 8


# --- errors and limits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        ({"prompt": PROMPT, "max_tokens": 33}, "max_tokens", "at most 32"),
        ({"prompt": PROMPT, "temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"prompt": PROMPT, "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"prompt": PROMPT, "repetition_penalty": 0}, "repetition_penalty", "greater than or equal to 0.01"),
        ({"prompt": PROMPT, "temperature": "hot"}, "temperature", "temperature"),
        ({"prompt": PROMPT, "max_tokens": True}, "max_tokens", "max_tokens"),
        ({"prompt": ["one", 2]}, "prompt", "the prompt list mixes strings and token ids"),
        ({"max_tokens": 4}, "prompt", "prompt"),
        ({"prompt": "word " * 70}, "prompt", "at most 64"),
        ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ([1, 2, 3], None, "body"),
    ],
)
def test_bad_requests_answer_400_json(
    start: Callable[..., CompletionServer], model: GPTModel, body: Any, param: str | None, fragment: str,
) -> None:
    server = start(model, max_new_tokens_cap=32)
    status, reply = request(server, "POST", "/v1/completions", json.dumps(body).encode() if isinstance(body, list) else body)
    assert status == 400, reply
    error = reply["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]
    if param is not None:
        assert error["param"] == param


def test_openai_client_sees_bad_request(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match="at most 32"):
        client(start(model, max_new_tokens_cap=32)).completions.create(model="gptkit", prompt=PROMPT, max_tokens=100)


def test_oversized_body_413_and_unknown_path_404(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model)
    status, reply = request(server, "POST", "/v1/completions", json.dumps({"prompt": "x" * 70_000}).encode())
    assert status == 413 and "at most 65536" in reply["error"]["message"]
    for method in ("GET", "POST"):
        status, reply = request(server, method, "/v1/nothing", b"{}" if method == "POST" else None)
        assert status == 404 and reply["error"]["type"] == "invalid_request_error" and "/v1/nothing" in reply["error"]["message"]


def test_busy_server_answers_429(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    gate = threading.Event()
    entered, _ = slow_down(model, gate=gate)
    server = start(model, max_concurrent=1, max_queue=0)
    held: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: held.update(reply=request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "stream": True})))
    holder.start()
    try:
        assert entered.wait(TIMEOUT), "the first generation never started"
        status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})
        assert status == 429 and reply["error"]["type"] == "rate_limit_error"
    finally:
        gate.set()
        holder.join(TIMEOUT)
    assert held["reply"][0] == 200 and held["reply"][1].endswith("data: [DONE]\n\n")


def test_queued_request_waits_for_a_slot(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    gate = threading.Event()
    entered, _ = slow_down(model, gate=gate)
    server = start(model, max_concurrent=1, max_queue=1)
    replies: list[tuple[int, Any]] = []
    body = {"prompt": PROMPT, "max_tokens": 3}
    threads = [threading.Thread(target=lambda: replies.append(request(server, "POST", "/v1/completions", body))) for _ in range(2)]
    threads[0].start()
    try:
        assert entered.wait(TIMEOUT)
        threads[1].start()
        wait_until(lambda: server.service.slots.waiting == 1, "the second request queues")
        status, _ = request(server, "POST", "/v1/completions", body)
        assert status == 429, "the queue of one is full: a third request must be turned away"
    finally:
        gate.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert [status for status, _ in replies] == [200, 200]


def test_client_leaving_mid_stream_frees_its_slot(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    _, calls = slow_down(model, delay=0.01)
    server = start(model, max_concurrent=1, max_queue=0, max_new_tokens_cap=5000)
    leave_mid_stream(server, max_tokens=5000)
    wait_until(lambda: server.service.slots.active == 0, "the abandoned generation frees its slot", timeout=5)
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at < 1000, "the generation ran on after the client left"
    reply = client(server).completions.create(model="gptkit", prompt=PROMPT, max_tokens=2, temperature=0)
    assert reply.choices[0].finish_reason == "length"


def leave_mid_stream(server: CompletionServer, max_tokens: int) -> None:
    """Start a streamed completion over a raw socket, read its first event, and hang up."""
    host, port = server.server_address[:2]
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    with socket.create_connection((str(host), port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: {" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the server closed the stream early"
            received += chunk


def test_request_right_after_a_client_leaves_gets_its_slot(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    # 5000 tokens at >= 10 ms each: a server generating on into the closed socket would hold the
    # only slot for 50 s, and the next request, allowed to wait 5 s for it, would be answered 429.
    slow_down(model, delay=0.01)
    server = start(model, max_concurrent=1, max_queue=1, queue_timeout=5, max_new_tokens_cap=5000)
    leave_mid_stream(server, max_tokens=5000)
    status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 2
    assert request(server, "GET", "/health")[1] == {"status": "ok", "active": 0, "waiting": 0, "limit": 1, "max_queue": 1}


def test_health_counts_running_and_waiting_generations(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    gate = threading.Event()
    entered, _ = slow_down(model, gate=gate)
    server = start(model, max_concurrent=1, max_queue=3)
    body = {"prompt": PROMPT, "max_tokens": 2}
    threads = [threading.Thread(target=request, args=(server, "POST", "/v1/completions", body)) for _ in range(3)]
    threads[0].start()
    try:
        assert entered.wait(TIMEOUT)
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: server.service.slots.waiting == 2, "two requests queue")
        assert request(server, "GET", "/health") == (200, {"status": "ok", "active": 1, "waiting": 2, "limit": 1, "max_queue": 3})
    finally:
        gate.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert request(server, "GET", "/health")[1]["active"] == 0


# --- the command line -------------------------------------------------------------


@contextlib.contextmanager
def serve_cli(*args: str) -> Iterator[int]:
    """`python main.py serve ARGS --port 0 --quiet` in a subprocess; yields its port once it listens, then stops it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "main.py", "serve", *args, "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )
    watchdog = threading.Timer(60, process.kill)  # readline below must not wait forever
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server prints its URL (or dies)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stdout.read() if process.poll() is not None else line
        yield int(match.group(1))
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(TIMEOUT)
        with contextlib.suppress(Exception):
            process.stdout.close()  # type: ignore[union-attr]


def test_cli_serves_an_hf_folder(tmp_path: Path) -> None:
    from gptkit.interop.hf_checkpoint import export_hf

    folder = export_hf(tiny_model(), tmp_path / "tiny-gpt2")
    with serve_cli("--hf-dir", str(folder)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"] == "tiny-gpt2"
        conn.close()


def test_cli_missing_run_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import main as cli

    missing = tmp_path / "nope"
    assert cli.run(["serve", "--run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err and "Traceback" not in err


def test_listens_on_loopback_unless_told_otherwise(model: GPTModel, tokenizer: Tokenizer) -> None:
    import main as cli

    args = cli.build_parser().parse_args(["serve", "--hf-dir", "unused"])
    server = make_server(model, tokenizer, host=args.host, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    server = make_server(model, tokenizer, port=0)  # make_server's own default
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
