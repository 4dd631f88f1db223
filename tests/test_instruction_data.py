"""Instruction data: reading Alpaca and chat files, the train/val split.

Expected values come from outside the code under test: records written out by
hand and error messages in full.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptkit import DataError
from gptkit.data.instruction import AlpacaFields, Example, Message, split_examples
from gptkit.data.instruction_files import read_examples

EOT_TEXT = "<|endoftext|>"


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
