"""/v1/completions as a scorer: echo, logprobs, max_tokens 0, token-id and listed prompts, n choices.

Every log-probability is checked against `log_softmax` of a forward pass this file
makes itself, over the same tokens, on the same model; lm-evaluation-harness's own
`local-completions` model is pointed at the server and must get the same numbers.
Over real loopback HTTP, with test_server.py's fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from test_server import (  # fixtures and helpers, not tests: nothing here is collected twice
    PROMPT,
    client,
    greedy_ids,
    model,
    request,
    sse_events,
    start,
    tokenizer,
)

from gptkit import GPTModel
from gptkit.data.tokenizer import Tokenizer
from gptkit.interop.hf_tokenizer import write_hf_tokenizer_files
from gptkit.serving.server import CompletionServer

__all__ = ["model", "start", "tokenizer"]  # fixtures, used by name

WINDOW = 64  # test_server.tiny_model's context length


def forward_logprobs(model: GPTModel, ids: Sequence[int]) -> torch.Tensor:
    """log_softmax (float32) of one forward pass: row p is the distribution of token p + 1."""
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)]))[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def next_logprobs(model: GPTModel, context: Sequence[int]) -> torch.Tensor:
    """log_softmax (float32) of the token after `context`."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(context)]))[0, -1].float(), dim=-1)


def token_ids(tokenizer: Tokenizer, tokens: Sequence[str]) -> list[int]:
    """The ids of a reply's token strings, by their bytes (`bytes:\\xNN` for a piece of a character)."""
    by_bytes = {tokenizer.decode_bytes([i]): i for i in range(tokenizer.vocab_size)}
    return [by_bytes[bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode()] for t in tokens]


def complete(server: CompletionServer, **body: Any) -> dict[str, Any]:
    status, reply = request(server, "POST", "/v1/completions", body)
    assert status == 200, reply
    return reply


def test_echoed_logprobs_are_log_softmax_of_a_forward_pass(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = tokenizer.encode(prompt)
    reply = complete(start(model), prompt=prompt, echo=True, max_tokens=0, logprobs=3)
    [choice] = reply["choices"]
    assert (choice["text"], choice["index"], choice["finish_reason"]) == (prompt, 0, "length")
    scores = choice["logprobs"]
    expected = forward_logprobs(model, ids)
    assert scores["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert scores["token_logprobs"][0] is None and scores["top_logprobs"][0] is None
    chosen = expected.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert scores["token_logprobs"][1:] == pytest.approx(chosen.tolist(), abs=1e-5)
    for row, top in zip(expected, scores["top_logprobs"][1:]):
        best = row.topk(3)
        likeliest = {tokenizer.decode([t]): lp for t, lp in zip(best.indices.tolist(), best.values.tolist())}
        # The three likeliest, and the chosen token when it is not among them (as vLLM reports it).
        assert list(top)[:3] == list(likeliest) and len(top) in (3, 4)
        assert [top[k] for k in likeliest] == pytest.approx(list(likeliest.values()), abs=1e-5)
    offsets = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    assert scores["text_offset"] == offsets
    assert reply["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}


def test_generated_tokens_are_scored_by_the_model_before_the_samplers(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    server = start(model)
    prompt_ids = tokenizer.encode(PROMPT)
    greedy = greedy_ids(model, tokenizer, PROMPT, 8)
    reply = complete(server, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    scores = reply["choices"][0]["logprobs"]
    assert reply["choices"][0]["text"] == tokenizer.decode(greedy) == "".join(scores["tokens"])
    assert scores["tokens"] == [tokenizer.decode([t]) for t in greedy]
    expected = forward_logprobs(model, prompt_ids + greedy)[len(prompt_ids) - 1 :]
    assert scores["token_logprobs"] == pytest.approx([row[t].item() for row, t in zip(expected, greedy)], abs=1e-5)
    # Greedy: each token is the likeliest, so it heads its own alternatives (the harness's is_greedy).
    assert all(lp == max(top.values()) for lp, top in zip(scores["token_logprobs"], scores["top_logprobs"]))
    assert scores["text_offset"] == [len(tokenizer.decode(greedy[:i])) for i in range(len(greedy))]
    # A sharpened, filtered draw still reports the model's own log_softmax, not the tempered one.
    sampled = complete(server, prompt=PROMPT, max_tokens=6, temperature=0.3, top_k=5, seed=11, logprobs=0, echo=True)
    scores = sampled["choices"][0]["logprobs"]
    ids = token_ids(tokenizer, scores["tokens"])
    assert ids[: len(prompt_ids)] == prompt_ids and len(ids) == len(prompt_ids) + sampled["usage"]["completion_tokens"]
    expected = forward_logprobs(model, ids)
    assert scores["token_logprobs"][1:] == pytest.approx([row[t].item() for row, t in zip(expected, ids[1:])], abs=1e-5)
    assert all(len(top) == 1 for top in scores["top_logprobs"][1:]), "logprobs 0: the chosen token alone"


def test_echo_puts_the_prompt_before_the_completion(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    server = start(model)
    alone = complete(server, prompt=PROMPT, max_tokens=5, temperature=0)["choices"][0]["text"]
    reply = complete(server, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, logprobs=1)
    [choice] = reply["choices"]
    assert choice["text"] == PROMPT + alone
    n_prompt = len(tokenizer.encode(PROMPT))
    assert len(choice["logprobs"]["tokens"]) == n_prompt + 5
    assert choice["logprobs"]["text_offset"][n_prompt] == len(PROMPT)
    assert reply["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 5, "total_tokens": n_prompt + 5}
    # Streamed, the echoed prompt comes first, then the completion.
    status, text = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "echo": True, "stream": True})
    assert status == 200, text
    assert "".join(e["choices"][0]["text"] for e in sse_events(text)) == PROMPT + alone


def test_text_that_splits_characters_into_bytes(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    prompt = "na\u00efve \U0001f600 \u2603!"
    ids = tokenizer.encode(prompt)
    scores = complete(start(model), prompt=prompt, echo=True, max_tokens=0, logprobs=1)["choices"][0]["logprobs"]
    pieces = [tokenizer.decode_bytes([t]) for t in ids]
    assert any(len(p.decode("utf-8", errors="ignore")) == 0 for p in pieces), "the emoji must be split into bytes for this test"
    for token, piece, offset in zip(scores["tokens"], pieces, scores["text_offset"]):
        if token.startswith("bytes:"):
            assert bytes.fromhex(token[6:].replace("\\x", "")) == piece
        else:
            assert token == piece.decode("utf-8") == prompt[offset : offset + len(token)]
    assert b"".join(pieces) == prompt.encode("utf-8")


def test_every_prompt_shape_scores_the_same(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    server = start(model)
    ids = tokenizer.encode(PROMPT)
    other = tokenizer.encode("Goodbye now")
    score = {"echo": True, "max_tokens": 0, "logprobs": 2}
    one = complete(server, prompt=PROMPT, **score)["choices"][0]
    for shape in ([PROMPT], ids, [ids]):
        assert complete(server, prompt=shape, **score)["choices"][0] == one
    reply = complete(server, prompt=[ids, other], **score)
    assert [c["index"] for c in reply["choices"]] == [0, 1] and reply["choices"][0] == one
    assert reply["choices"][1]["text"] == "Goodbye now"
    expected = forward_logprobs(model, other)
    assert reply["choices"][1]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        expected.gather(-1, torch.tensor(other[1:])[:, None])[:, 0].tolist(), abs=1e-5)
    assert reply["usage"]["prompt_tokens"] == len(ids) + len(other)


def test_n_choices_per_prompt_in_prompt_order_with_derived_seeds(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model)
    draw = {"max_tokens": 6, "temperature": 1.0, "seed": 5}
    reply = complete(server, prompt=["Once upon", "In the beginning"], n=3, **draw)
    choices = reply["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    # Prompt i's sample j is choice i * n + j, drawn with seed + j: what a request of its own gives.
    for i, prompt in enumerate(["Once upon", "In the beginning"]):
        for j in range(3):
            alone = complete(server, prompt=prompt, **{**draw, "seed": 5 + j})["choices"][0]["text"]
            assert choices[i * 3 + j]["text"] == alone
        assert len({c["text"] for c in choices[i * 3 : i * 3 + 3]}) > 1, "a prompt's samples should differ"
    assert reply["usage"]["completion_tokens"] == 36
    assert reply["usage"]["prompt_tokens"] == complete(server, prompt=["Once upon", "In the beginning"], max_tokens=0)["usage"]["prompt_tokens"]
    again = complete(server, prompt=["Once upon", "In the beginning"], n=3, **draw)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in choices]
    # Streamed: every choice's chunks carry its index, and they spell the same texts.
    status, text = request(server, "POST", "/v1/completions", {"prompt": ["Once upon", "In the beginning"], "n": 3, "stream": True, **draw})
    assert status == 200, text
    streamed = [""] * 6
    finished = {}
    for event in sse_events(text):
        choice = event["choices"][0]
        streamed[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert streamed == [c["text"] for c in choices] and sorted(finished) == list(range(6))


def test_scores_past_the_context_window_come_from_the_window_before_each_token(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    ids = [100 + (37 * i) % 5000 for i in range(WINDOW + 16)]
    server = start(model, max_prompt_tokens=len(ids))
    scores = complete(server, prompt=ids, echo=True, max_tokens=0, logprobs=1)["choices"][0]["logprobs"]["token_logprobs"]
    expected = [next_logprobs(model, ids[max(0, t - WINDOW) : t])[ids[t]].item() for t in range(1, len(ids))]
    assert scores[1:] == pytest.approx(expected, abs=1e-5)
    # Generation slides the same window: greedy tokens past it are still each the likeliest.
    prompt = " ".join(["token"] * (WINDOW - 4))
    greedy = greedy_ids(model, tokenizer, prompt, 10)
    assert len(tokenizer.encode(prompt)) + len(greedy) > WINDOW + 1
    generated = complete(server, prompt=prompt, max_tokens=10, temperature=0, logprobs=1)["choices"][0]["logprobs"]
    assert generated["tokens"] == [tokenizer.decode([t]) for t in greedy]
    assert all(lp == max(top.values()) for lp, top in zip(generated["token_logprobs"], generated["top_logprobs"]))


def test_openai_client_reads_the_logprobs(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    reply = client(start(model)).completions.create(model="gptkit", prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs.tokens == [tokenizer.decode([t]) for t in tokenizer.encode(PROMPT)]
    assert logprobs.token_logprobs[0] is None and len(logprobs.top_logprobs[1]) in (2, 3)


def test_lm_eval_local_completions_gets_the_forward_pass_loglikelihoods(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer, tmp_path: Path,
) -> None:
    pytest.importorskip("tenacity", reason="lm_eval's API models need tenacity and aiohttp (pip install 'lm_eval[api]')")
    pytest.importorskip("aiohttp", reason="lm_eval's API models need tenacity and aiohttp (pip install 'lm_eval[api]')")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    write_hf_tokenizer_files(tmp_path)
    server = start(model, model_name="tiny")
    context = "The cat sat on"
    greedy = tokenizer.decode(greedy_ids(model, tokenizer, context, 3))
    pairs = [(context, " the mat"), ("Hello", " world, again"), (context, greedy), ("A", "<|endoftext|>")]
    # batch_size 2: two prompts of token ids per request, as the harness batches them.
    lm = LocalCompletionsAPI(
        base_url=f"{server.url}v1/completions", model="tiny", tokenizer_backend="huggingface", tokenizer=str(tmp_path),
        batch_size=2, max_length=WINDOW, max_retries=1,
    )
    results = lm.loglikelihood([Instance("loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)], disable_tqdm=True)
    expected = []
    for ctx, continuation in pairs:
        # As the harness splits a pair: the whole text encoded, the context's tokens first.
        whole = tokenizer.encode(ctx + continuation, allow_special=True)
        n_context = len(tokenizer.encode(ctx))
        rows = forward_logprobs(model, whole)[n_context - 1 :]
        targets = torch.tensor(whole[n_context:])
        expected.append((rows.gather(-1, targets[:, None]).sum().item(), bool((rows.argmax(-1) == targets).all())))
    assert [ll for ll, _ in results] == pytest.approx([ll for ll, _ in expected], abs=1e-4)
    assert [g for _, g in results] == [g for _, g in expected]
    assert any(g for _, g in expected), "one continuation must be the model's greedy one for is_greedy to mean anything"
    # The same requests through gptkit's own harness model, no server between: the same numbers.
    from gptkit.evaluation.harness import GptkitLM

    direct = GptkitLM(model=model, tokenizer=tokenizer, batch_size=2).loglikelihood(
        [Instance("loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)], disable_tqdm=True)
    assert [ll for ll, _ in direct] == pytest.approx([ll for ll, _ in results], abs=1e-4)
    assert [g for _, g in direct] == [g for _, g in results]


# --- bad values --------------------------------------------------------------------------------


def bad(message: str, param: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    return 400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": [15496, 50257]}, bad("prompt: token id 50257 is outside the vocabulary (0 to 50256)", "prompt")),
        ({"prompt": [[15496], [-3]]}, bad("prompt.1: token id -3 is outside the vocabulary (0 to 50256)", "prompt")),
        ({"prompt": "", "max_tokens": 0, "echo": True},
         bad("prompt: the prompt is empty and max_tokens is 0: there is nothing to score or generate", "prompt")),
        ({"prompt": ["x", ""], "max_tokens": 0},
         bad("prompt.1: the prompt is empty and max_tokens is 0: there is nothing to score or generate", "prompt")),
        ({"prompt": PROMPT, "logprobs": 21}, bad("logprobs: Input should be less than or equal to 20", "logprobs")),
        ({"prompt": PROMPT, "logprobs": -1}, bad("logprobs: Input should be greater than or equal to 0", "logprobs")),
        ({"prompt": PROMPT, "logprobs": True}, bad("logprobs: Input should be a valid integer", "logprobs")),
        ({"prompt": PROMPT, "logprobs": 1, "stream": True},
         bad("logprobs is not supported with stream: ask without stream (the log probabilities come with the whole reply)", "logprobs")),
        ({"prompt": PROMPT, "n": 0}, bad("n: Input should be greater than or equal to 1", "n")),
        ({"prompt": PROMPT, "n": 129}, bad("n: Input should be less than or equal to 128", "n")),
        ({"prompt": ["x"] * 65, "n": 2, "max_tokens": 1},
         bad("the request asks for 130 choices (65 prompts, n 2); this server makes at most 128 per request", "prompt")),
        ({"prompt": ["x", "word " * 70]},
         bad("prompt 1 is 71 tokens; this server allows at most 64", "prompt", code="context_length_exceeded")),
    ],
)
def test_bad_scoring_requests_are_answered_400_naming_the_field(
    start: Callable[..., CompletionServer], model: GPTModel, body: dict[str, Any], expected: tuple[int, dict[str, Any]],
) -> None:
    assert request(start(model), "POST", "/v1/completions", body) == expected


def test_the_pages_stream_is_one_choice_and_sends_logprobs_after_the_text(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    server = start(model)
    assert request(server, "POST", "/api/generate", {"prompt": PROMPT, "n": 2}) == bad(
        "/api/generate streams one completion, and this request asks for 2: send one prompt and n 1 (POST /v1/completions makes several)", "n")
    assert request(server, "POST", "/api/generate", {"prompt": ["a", "b"]})[1]["error"]["param"] == "prompt"
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": True, "logprobs": 3}
    status, text = request(server, "POST", "/api/generate", body)
    assert status == 200, text
    events = sse_events(text)
    assert [e["type"] for e in events[-2:]] == ["logprobs", "done"]
    generated = "".join(e["text"] for e in events if e["type"] == "text")
    assert generated == tokenizer.decode(greedy_ids(model, tokenizer, PROMPT, 6)), "the text events stay the completion alone"
    api = complete(server, **{k: v for k, v in body.items()})["choices"][0]
    assert events[-2]["logprobs"] == api["logprobs"] and api["text"] == PROMPT + generated
