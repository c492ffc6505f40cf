"""A corpus of broken training files: each is a 400 that names the line, field and reason, and
nothing is stored (no ``files`` row, no blob, no audit record). docs/reliability.md sums it up.

The files are generated here (the binary ones are a few bytes each), so every case reads as what
it is. Limits are lowered so that "too long" and "too many" cases stay small; the minimum number
of examples is the production default (10).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import AuditRecord, File
from tests.factories import Caller

FILES = "/v1/files"
MAX_EXAMPLES = 50
MAX_LINE_BYTES = 16 * 1024
MAX_EXAMPLE_TOKENS = 8 * 1024
MIN_EXAMPLES = Settings.model_fields["upload_min_examples"].default

USER = {"role": "user", "content": "What is 2 + 2?"}
ASSISTANT = {"role": "assistant", "content": "4."}
SYSTEM = {"role": "system", "content": "Answer briefly."}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        upload_max_examples=MAX_EXAMPLES,
        upload_max_line_bytes=MAX_LINE_BYTES,
        upload_max_example_tokens=MAX_EXAMPLE_TOKENS,
    )


def line(obj: Any, *, ascii_only: bool = True) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode() + b"\n"


def example(*messages: Any, **extra: Any) -> bytes:
    return line({"messages": list(messages), **extra})


GOOD = example(USER, ASSISTANT)
PREFIX = GOOD * MIN_EXAMPLES  # ten good lines, so the broken one is line 11


@dataclass(frozen=True)
class Broken:
    """A broken file and what its error must say: ``line`` None is a whole-file problem."""

    data: bytes
    line: int | None
    reason: str
    field: str | None = None


def after_good(bad: bytes, reason: str, field: str | None = None) -> Broken:
    """Ten good lines, then ``bad`` as line 11."""
    return Broken(PREFIX + bad, MIN_EXAMPLES + 1, reason, field)


CORPUS: dict[str, Broken] = {
    # Not JSON, or JSON that is not an object
    "not_json": after_good(b"this is not json\n", "not valid JSON"),
    "truncated_json": after_good(b'{"messages": [{"role": "user"\n', "not valid JSON"),
    "raw_control_char_in_string": after_good(
        b'{"messages": [{"role": "user", "content": "a\x07b"}]}\n', "not valid JSON"
    ),
    "json_string": after_good(b'"hello"\n', "expected a JSON object, got a string"),
    "json_number": after_good(b"42\n", "expected a JSON object, got a number"),
    "json_null": after_good(b"null\n", "expected a JSON object, got null"),
    "top_level_array": after_good(
        line([{"messages": [USER, ASSISTANT]}]), "expected a JSON object, got a list"
    ),
    "nan_literal": after_good(
        b'{"messages": [{"role": "user", "content": "x"}, '
        b'{"role": "assistant", "content": "y", "weight": NaN}]}\n',
        "NaN is not allowed",
    ),
    "infinity_literal": after_good(
        b'{"messages": [{"role": "assistant", "content": "y", "weight": Infinity}]}\n',
        "Infinity is not allowed",
    ),
    "minus_infinity_literal": after_good(b'{"w": -Infinity}\n', "-Infinity is not allowed"),
    "five_thousand_digit_number": after_good(
        b'{"messages": ' + b"7" * 5000 + b"}\n", "a number is too long"
    ),
    "duplicate_top_level_key": after_good(
        b'{"messages": [], "messages": [{"role": "user", "content": "x"}]}\n',
        "duplicate key 'messages'",
    ),
    "duplicate_key_in_message": after_good(
        b'{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}\n',
        "duplicate key 'role'",
    ),
    "deeply_nested_arrays": after_good(b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    "deeply_nested_objects": after_good(
        b'{"messages": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}\n", "nested too deeply"
    ),
    # The example object
    "messages_missing": after_good(line({}), "missing required key", "messages"),
    "messages_misspelt": after_good(
        line({"message": [USER, ASSISTANT]}), "unsupported key", "message"
    ),
    "messages_not_a_list": after_good(
        line({"messages": USER}), "expected a list of messages, got an object", "messages"
    ),
    "messages_empty": after_good(line({"messages": []}), "at least one message", "messages"),
    "unknown_top_level_key": after_good(
        example(USER, ASSISTANT, prompt="x"), "unsupported key", "prompt"
    ),
    "tools_definition": after_good(
        example(USER, ASSISTANT, tools=[{"type": "function"}]),
        "tool and function definitions are not supported",
        "tools",
    ),
    "control_character_in_key": after_good(
        example(USER, ASSISTANT, **{"bad\u0001key": 1}), "unsupported key", "bad\\x01key"
    ),
    # Messages
    "message_not_an_object": after_good(
        example("hi", ASSISTANT), "expected a JSON object, got a string", "messages[0]"
    ),
    "role_missing": after_good(
        example({"content": "hi"}, ASSISTANT), "missing required key", "messages[0].role"
    ),
    "role_unknown": after_good(
        example({"role": "bot", "content": "hi"}, ASSISTANT), "got 'bot'", "messages[0].role"
    ),
    "role_not_a_string": after_good(
        example({"role": 5, "content": "hi"}, ASSISTANT), "got 5", "messages[0].role"
    ),
    "role_list": after_good(
        example({"role": ["user"], "content": "hi"}, ASSISTANT), "got a list", "messages[0].role"
    ),
    "role_wrong_case": after_good(
        example({"role": "User", "content": "hi"}, ASSISTANT), "got 'User'", "messages[0].role"
    ),
    "role_extremely_long": after_good(
        example({"role": "x" * 5000, "content": "hi"}, ASSISTANT),
        "got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'",
        "messages[0].role",
    ),
    "tool_message": after_good(
        example(USER, {"role": "tool", "content": "42"}, ASSISTANT),
        "tool and function messages are not supported",
        "messages[1].role",
    ),
    "function_message": after_good(
        example(USER, {"role": "function", "content": "42"}, ASSISTANT),
        "tool and function messages are not supported",
        "messages[1].role",
    ),
    "assistant_tool_calls": after_good(
        example(USER, {**ASSISTANT, "tool_calls": [{"id": "call_1", "type": "function"}]}),
        "tool calls are not supported",
        "messages[1].tool_calls",
    ),
    "assistant_function_call": after_good(
        example(USER, {**ASSISTANT, "function_call": {"name": "f", "arguments": "{}"}}),
        "tool calls are not supported",
        "messages[1].function_call",
    ),
    "unknown_message_key": after_good(
        example(USER, {**ASSISTANT, "refusal": None}), "unsupported key", "messages[1].refusal"
    ),
    "content_missing": after_good(
        example({"role": "user"}, ASSISTANT), "missing required key", "messages[0].content"
    ),
    "content_empty": after_good(
        example(USER, {"role": "assistant", "content": ""}),
        "must not be empty",
        "messages[1].content",
    ),
    "content_only_whitespace": after_good(
        example({"role": "user", "content": " \n\t "}, ASSISTANT),
        "must not be empty",
        "messages[0].content",
    ),
    "content_null": after_good(
        example(USER, {"role": "assistant", "content": None}),
        "expected a string, got null",
        "messages[1].content",
    ),
    "content_number": after_good(
        example({"role": "user", "content": 4}, ASSISTANT),
        "expected a string, got a number",
        "messages[0].content",
    ),
    "content_parts_list": after_good(
        example({"role": "user", "content": [{"type": "text", "text": "hi"}]}, ASSISTANT),
        "content parts are not supported",
        "messages[0].content",
    ),
    "content_nul_escape": after_good(
        example({"role": "user", "content": "a\u0000b"}, ASSISTANT),
        "control character (U+0000 at character 2)",
        "messages[0].content",
    ),
    "content_bell_escape": after_good(
        example(USER, {"role": "assistant", "content": "ding\u0007"}),
        "control character (U+0007",
        "messages[1].content",
    ),
    "content_unpaired_surrogate": after_good(
        b'{"messages": [{"role": "user", "content": "\\ud800"}, '
        b'{"role": "assistant", "content": "x"}]}\n',
        "unpaired surrogate (U+D800",
        "messages[0].content",
    ),
    "name_not_a_string": after_good(
        example({**USER, "name": 7}, ASSISTANT), "expected a string", "messages[0].name"
    ),
    "name_too_long": after_good(
        example({**USER, "name": "n" * 65}, ASSISTANT),
        "expected 1 to 64 characters, got 65",
        "messages[0].name",
    ),
    # Turns
    "no_user_turn": after_good(
        example(SYSTEM, ASSISTANT), "needs at least one user message", "messages"
    ),
    "no_assistant_turn": after_good(
        example(SYSTEM, USER), "needs at least one assistant message", "messages"
    ),
    "assistant_first_without_user": after_good(
        example(ASSISTANT, USER, ASSISTANT), "must be from the user", "messages[0].role"
    ),
    "assistant_after_system_without_user": after_good(
        example(SYSTEM, ASSISTANT, USER, ASSISTANT), "must be from the user", "messages[1].role"
    ),
    "last_turn_not_assistant": after_good(
        example(USER, ASSISTANT, USER),
        "last message must be from the assistant",
        "messages[2].role",
    ),
    "system_not_first": after_good(
        example(USER, SYSTEM, ASSISTANT), "only allowed as the first message", "messages[1].role"
    ),
    # Weights (OpenAI's 0/1 on assistant messages is supported)
    "weight_on_user": after_good(
        example({**USER, "weight": 1}, ASSISTANT),
        "only allowed on assistant messages",
        "messages[0].weight",
    ),
    "weight_two": after_good(
        example(USER, {**ASSISTANT, "weight": 2}), "expected 0 or 1, got 2", "messages[1].weight"
    ),
    "weight_string": after_good(
        example(USER, {**ASSISTANT, "weight": "1"}), "got '1'", "messages[1].weight"
    ),
    "weight_boolean": after_good(
        example(USER, {**ASSISTANT, "weight": True}), "got true", "messages[1].weight"
    ),
    "every_weight_zero": after_good(
        example(USER, {**ASSISTANT, "weight": 0}), "nothing would be trained", "messages"
    ),
    # Size
    "enormous_line": after_good(
        example(USER, {"role": "assistant", "content": "x" * MAX_LINE_BYTES}),
        f"longer than the limit of {MAX_LINE_BYTES} bytes",
    ),
    "too_many_tokens": after_good(
        example(USER, {"role": "assistant", "content": "word " * 2000}),
        f"the limit is {MAX_EXAMPLE_TOKENS}",
        "messages",
    ),
    "too_many_tokens_counted_in_bytes": after_good(
        # 3,000 characters, 9,000 UTF-8 bytes: the bound counts bytes.
        line({"messages": [USER, {"role": "assistant", "content": "中" * 3000}]}, ascii_only=False),
        "the example is too long",
        "messages",
    ),
    "too_many_examples": Broken(
        GOOD * (MAX_EXAMPLES + 1),
        MAX_EXAMPLES + 1,
        f"too many examples: the limit is {MAX_EXAMPLES}",
    ),
    "too_few_examples": Broken(
        GOOD * (MIN_EXAMPLES - 1),
        None,
        f"too few examples: {MIN_EXAMPLES - 1}, at least {MIN_EXAMPLES} are needed",
    ),
    "one_example": Broken(GOOD, None, "too few examples: 1"),
    # Empty, binary and badly encoded files
    "empty_file": Broken(b"", None, "the file is empty"),
    "only_a_bom": Broken(codecs.BOM_UTF8, None, "the file is empty"),
    "only_blank_lines": Broken(
        b"\n  \n\t\n\r\n\n", None, "the file contains no examples (only blank lines)"
    ),
    "binary_png": Broken(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", 3, "a NUL byte (byte 9 of the file)"
    ),
    "binary_gzip": Broken(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 1, "this is a binary file"),
    "binary_nul_bytes": Broken(b"\x00" * 64, 1, "this is a binary file"),
    "binary_without_nul_bytes": Broken(b"\xc3\x28\xa0\xa1\xe2\x28\xa1\n", 1, "not valid UTF-8"),
    "invalid_utf8_latin1": after_good(
        '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"),
        "not valid UTF-8 (byte 0xe9",
    ),
    "invalid_utf8_truncated_sequence": after_good(b'{"a": "\xe4\xb8"}\n', "not valid UTF-8"),
    "utf16_file": Broken((GOOD * MIN_EXAMPLES).decode().encode("utf-16"), 1, "the file is UTF-16"),
    "bom_in_the_middle": after_good(codecs.BOM_UTF8 + GOOD, "byte-order mark (BOM)"),
}


def upload(client: TestClient, caller: Caller, data: bytes) -> tuple[int, dict[str, Any]]:
    response = client.post(
        FILES,
        files={"file": ("train.jsonl", data, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=caller.headers,
    )
    return response.status_code, response.json()


def assert_nothing_stored(session: Session, settings: Settings) -> None:
    assert session.scalars(select(File)).all() == []
    assert [p for p in settings.files_dir.rglob("*") if p.is_file()] == []  # temp files too
    actions = session.scalars(select(AuditRecord.action)).all()
    assert "file.created" not in actions


def test_the_corpus_is_large() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_a_broken_file_is_a_400_naming_line_field_and_reason_and_nothing_is_stored(
    client: TestClient, caller: Caller, session: Session, settings: Settings, case: str
) -> None:
    broken = CORPUS[case]
    status, body = upload(client, caller, broken.data)

    assert status == 400, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_file")
    message = error["message"]
    assert message.startswith("Invalid file 'train.jsonl': "), message
    if broken.line is None:  # a whole-file problem: the reason alone
        assert message.startswith(f"Invalid file 'train.jsonl': {broken.reason}"), message
    else:
        where = f"line {broken.line}"
        if broken.field is not None:
            where += f", field {broken.field}"
        assert f"Invalid file 'train.jsonl': {where}: " in message, message
        assert broken.reason in message, message
    assert error["param"] == (broken.field or "file")
    assert len(message) < 1000  # nothing huge (a 5,000-character role) is echoed back
    assert_nothing_stored(session, settings)


ACCEPTED: dict[str, bytes] = {
    "last_line_without_newline": PREFIX + GOOD.rstrip(b"\n"),
    "crlf_line_endings": (PREFIX + GOOD).replace(b"\n", b"\r\n"),
    "bom_at_the_start": codecs.BOM_UTF8 + PREFIX,
    "blank_lines_between_examples": GOOD + b"\n   \n" + PREFIX + b"\n\n",
    "system_prompt_and_several_turns": PREFIX + example(SYSTEM, USER, ASSISTANT, USER, ASSISTANT),
    "weights_zero_and_one": PREFIX
    + example(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1}),
    "message_name": PREFIX + example({**USER, "name": "ann"}, ASSISTANT),
    "tabs_newlines_and_non_ascii": PREFIX
    + line(
        {"messages": [{"role": "user", "content": "Ça va?\n\tOui 🙂 中文"}, ASSISTANT]},
        ascii_only=False,
    ),
    "exactly_the_most_examples": GOOD * MAX_EXAMPLES,
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_tolerated_quirks_are_accepted(
    client: TestClient, caller: Caller, session: Session, case: str
) -> None:
    status, body = upload(client, caller, ACCEPTED[case])
    assert status == 200, body
    assert session.get(File, body["id"]) is not None


def test_every_broken_line_is_reported_not_just_the_first(
    client: TestClient, caller: Caller, session: Session, settings: Settings
) -> None:
    data = GOOD * 2 + b"oops\n" + GOOD + line({"messages": []}) + PREFIX + example(USER)
    status, body = upload(client, caller, data)

    assert status == 400
    error = body["error"]
    assert error["message"] == (
        "Invalid file 'train.jsonl': 3 problems: "
        "line 3: not valid JSON: Expecting value (column 1); "
        "line 5, field messages: expected at least one message, got an empty list; "
        "line 16, field messages: needs at least one assistant message"
    )
    assert error["param"] == "file"  # the first problem has no field
    assert_nothing_stored(session, settings)


def test_reporting_stops_at_twenty_problems(client: TestClient, caller: Caller) -> None:
    status, body = upload(client, caller, b"x\n" * 30)

    assert status == 400
    message = body["error"]["message"]
    assert "the first 20 problems" in message
    assert "line 20: not valid JSON" in message and "line 21" not in message


def test_the_token_bound_is_at_least_the_byte_count_and_accepts_what_fits(
    client: TestClient, caller: Caller
) -> None:
    # 64 per example + (4 + 14 + 8) for the user turn + (9 + n + 8) for the assistant's.
    fits = MAX_EXAMPLE_TOKENS - 64 - (4 + len(USER["content"]) + 8) - (9 + 8)
    just_fits = example(USER, {"role": "assistant", "content": "x" * fits})
    one_over = example(USER, {"role": "assistant", "content": "x" * (fits + 1)})

    assert upload(client, caller, PREFIX + just_fits)[0] == 200
    status, body = upload(client, caller, PREFIX + one_over)
    assert status == 400
    assert f"up to {MAX_EXAMPLE_TOKENS + 1} tokens" in body["error"]["message"]
