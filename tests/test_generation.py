"""Generation: the KV cache against recomputing the whole context, ragged batches, stops, text, bf16."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from conftest import randomize_weights

from gptkit import GPTModel, ModelConfig
from gptkit.data.tokenizer import Tokenizer, gpt2_encoding
from gptkit.generation.chat import Chat
from gptkit.generation.generate import (
    TextStream,
    generate,
    generate_text,
    generate_tokens,
    stream_text,
)
from gptkit.generation.samplers import Greedy
from gptkit.plugins import default_registry

WINDOW = 16
LLAMA_LIKE = {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu"}


def build(seed: int = 0, *, vocab_size: int = 97, **components: object) -> GPTModel:
    """A small model with weights wide enough that greedy decoding does not just repeat one token.

    Untied, N(0, 0.5) weights: GPT-2's N(0, 0.02) makes every logit nearly equal,
    and a cache bug could then go unnoticed behind a constant output.
    """
    cfg = ModelConfig(
        vocab_size=vocab_size, emb_dim=32, n_heads=4, n_layers=2, context_length=WINDOW, weight_tying=False,
        **components,  # type: ignore[arg-type]
    )
    model = GPTModel(cfg)
    return randomize_weights(model, seed)  # type: ignore[return-value]


def recompute_greedy(model: GPTModel, prompt: Sequence[int], n: int, eos: int | None = None) -> list[int]:
    """Greedy continuation of one prompt, the whole (cropped) context run afresh for every token."""
    tokens, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([tokens[-model.cfg.context_length :]]))[0, -1].argmax())
            out.append(nxt)
            tokens.append(nxt)
            if nxt == eos:
                break
    return out


def registry_variants() -> list[tuple[str, dict[str, object]]]:
    """Every attention and position component in the registry (and MHA's explicit path)."""
    registry = default_registry()
    variants = [
        (f"{attention}+{position}", {"attention": attention, "position": position})
        for attention in registry.names("attention")
        for position in registry.names("position")
    ]
    variants += [(f"mha-explicit+{p}", {"attention": {"name": "mha", "use_sdpa": False}, "position": p}) for p in ("learned", "rope")]
    return variants + [("rope+rmsnorm+swiglu", LLAMA_LIKE)]


# --- the cache --------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "components"), registry_variants(), ids=[v[0] for v in registry_variants()])
def test_cached_greedy_equals_recomputing_the_context(label: str, components: dict[str, object]) -> None:
    # Seed 4: every registered attention, QK-norm (whose scores are bounded) included, gives varied text.
    model = build(4, **components)
    prompts = torch.tensor([[5, 17, 3, 42, 8, 61], [9, 9, 30, 2, 77, 1]])
    # 30 new tokens after 6: the window of 16 fills after 10 and then slides for 20 more.
    out = generate(model, prompts, 30, [Greedy()])
    for row in range(2):
        assert out[row, 6:].tolist() == recompute_greedy(model, prompts[row].tolist(), 30), label
    assert len(set(out[0, 6:].tolist())) > 3, "a near-constant output would not test the cache"


def test_prefill_once_then_one_token_at_a_time_then_rebuild_when_full() -> None:
    model = build(2, **LLAMA_LIKE)
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    generate(model, torch.tensor([[1, 2, 3, 4, 5, 6]]), 30, [Greedy()])
    # 6 prompt tokens; 10 steps fill the cache to 16; then every step re-runs the last 16.
    # 29 forward passes after the prefill: the 30th token needs no logits after it.
    assert lengths == [6] + [1] * 10 + [WINDOW] * 19


def test_without_cache_matches_and_works_under_no_grad_and_inference_mode() -> None:
    model = build(3, position="rope").train()  # generation switches to eval and back
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    expected = generate(model, prompt, 25, [Greedy()], use_cache=False)
    assert model.training
    with torch.no_grad():
        assert torch.equal(generate(model, prompt, 25, [Greedy()]), expected)
    with torch.inference_mode():
        assert torch.equal(generate(model, prompt, 25, [Greedy()]), expected)
    assert expected[0, 6:].tolist() == recompute_greedy(model.eval(), prompt[0].tolist(), 25)


def test_last_only_logits_equal_the_last_position() -> None:
    model = build(4)
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(model(idx, last_only=True), model(idx)[:, -1:])
    with pytest.raises(ValueError, match="pass targets or last_only, not both"):
        model(idx, idx, last_only=True)


# --- ragged batches and stopping --------------------------------------------------------------


PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1], [8] * 12, [40, 41, 42]]


@pytest.mark.parametrize("components", [{}, LLAMA_LIKE], ids=["gpt2", "rope+rmsnorm+swiglu"])
def test_prompts_of_different_lengths_each_generate_as_if_alone(components: dict[str, object]) -> None:
    model = build(5, **components)
    steps = torch.cat(list(generate_tokens(model, PROMPTS, 20, [Greedy()])), dim=1)
    assert steps.shape == (len(PROMPTS), 20)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), 20, [Greedy()])[0, len(prompt) :]
        assert steps[row].tolist() == alone.tolist() == recompute_greedy(model, prompt, 20)


def test_each_row_stops_at_its_own_end_of_text() -> None:
    model = build(5)
    free = [recompute_greedy(model, p, 20) for p in PROMPTS]
    eos = free[0][3]  # row 0 ends after its fourth token; other rows end wherever they make it
    steps = torch.cat(list(generate_tokens(model, PROMPTS, 20, [Greedy()], eos_id=eos)), dim=1)
    for row, tokens in enumerate(free):
        expected = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        got = steps[row].tolist()
        assert got[: len(expected)] == expected
        assert set(got[len(expected) :]) <= {eos}  # rows that ended are padded with eos_id


def test_generation_ends_early_once_every_row_has_ended() -> None:
    model = build(6)
    prompt = [1, 2, 3]
    first = recompute_greedy(model, prompt, 1)[0]
    steps = list(generate_tokens(model, [prompt], 50, [Greedy()], eos_id=first))
    assert len(steps) == 1 and steps[0].tolist() == [[first]]
    assert list(generate_tokens(model, [prompt], 0, [Greedy()])) == []
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        list(generate_tokens(model, [[1], []], 5, [Greedy()]))


# --- bf16 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("components", [{}, LLAMA_LIKE], ids=["gpt2", "rope+rmsnorm+swiglu"])
def test_bf16_generation_picks_tokens_float32_rates_near_the_top(components: dict[str, object]) -> None:
    reference = build(7, **components)
    model = build(7, **components).to(torch.bfloat16)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = generate(model, torch.tensor([prompt]), 24, [Greedy()])[0].tolist()
    assert all(0 <= t < 97 for t in out)
    with torch.no_grad():
        for step in range(len(prompt), len(out)):
            logits = reference(torch.tensor([out[:step][-WINDOW:]]))[0, -1]
            # bf16 keeps 8 bits of mantissa: its pick is float32's, or within rounding of it.
            assert logits.max() - logits[out[step]] < 0.05 * logits.abs().max(), step


# --- text -------------------------------------------------------------------------------------


def byte_tokens(text: str) -> list[int]:
    """One GPT-2 token per UTF-8 byte of `text` (every byte has a token of its own)."""
    encoding = gpt2_encoding()
    return [encoding.encode_single_token(bytes([b])) for b in text.encode("utf-8")]


def push_all(stream: TextStream, tokens: list[int]) -> list[str]:
    return [stream.push(t) for t in tokens]


def test_text_stream_releases_only_complete_characters() -> None:
    stream = TextStream(Tokenizer())
    assert push_all(stream, byte_tokens("aé😀")) == ["a", "", "é", "", "", "", "😀"]
    cut = TextStream(Tokenizer())
    assert push_all(cut, byte_tokens("€")[:2]) == ["", ""]
    assert cut.close() == "\ufffd"  # the end came mid-character


def test_text_stream_holds_back_what_may_start_a_stop_string_and_cuts_it() -> None:
    tok = Tokenizer()
    stream = TextStream(tok, stop=["\nUser:"])
    assert push_all(stream, byte_tokens("Hi\nUs")) == ["H", "i", "", "", ""]
    assert push_all(stream, byte_tokens("e")) == [""]
    assert push_all(stream, byte_tokens("x")) == ["\nUsex"]  # not a stop after all
    assert push_all(stream, tok.encode(" ok\nUser: more")) != []
    assert stream.done and stream.text == "Hi\nUsex ok"
    assert stream.push(tok.encode("z")[0]) == "" and stream.close() == ""
    ended = TextStream(tok, stop=["END"])
    assert push_all(ended, byte_tokens("aEN")) == ["a", "", ""]
    assert ended.close() == "EN"  # never completed: released at the end
    eot = TextStream(tok, stop=["END"])
    assert push_all(eot, [*byte_tokens("bE"), tok.eot_id]) == ["b", "", "E"] and eot.done


@pytest.fixture(scope="module")
def text_model() -> GPTModel:
    return build(8, vocab_size=50257)


def decode(tokens: list[int]) -> str:
    tok = Tokenizer()
    if tok.eot_id in tokens:
        tokens = tokens[: tokens.index(tok.eot_id)]
    return tok.decode_bytes(tokens).decode("utf-8", errors="replace")


def test_generate_text_cuts_each_row_at_its_first_stop_string(text_model: GPTModel) -> None:
    tok = Tokenizer()
    prompts = ["The cat", "Once upon a time, there", "Hello"]
    free = [decode(recompute_greedy(text_model, tok.encode(p), 24, tok.eot_id)) for p in prompts]
    assert generate_text(text_model, tok, prompts, 24, [Greedy()]) == free
    middle = len(free[0]) // 2
    stop = free[0][middle : middle + 3]
    expected = [text[: text.index(stop)] if stop in text else text for text in free]
    assert expected[0] != free[0]
    assert generate_text(text_model, tok, prompts, 24, [Greedy()], stop=[stop]) == expected
    streamed = list(stream_text(text_model, tok, prompts[0], 24, [Greedy()], stop=[stop]))
    assert "".join(streamed) == expected[0] and all(streamed)


# --- chat -------------------------------------------------------------------------------------


def test_chat_keeps_the_newest_whole_exchanges_within_the_window() -> None:
    tok = Tokenizer()
    model = build(9, vocab_size=50257)
    chat = Chat(model, tok, [Greedy()], max_new_tokens=4)
    assert chat.budget == WINDOW - 4
    lines = ["hi", "what now", "ok", "tell me more"]
    for line in lines:
        prompt = chat.prompt_ids(line)
        newest = tok.encode(f"User: {line}\nAssistant:")
        # The prompt is whole exchanges, newest last, then the new line: as many as fit.
        kept = [e for i, e in enumerate(chat.exchanges) if sum(map(len, chat.exchanges[i:])) + len(newest) <= chat.budget]
        assert prompt == [t for e in kept for t in e] + newest
        assert len(prompt) <= chat.budget
        assert chat.forgotten == len(chat.exchanges) - len(kept)  # what the chat tells the user it dropped
        reply = "".join(chat.reply(line))
        assert "\nUser:" not in reply
        assert chat.exchanges[-1] == tok.encode(f"User: {line}\nAssistant:{reply.rstrip(chr(10))}\n")
    assert len(chat.exchanges) == len(lines)
    assert chat.forgotten > 0  # the window is small enough that the first exchanges fell out
    chat.reset()
    assert chat.forgotten == 0
