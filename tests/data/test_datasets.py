"""contracts (chat, prompts, jsonl, text): prompt files, chat uploads, the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.chat import Message, conversation_as_dict, load_chat_jsonl, validate_chat_bytes
from contracts.jsonl import DatasetError
from contracts.prompts import load_prompts, parse_prompts_bytes
from contracts.text import conversation_prompt_texts, normalize_prompt, token_jaccard

GOOD = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def with_messages(*messages: object) -> bytes:
    return line({"messages": list(messages)})


USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello."}


def check(data: bytes, *, line: int | None, field: str | None, reason: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        validate_chat_bytes(data, "train.jsonl")
    error = info.value
    assert (error.path, error.line, error.field) == ("train.jsonl", line, field), str(error)
    assert reason in error.reason, str(error)
    return error


# --- chat data: accepted input ----------------------------------------------------------------


def test_valid_file_parses_to_messages() -> None:
    weighted = {
        "messages": [
            USER,
            {"role": "assistant", "content": "draft", "weight": 0},
            {"role": "user", "content": "again", "name": "ann"},
            {"role": "assistant", "content": "final", "weight": 1},
        ]
    }
    conversations = validate_chat_bytes(line(GOOD) + line(weighted), "train.jsonl")
    assert len(conversations) == 2
    assert conversations[0][0] == Message("system", "You are terse.")
    assert [m.weight for m in conversations[1]] == [None, 0, None, 1]
    assert [m.trained for m in conversations[1]] == [False, False, False, True]
    assert conversation_prompt_texts(conversations[1]) == ["Hi", "again"]
    assert conversation_as_dict(conversations[0]) == GOOD


def test_bom_crlf_and_blank_lines_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + line(GOOD).replace(b"\n", b"\r\n") + b"\n   \n" + line(GOOD) + b"\n\n"
    assert len(validate_chat_bytes(data, "train.jsonl")) == 2


def test_line_numbers_count_skipped_blank_lines() -> None:
    data = line(GOOD) + b"\n\n" + b"{oops\n"
    check(data, line=4, field=None, reason="not valid JSON")


def test_load_chat_jsonl_reads_paths_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(line(GOOD) * 3)
    assert len(load_chat_jsonl(path)) == 3
    assert len(load_chat_jsonl(str(path))) == 3
    lines = ["\ufeff" + json.dumps(GOOD), "", json.dumps(GOOD) + "\n"]
    assert len(load_chat_jsonl(lines)) == 2
    with pytest.raises(DatasetError) as info:
        load_chat_jsonl([json.dumps(GOOD), "[]"], name="upload.jsonl")
    assert str(info.value) == "upload.jsonl, line 2: expected a JSON object, got a list"


# --- chat data: each broken case names line and field -------------------------------------------


def test_error_message_format() -> None:
    bad = with_messages(USER, {"role": "bot", "content": "x"})
    error = check(line(GOOD) * 6 + bad, line=7, field="messages[1].role", reason="got 'bot'")
    assert str(error) == (
        "train.jsonl, line 7, field messages[1].role: "
        "expected one of system, user, assistant, got 'bot'"
    )
    assert isinstance(error, ValueError)
    assert error.as_dict() == {
        "path": "train.jsonl",
        "line": 7,
        "field": "messages[1].role",
        "reason": "expected one of system, user, assistant, got 'bot'",
    }


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"{not json}\n", None, "not valid JSON"),
        (b'{"messages": [}\n', None, "not valid JSON"),
        (b"[1, 2]\n", None, "expected a JSON object, got a list"),
        (b'"text"\n', None, "expected a JSON object, got a string"),
        (line({}), "messages", "missing required key"),
        (line({"messages": "hi"}), "messages", "expected a list of messages, got a string"),
        (line({"messages": []}), "messages", "at least one message"),
        (line({**GOOD, "tools": []}), "tools", "unsupported key"),
        (with_messages(USER, ASSISTANT, "x"), "messages[2]", "expected a JSON object"),
        (with_messages({"content": "Hi"}, ASSISTANT), "messages[0].role", "missing required key"),
        (with_messages(USER, {"role": "tool", "content": "x"}), "messages[1].role", "got 'tool'"),
        (with_messages({"role": 5, "content": "x"}, ASSISTANT), "messages[0].role", "got 5"),
        (with_messages({"role": "user"}, ASSISTANT), "messages[0].content", "missing required"),
        (
            with_messages(USER, {"role": "assistant", "content": [{"type": "text"}]}),
            "messages[1].content",
            "expected a string, got a list",
        ),
        (
            with_messages(USER, {"role": "assistant", "content": None}),
            "messages[1].content",
            "expected a string, got null",
        ),
        (
            with_messages(USER, {"role": "assistant", "content": "  \n"}),
            "messages[1].content",
            "must not be empty",
        ),
        (
            with_messages(USER, {"role": "system", "content": "x"}, ASSISTANT),
            "messages[1].role",
            "only allowed as the first message",
        ),
        (with_messages(USER, ASSISTANT, USER), "messages[2].role", "last message must be from"),
        (
            with_messages({"role": "system", "content": "x"}, ASSISTANT),
            "messages",
            "at least one user message",
        ),
        (with_messages(USER), "messages", "at least one assistant message"),
        (
            with_messages({**USER, "weight": 1}, ASSISTANT),
            "messages[0].weight",
            "only allowed on assistant messages",
        ),
        (with_messages(USER, {**ASSISTANT, "weight": 2}), "messages[1].weight", "got 2"),
        (with_messages(USER, {**ASSISTANT, "weight": 0.5}), "messages[1].weight", "got 0.5"),
        (with_messages(USER, {**ASSISTANT, "weight": True}), "messages[1].weight", "got true"),
        (with_messages(USER, {**ASSISTANT, "weight": 0}), "messages", "nothing would be trained"),
        (
            with_messages(USER, {**ASSISTANT, "tool_calls": []}),
            "messages[1].tool_calls",
            "unsupported key",
        ),
        (with_messages({**USER, "name": 3}, ASSISTANT), "messages[0].name", "expected a string"),
        (
            b'{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}\n',
            None,
            "duplicate key 'role'",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}, '
            b'{"role": "assistant", "content": "y", "weight": NaN}]}\n',
            None,
            "NaN is not allowed",
        ),
        (b"[" * 100_000 + b"\n", None, "not valid JSON"),
    ],
)
def test_broken_line_is_reported_with_line_and_field(
    data: bytes, field: str | None, reason: str
) -> None:
    # Two good lines first, so the reported line number (3) is not trivially 1.
    check(line(GOOD) * 2 + data, line=3, field=field, reason=reason)


def test_bom_is_only_accepted_at_the_start() -> None:
    data = line(GOOD) + b"\xef\xbb\xbf" + line(GOOD)
    check(data, line=2, field=None, reason="byte-order mark (BOM) is only allowed at the start")


def test_bad_utf8_names_the_line() -> None:
    data = line(GOOD) + line(GOOD) + '{"messages": "caf\u00e9"}\n'.encode("latin-1")
    check(data, line=3, field=None, reason="not valid UTF-8")


def test_utf16_file_is_rejected_as_not_utf8() -> None:
    check(json.dumps(GOOD).encode("utf-16"), line=1, field=None, reason="not valid UTF-8")


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file_is_rejected(data: bytes) -> None:
    check(data, line=None, field=None, reason="no examples")


def test_limits() -> None:
    with pytest.raises(DatasetError) as info:
        validate_chat_bytes(line(GOOD) * 4, "train.jsonl", max_examples=3)
    assert (info.value.line, info.value.field) == (4, None)
    assert "limit is 3" in info.value.reason

    long_line = with_messages(USER, {"role": "assistant", "content": "x" * 500})
    with pytest.raises(DatasetError) as info:
        validate_chat_bytes(line(GOOD) + long_line, "train.jsonl", max_line_bytes=300)
    assert info.value.line == 2
    assert "limit of 300 bytes" in info.value.reason
    assert len(validate_chat_bytes(line(GOOD) * 4, "t.jsonl", max_examples=4)) == 4


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_chat_jsonl(tmp_path / "missing.jsonl")
    assert info.value.line is None
    assert "cannot read" in info.value.reason


# --- prompt files ---------------------------------------------------------------------------


def test_txt_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xef\xbb\xbf  How do I bake bread?  \n\nWhat is 2 plus 2?\r\n")
    prompts = load_prompts(path)
    assert [(p.id, p.prompt) for p in prompts] == [
        ("line-1", "How do I bake bread?"),
        ("line-3", "What is 2 plus 2?"),
    ]
    assert prompts[0].category is None and prompts[0].answers == ()


def test_jsonl_prompts_with_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "g-1", "prompt": "What is 7 plus 5?", "answers": ["12", "twelve"]},
        {"prompt": "Refuse me", "category": "malware", "refusal": "I can't.", "kind": None},
        {"prompt": "Why is the sky blue?", "kind": "explain", "extra": 1},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    first, second, third = load_prompts(path)
    assert first.id == "g-1" and first.answers == ("12", "twelve")
    assert (second.id, second.category, second.refusal, second.kind) == (
        "line-2",
        "malware",
        "I can't.",
        None,
    )
    assert third.kind == "explain"


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"nope\n", None, "not valid JSON"),
        (b"[]\n", None, "expected a JSON object, got a list"),
        (line({"id": "x"}), "prompt", "missing required key"),
        (line({"prompt": ""}), "prompt", "must not be empty"),
        (line({"prompt": 3}), "prompt", "expected a string, got a number"),
        (line({"prompt": "ok", "id": ""}), "id", "must not be empty"),
        (line({"prompt": "ok", "id": "a-1"}), "id", "duplicate id 'a-1' (first used on line 1)"),
        (line({"prompt": "ok", "answers": "12"}), "answers", "expected a list of strings"),
        (line({"prompt": "ok", "answers": ["12", 12]}), "answers[1]", "got 12"),
        (line({"prompt": "ok", "category": ["a"]}), "category", "expected a string, got a list"),
        (b'{"prompt": "a", "prompt": "b"}\n', None, "duplicate key 'prompt'"),
        (b'{"prompt": "caf\xe9"}\n', None, "not valid UTF-8"),
    ],
)
def test_broken_prompt_line(data: bytes, field: str | None, reason: str) -> None:
    good = line({"id": "a-1", "prompt": "first"})
    with pytest.raises(DatasetError) as info:
        parse_prompts_bytes(good + b"\n" + data, "eval.jsonl")
    error = info.value
    assert (error.path, error.line, error.field) == ("eval.jsonl", 3, field), str(error)
    assert reason in error.reason, str(error)


@pytest.mark.parametrize(
    ("filename", "data", "reason"),
    [
        ("eval.jsonl", b"", "no prompts"),
        ("eval.txt", b"\n \n", "no prompts"),
        ("eval.csv", b"a,b\n", "unsupported file type '.csv'"),
        ("eval", b"x\n", "unsupported file type (none)"),
    ],
)
def test_prompt_file_level_errors(filename: str, data: bytes, reason: str) -> None:
    with pytest.raises(DatasetError) as info:
        parse_prompts_bytes(data, filename)
    assert info.value.line is None
    assert reason in info.value.reason


def test_bad_utf8_in_txt(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"fine\n\xff\xfe bad\n")
    with pytest.raises(DatasetError) as info:
        load_prompts(path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}, line 2: not valid UTF-8")


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How do I kill a Python process?", "how do i kill a python process"),
        ("  Can't   STOP\u2014now!! ", "cant stop now"),
        ("What\u2019s the e-mail?", "whats the e mail"),
        ("Stra\u00dfe \uff21", "strasse a"),
        ("$50,000 + 5%", "50 000 5"),
    ],
)
def test_normalize_prompt(text: str, expected: str) -> None:
    assert normalize_prompt(text) == expected


def test_token_jaccard() -> None:
    assert token_jaccard("How do I kill a process?", "how do I KILL a process") == 1.0
    assert token_jaccard("a b", "c d") == 0.0
    assert token_jaccard("a b c d", "a b c e") == pytest.approx(3 / 5)
