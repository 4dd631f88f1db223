"""Instruction data: reading Alpaca and chat files, the train/val split, ids and masked labels, batches.

Expected values come from outside the code under test: templates written out by
hand, ids from `tokenizer.encode` of each piece, error messages in full, a loss
computed with log-softmax by hand, and example identities carried in the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptkit import DataError, GPTModel, ModelConfig
from gptkit.data.instruction import AlpacaFields, Example, Message, split_examples
from gptkit.data.instruction_batches import (
    InstructionBatches,
    epoch_order,
    fixed_instruction_batches,
    pad_batch,
)
from gptkit.data.instruction_encoding import (
    EncodedExample,
    encode_example,
    encode_examples,
    encode_text,
)
from gptkit.data.instruction_files import read_examples
from gptkit.data.packed_batches import PackedInstructionBatches
from gptkit.data.prompt_styles import AlpacaStyle, ChatStyle
from gptkit.data.tokenizer import Tokenizer

EOT_TEXT = "<|endoftext|>"
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nAdd the numbers.\n\n### Input:\n2 3\n\n### Response:\n"
)


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer()


class Bytes:
    """Ids are UTF-8 bytes, end-of-text 256; only the `encode(text)` the Tokenizer protocol promises."""

    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def lines(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- reading files ----------------------------------------------------------------


def test_reads_alpaca_arrays_alpaca_lines_and_chat_lines(tmp_path: Path) -> None:
    records = [
        {"instruction": "Add the numbers.", "input": "2 3", "output": "5", "id": 7},
        {"instruction": "Say hi.", "output": "Hi."},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
    ]
    array = write(tmp_path / "alpaca.json", json.dumps(records, indent=2))
    expected = [
        Example((Message("user", "Add the numbers.\n\n2 3"), Message("assistant", "5")), "", AlpacaFields("Add the numbers.", "2 3")),
        Example((Message("user", "Say hi."), Message("assistant", "Hi.")), "", AlpacaFields("Say hi.", "")),
        Example((Message("user", "Say hi."), Message("assistant", "Hi.")), "", AlpacaFields("Say hi.", "")),
    ]

    def without_source(examples: list[Example]) -> list[Example]:
        return [Example(e.messages, "", e.alpaca) for e in examples]

    got = read_examples(array)
    assert without_source(got) == expected
    assert [e.source for e in got] == [f"{array} record {i}" for i in (1, 2, 3)]

    # JSON lines: blank lines are skipped but still counted, a byte-order mark is dropped.
    jsonl = write(tmp_path / "alpaca.jsonl", "\ufeff" + json.dumps(records[0]) + "\n\n" + lines(*records[1:]))
    got = read_examples(jsonl)
    assert without_source(got) == expected
    assert [e.source for e in got] == [f"{jsonl} line {n}" for n in (1, 3, 4)]

    chat = write(
        tmp_path / "chat.jsonl",
        lines(
            {"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi\u2028there"},  # a line separator inside a string is not a line end
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye?"},
                {"role": "assistant", "content": "Bye."},
            ]},
            records[1],  # one file may mix the two kinds
        ),
    )
    first, second = read_examples(chat)
    assert first == Example(
        (
            Message("system", "Be brief."),
            Message("user", "Hi\u2028there"),
            Message("assistant", "Hello."),
            Message("user", "Bye?"),
            Message("assistant", "Bye."),
        ),
        f"{chat} line 1",
        None,
    )
    assert second.alpaca == AlpacaFields("Say hi.") and second.source == f"{chat} line 2"


def test_lines_that_are_not_json_objects_name_the_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"instruction": "a", "output": "b"})
    cases = [
        ("a.jsonl", f"{good}\n{{\"instruction\": \"a\" \"output\": 1}}\n",
         "line 2: not valid JSON (Expecting ',' delimiter at column 21); expected one JSON object per line"),
        ("b.jsonl", f"{good}\n\n[1, 2]\n", "line 3: expected a JSON object, got an array"),
        ("c.json", '[\n  {"instruction": "a", "output": "b"},\n  "text"\n]', "record 2: expected a JSON object, got a string"),
        ("d.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]',
         "line 3: not valid JSON (Expecting value at column 19)"),
    ]
    for name, text, message in cases:
        path = write(tmp_path / name, text)
        with pytest.raises(DataError) as err:
            read_examples(path)
        assert str(err.value) == f"{path} {message}"
    latin1 = tmp_path / "e.jsonl"
    before = '\n{"instruction": "caf'
    latin1.write_bytes(good.encode() + before.encode() + b'\xe9", "output": "b"}\n')
    with pytest.raises(DataError) as err:
        read_examples(latin1)
    assert str(err.value) == f"{latin1} line 2: not valid UTF-8 (byte 0xe9 at byte offset {len(good) + len(before)})"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "a"}, "missing field 'output'; an Alpaca record has 'instruction', 'output' and optionally 'input'"),
        ({"prompt": "a", "output": "b"}, "missing field 'instruction' (an Alpaca record) or 'messages' (a chat record)"),
        ({"instruction": "a", "output": 5}, "field 'output' is a number, expected a string"),
        ({"instruction": ["a"], "output": "b"}, "field 'instruction' is an array, expected a string"),
        ({"instruction": "a", "input": None, "output": "b"}, "field 'input' is null, expected a string"),
        ({"messages": {"role": "user"}}, "field 'messages' is an object, expected an array of messages"),
        ({"messages": ["hi"]}, "messages[0] is a string, expected an object with 'role' and 'content'"),
        ({"messages": [{"content": "hi"}]}, "missing field 'messages[0].role'"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}, "missing field 'messages[1].content'"),
        ({"messages": [{"role": "user", "content": True}]}, "field 'messages[0].content' is a boolean, expected a string"),
    ],
)
def test_records_missing_a_field_or_with_a_non_string_field(tmp_path: Path, record: dict, message: str) -> None:
    path = write(tmp_path / "data.jsonl", lines({"instruction": "a", "output": "b"}, record))
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(err.value) == f"{path} line 2: {message}"


def test_chat_records_with_an_unknown_role_or_no_assistant_turn(tmp_path: Path) -> None:
    bot = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    path = write(tmp_path / "bot.jsonl", lines(bot))
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(err.value) == f"{path} line 1: messages[1].role is 'bot'; expected 'system', 'user' or 'assistant'"
    for turns in ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], []):
        path = write(tmp_path / "silent.json", json.dumps([{"messages": turns}]))
        with pytest.raises(DataError) as err:
            read_examples(path)
        assert str(err.value) == f"{path} record 1: the conversation has no assistant message, so there is nothing to train on"
    with pytest.raises(DataError) as err:
        Message("bot", "hello")  # built by a program (a server) rather than read
    assert str(err.value) == "unknown message role 'bot'; expected 'system', 'user' or 'assistant'"


def test_end_of_text_marker_inside_the_data_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "eot.jsonl", lines({"instruction": "a", "output": f"b{EOT_TEXT}c"}))
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(err.value) == f"{path} line 1: field 'output' contains '{EOT_TEXT}', which marks the end of each response; remove it"


def test_empty_or_missing_files(tmp_path: Path) -> None:
    layout = "a JSON array of Alpaca records or JSON lines of Alpaca or chat records"
    for name, text in (("empty.jsonl", ""), ("blank.json", "\ufeff\n  \n")):
        path = write(tmp_path / name, text)
        with pytest.raises(DataError) as err:
            read_examples(path)
        assert str(err.value) == f"{path} is empty; expected {layout}"
    path = write(tmp_path / "none.json", " [ ]\n")
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(err.value) == f"{path} holds an empty JSON array; expected at least one example"
    with pytest.raises(DataError) as err:
        read_examples(tmp_path / "absent.json")
    assert str(err.value) == f"instruction data file {tmp_path / 'absent.json'} does not exist"


# --- the train/val split ------------------------------------------------------------


def numbered(n: int) -> list[Example]:
    return [Example.from_alpaca(f"Say {i}.", "", str(i), source=f"#{i}") for i in range(n)]


def test_split_is_deterministic_keeps_order_and_gives_each_side_one() -> None:
    examples = numbered(40)
    train, val = split_examples(examples, 0.1, seed=3)
    assert (len(train), len(val)) == (36, 4)
    assert sorted(train + val, key=examples.index) == examples
    assert train == sorted(train, key=examples.index) and val == sorted(val, key=examples.index)
    assert split_examples(list(examples), 0.1, seed=3) == (train, val)
    assert split_examples(examples, 0.1, seed=4)[1] != val
    # Decided by content, not position: a reversed file holds out the same examples.
    assert set(split_examples(examples[::-1], 0.1, seed=3)[1]) == set(val)
    assert [len(side) for side in split_examples(numbered(2), 0.01)] == [1, 1]
    assert [len(side) for side in split_examples(numbered(3), 0.9)] == [1, 2]
    assert split_examples(examples, 0.0) == (examples, [])


def test_split_refuses_too_few_examples_and_bad_fractions() -> None:
    with pytest.raises(DataError) as err:
        split_examples(numbered(1), 0.1)
    assert str(err.value) == "holding out a validation set needs at least 2 examples, got 1; add examples or set val_fraction=0"
    for fraction in (1.0, -0.1):
        with pytest.raises(DataError) as err:
            split_examples(numbered(5), fraction)
        assert str(err.value) == f"val_fraction must be in [0, 1), got {fraction}"


# --- ids and labels ---------------------------------------------------------------


def test_alpaca_ids_and_masked_positions_match_the_pieces_encoded_by_hand(gpt2: Tokenizer) -> None:
    example = Example.from_alpaca("Add the numbers.", "2 3", "The sum is 5.")
    prompt = gpt2.encode(ALPACA_PROMPT_WITH_INPUT, allow_special=True)
    response = gpt2.encode("The sum is 5.", allow_special=True)
    eot = gpt2.encode(EOT_TEXT, allow_special=True)
    assert eot == [gpt2.eot_id]

    encoded = encode_example(example, AlpacaStyle(), gpt2, max_length=1024)
    assert encoded is not None and not encoded.truncated
    assert encoded.ids.tolist() == prompt + response + eot
    # The target of input i is id i + 1: masked while that id is prompt text.
    expected = [-100] * (len(prompt) - 1) + response + eot
    assert encoded.labels.tolist() == expected
    masked = [i for i, label in enumerate(encoded.labels.tolist()) if label == -100]
    assert masked == list(range(len(prompt) - 1))

    everything = encode_example(example, AlpacaStyle(), gpt2, max_length=1024, train_on_prompt=True)
    assert everything is not None and everything.labels.tolist() == (prompt + response + eot)[1:]


def test_multi_turn_chat_trains_every_assistant_turn(gpt2: Tokenizer) -> None:
    example = Example((
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
        Message("user", "Name?"),
        Message("assistant", "Kit."),
    ))
    pieces = [
        ("System: Be brief.\nUser: Hi\nAssistant:", False),
        (" Hello.", True),
        (EOT_TEXT, True),
        ("\nUser: Name?\nAssistant:", False),
        (" Kit.", True),
        (EOT_TEXT, True),
    ]
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_response in pieces:
        piece = gpt2.encode(text, allow_special=True)
        ids += piece
        trained += [is_response] * len(piece)
    encoded = encode_example(example, ChatStyle(), gpt2, max_length=1024)
    assert encoded is not None and encoded.ids.tolist() == ids
    assert encoded.labels.tolist() == [t if r else -100 for t, r in zip(ids[1:], trained[1:])]
    # Both replies are learnt, each with the end-of-text that closes it.
    learnt = [t for t in encoded.labels.tolist() if t != -100]
    assert learnt == gpt2.encode(" Hello.") + [gpt2.eot_id] + gpt2.encode(" Kit.") + [gpt2.eot_id]


def test_end_of_text_becomes_one_id_with_any_tokenizer(gpt2: Tokenizer) -> None:
    text = f"a b{EOT_TEXT}\nc{EOT_TEXT}"
    assert encode_text(text, gpt2) == gpt2.encode(text, allow_special=True)
    assert encode_text(text, Bytes()) == [97, 32, 98, 256, 10, 99, 256]


def test_masked_loss_equals_cross_entropy_computed_by_hand() -> None:
    tokenizer = Bytes()
    examples = [Example.from_alpaca("Hi", "", "Yo"), Example((Message("user", "2+2"), Message("assistant", "4")),)]
    encoded = [encode_example(e, ChatStyle(), tokenizer, max_length=64) for e in examples]
    x, y = pad_batch([e for e in encoded if e is not None], pad_id=tokenizer.eot_id)
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=257, context_length=64, emb_dim=16, n_layers=1, n_heads=2)).eval()
    with torch.no_grad():
        logits, loss = model(x, y)
    total, count = 0.0, 0
    for b in range(y.shape[0]):
        for t in range(y.shape[1]):
            target = int(y[b, t])
            if target != -100:
                row = logits[b, t].double()
                total += float(torch.logsumexp(row, 0) - row[target])
                count += 1
    assert count == (3 + 1) + (2 + 1)  # " Yo" and " 4" as bytes, each with its end-of-text
    expected = total / count
    assert F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100).item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_long_examples_are_truncated_dropped_or_refused() -> None:
    tokenizer = Bytes()
    style = ChatStyle()
    # "User: Hi\nAssistant:" is 19 bytes, then " Yo" and the end-of-text.
    example = Example((Message("user", "Hi"), Message("assistant", "Yo")), source="chat.jsonl line 4")
    whole = encode_example(example, style, tokenizer, max_length=23)
    assert whole is not None and not whole.truncated and len(whole.ids) == 23
    cut = encode_example(example, style, tokenizer, max_length=21)
    assert cut is not None and cut.truncated
    assert cut.ids.tolist() == list(b"User: Hi\nAssistant: Y")
    assert cut.labels.tolist() == [-100] * 18 + [ord(" "), ord("Y")]
    # Cut before any response token can be a target: dropped, not kept with every label masked.
    assert encode_example(example, style, tokenizer, max_length=19) is None
    assert encode_example(example, style, tokenizer, max_length=19, train_on_prompt=True) is None

    short = Example((Message("user", "Hi"), Message("assistant", "")), source="chat.jsonl line 5")
    long_prompt = Example((Message("user", "Hello there"), Message("assistant", "Yo")), source="chat.jsonl line 6")
    kept = encode_examples([example, long_prompt, short], style, tokenizer, max_length=21)
    assert [e.source for e in kept.examples] == ["chat.jsonl line 4", "chat.jsonl line 5"]
    assert (kept.truncated, kept.dropped) == (1, ("chat.jsonl line 6",))

    with pytest.raises(DataError) as err:
        encode_example(example, style, tokenizer, max_length=22, overflow="refuse")
    assert str(err.value) == (
        "chat.jsonl line 4 is 23 tokens, longer than max_length 22 (the model's context + 1); "
        "shorten it, use a longer context, or truncate (overflow='truncate')"
    )
    with pytest.raises(DataError) as err:
        encode_examples([example, example], style, tokenizer, max_length=10)
    assert str(err.value) == (
        "all 2 examples were dropped: none has any of its response within its first 10 tokens "
        "(the model's context + 1); use a longer context or shorter prompts"
    )


# --- batches ----------------------------------------------------------------------

PAD = 256


def tagged(n: int) -> list[EncodedExample]:
    """Example i's ids all equal i (its identity in any batch), i % 4 + 2 of them; even targets masked."""
    out = []
    for i in range(n):
        ids = np.full(i % 4 + 2, i, dtype=np.int32)
        labels = np.array([i if j % 2 else -100 for j in range(len(ids) - 1)], dtype=np.int32)
        out.append(EncodedExample(ids, labels, f"#{i}"))
    return out


def rows(x: torch.Tensor, y: torch.Tensor, examples: list[EncodedExample]) -> list[tuple[list[int], list[int]]]:
    """Each row without its padding, checking the padding is right padding of PAD and -100."""
    out = []
    for xr, yr in zip(x.tolist(), y.tolist()):
        length = len(examples[xr[0]].labels)
        assert xr[length:] == [PAD] * (len(xr) - length) and yr[length:] == [-100] * (len(yr) - length)
        out.append((xr[:length], yr[:length]))
    return out


def test_batches_are_padded_on_the_right_to_the_longest_example() -> None:
    examples = tagged(3)
    x, y = pad_batch(examples, PAD)
    assert x.dtype == y.dtype == torch.long
    assert x.tolist() == [[0, PAD, PAD], [1, 1, PAD], [2, 2, 2]]
    assert y.tolist() == [[-100, -100, -100], [-100, 1, -100], [-100, 2, -100]]


def test_a_steps_batch_is_a_function_of_seed_and_step() -> None:
    examples = tagged(10)
    first = InstructionBatches(examples, batch_size=3, seed=5, pad_id=PAD)
    again = InstructionBatches(examples, batch_size=3, seed=5, pad_id=PAD)
    for step in (7, 0, 3, 7):  # out of order, as a resumed run asks
        assert all(torch.equal(a, b) for a, b in zip(first.batch(step), again.batch(step)))
    other = InstructionBatches(examples, batch_size=3, seed=6, pad_id=PAD)
    assert [first.indices(s) for s in range(4)] != [other.indices(s) for s in range(4)]


def test_batches_do_not_depend_on_how_the_global_batch_is_split() -> None:
    examples = tagged(11)

    def step_rows(batch_size: int, world_size: int, accum_steps: int, step: int) -> list:
        batches = InstructionBatches(examples, batch_size, seed=1, pad_id=PAD, world_size=world_size, accum_steps=accum_steps)
        out = []
        for micro in range(accum_steps):
            for rank in range(world_size):
                out += rows(*batches.batch(step, micro, rank), examples)
        return out

    for step in (0, 1, 2, 9):
        whole = step_rows(4, 1, 1, step)
        assert len(whole) == 4
        assert step_rows(2, 1, 2, step) == whole  # two micro-steps of two
        assert step_rows(2, 2, 1, step) == whole  # two processes of two
        assert step_rows(1, 2, 2, step) == whole  # two processes, two micro-steps of one


def test_every_example_is_seen_once_per_epoch_in_a_new_order() -> None:
    examples = tagged(10)
    batches = InstructionBatches(examples, batch_size=2, seed=0, pad_id=PAD, world_size=2)
    steps = batches.steps_for_epochs(3)
    assert steps == 8  # 30 examples in steps of 4: the last step runs 2 into epoch 4
    seen = [
        row[0][0]
        for step in range(steps)
        for rank in range(2)
        for row in rows(*batches.batch(step, 0, rank), examples)
    ]
    # Example k of the run is permutation(k // n)[k % n].
    assert seen[:30] == [i for epoch in range(3) for i in epoch_order(10, seed=0, epoch=epoch).tolist()]
    epochs = [seen[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3
    assert batches.steps_for_epochs(1) == 3 and batches.global_batch == 4


def test_a_micro_step_or_rank_outside_the_run_is_refused() -> None:
    batches = InstructionBatches(tagged(4), batch_size=1, seed=0, pad_id=PAD, world_size=2, accum_steps=2)
    with pytest.raises(DataError) as err:
        batches.batch(0, 0, rank=2)
    assert str(err.value) == "rank 2 is outside the 2 processes of this sampler (0 to 1)"
    with pytest.raises(DataError) as err:
        batches.batch(0, micro_step=2)
    assert str(err.value) == "micro_step 2 is outside the 2 micro-steps of a step (0 to 1)"
    with pytest.raises(DataError) as err:
        InstructionBatches([], batch_size=1, seed=0, pad_id=PAD)
    assert str(err.value) == "no training examples to batch; expected at least one"


def test_validation_batches_cover_each_example_once_the_same_every_call() -> None:
    examples = tagged(7)
    batches = fixed_instruction_batches(examples, batch_size=3, pad_id=PAD)
    assert [x.shape[0] for x, _ in batches] == [3, 3, 1]
    assert [r for x, y in batches for r in rows(x, y, examples)] == [rows(*pad_batch([e], PAD), examples)[0] for e in examples]
    again = fixed_instruction_batches(examples, batch_size=3, pad_id=PAD)
    assert all(torch.equal(a, b) for pair, other in zip(batches, again) for a, b in zip(pair, other))
    shares = [fixed_instruction_batches(examples, batch_size=2, pad_id=PAD, rank=r, world_size=2) for r in range(2)]
    firsts = [row[0][0] for share in shares for x, y in share for row in rows(x, y, examples)]
    assert firsts == list(range(7))


def test_packed_rows_hold_each_example_once_per_epoch_with_its_own_labels() -> None:
    examples = tagged(9)  # 21 inputs in all: 3 rows of 8 per epoch, the last with 3 padding positions
    batches = PackedInstructionBatches(examples, batch_size=2, seed=2, pad_id=PAD, row_length=8, world_size=2)
    assert batches.rows_per_epoch == 3 and batches.steps_for_epochs(2) == 2
    packed_x: list[int] = []
    packed_y: list[int] = []
    for step in range(2):
        for rank in range(2):
            x, y = batches.batch(step, 0, rank)
            assert x.shape == y.shape == (2, 8) and x.dtype == y.dtype == torch.long
            packed_x += x.flatten().tolist()
            packed_y += y.flatten().tolist()
    for epoch in range(2):
        # The epoch's examples in the order drawn for it, end to end, then padding to fill the last row.
        order = epoch_order(9, seed=2, epoch=epoch).tolist()
        stream_x = [t for i in order for t in examples[i].ids[:-1].tolist()] + [PAD] * 3
        stream_y = [t for i in order for t in examples[i].labels.tolist()] + [-100] * 3
        assert packed_x[epoch * 24 : (epoch + 1) * 24] == stream_x
        assert packed_y[epoch * 24 : (epoch + 1) * 24] == stream_y

    def step_rows(batch_size: int, world_size: int, accum_steps: int) -> list[list[int]]:
        split = PackedInstructionBatches(examples, batch_size, 2, PAD, 8, world_size=world_size, accum_steps=accum_steps)
        return [r for m in range(accum_steps) for k in range(world_size) for r in split.batch(1, m, k)[0].tolist()]

    assert step_rows(4, 1, 1) == step_rows(2, 2, 1) == step_rows(1, 2, 2) == step_rows(2, 1, 2)
