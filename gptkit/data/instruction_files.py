"""Reading instruction examples from a file: Alpaca records or chat conversations.

Two layouts, told apart by the first character that is not white space:

- a JSON array (``[``) of records, as Stanford Alpaca and Raschka's chapter 7 ship them;
- JSON lines: one record per line (blank lines are skipped).

Each record is either Alpaca-style, ``{"instruction": ..., "input": ..., "output": ...}``
(``input`` optional), or a chat conversation, ``{"messages": [{"role": ..., "content": ...}, ...]}``
with roles system, user and assistant; a file may mix the two. Other keys of a record
are ignored, since published datasets carry ids and categories beside the text.

Reading is strict: the first problem stops it with one line naming the file and where
in it, "line N" (1-based, as an editor counts) for JSON lines and "record N" (1-based)
for an array; a message inside a conversation is ``messages[i]`` (0-based, as JSON
paths index). The whole file is read into memory: instruction sets are megabytes,
not the gigabytes a pretraining corpus is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptkit.data.instruction import ROLES, Example, Message
from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import DataError

EXPECTED_LAYOUT = "a JSON array of Alpaca records or JSON lines of Alpaca or chat records"


def read_examples(path: str | Path) -> list[Example]:
    """Every example in `path`, in file order."""
    path = Path(path)
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path} is empty; expected {EXPECTED_LAYOUT}")
    if text.lstrip().startswith("["):
        examples = [parse_record(value, f"{path} record {i}") for i, value in enumerate(load_array(path, text), 1)]
        if not examples:
            raise DataError(f"{path} holds an empty JSON array; expected at least one example")
        return examples
    return [parse_record(load_line(path, n, line), f"{path} line {n}") for n, line in numbered_lines(text)]


def read_utf8(path: Path, what: str = "instruction data file", expected: str = EXPECTED_LAYOUT) -> str:
    """The file's text; `what` and `expected` word the messages for the kind of data it should hold."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; expected {expected}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(f"{path} line {line}: not valid UTF-8 (byte 0x{bad} at byte offset {exc.start})") from None
    # Editors on Windows write a byte-order mark, which JSON does not allow.
    return text.removeprefix("\ufeff")


def numbered_lines(text: str) -> list[tuple[int, str]]:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other
    # characters that splitlines() would break a record at.
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def load_array(path: Path, text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, list):  # "[" then something that still parsed: impossible, but cheap to say
        raise DataError(f"{path}: expected {EXPECTED_LAYOUT}, got {json_type(value)}")
    return value


def load_line(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} line {n}: not valid JSON ({err.msg} at column {err.colno}); expected one JSON object per line"
        ) from None


def json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):  # before int: True is an int to Python
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def parse_record(value: Any, where: str) -> Example:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {json_type(value)}")
    if "messages" in value:
        return chat_record(value, where)
    if "instruction" in value:
        return alpaca_record(value, where)
    raise DataError(f"{where}: missing field 'instruction' (an Alpaca record) or 'messages' (a chat record)")


def text_field(record: dict[str, Any], key: str, where: str, label: str | None = None) -> str:
    """`record[key]` as a string; `label` is how the message names the field (default `key`)."""
    label = label or key
    if key not in record:
        raise DataError(f"{where}: missing field '{label}'")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{label}' is {json_type(value)}, expected a string")
    # The marker is what ends every response in training; one inside the text
    # would teach the model to stop there (or, in a prompt, start a new document).
    if ENDOFTEXT in value:
        raise DataError(f"{where}: field '{label}' contains '{ENDOFTEXT}', which marks the end of each response; remove it")
    return value


def alpaca_record(record: dict[str, Any], where: str) -> Example:
    instruction = text_field(record, "instruction", where)
    if "output" not in record:
        raise DataError(f"{where}: missing field 'output'; an Alpaca record has 'instruction', 'output' and optionally 'input'")
    output = text_field(record, "output", where)
    given_input = text_field(record, "input", where) if "input" in record else ""
    return Example.from_alpaca(instruction, given_input, output, source=where)


def chat_record(record: dict[str, Any], where: str) -> Example:
    turns = record["messages"]
    if not isinstance(turns, list):
        raise DataError(f"{where}: field 'messages' is {json_type(turns)}, expected an array of messages")
    messages = []
    for i, turn in enumerate(turns):
        at = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {at} is {json_type(turn)}, expected an object with 'role' and 'content'")
        role = text_field(turn, "role", where, f"{at}.role")
        if role not in ROLES:
            raise DataError(f"{where}: {at}.role is '{role}'; expected 'system', 'user' or 'assistant'")
        messages.append(Message(role, text_field(turn, "content", where, f"{at}.content")))
    if not any(m.role == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so there is nothing to train on")
    return Example(tuple(messages), source=where)
