"""Chat fine-tuning data (OpenAI's chat JSONL format): its messages, limits and validation.

The API validates customer uploads with `validate_chat_bytes` and the workers read training files
with `load_chat_jsonl`; both check a file to the end (up to ``max_errors`` problems, one per line),
so a customer can fix every broken line in one go; ``DatasetError.problems`` holds them all.
How lines are read (encoding, byte-order marks, strict JSON) is `contracts.jsonl`.

Choices that a customer may trip over, made once here (docs/reliability.md, "Hostile input"):
- Blank (whitespace-only) lines are skipped anywhere in the file; line numbers still count them.
- Keys we do not understand are rejected rather than silently ignored: a ``tools`` key or a
  ``tool`` role means the customer expects behaviour this service does not train, and a misspelt
  key would otherwise train on nothing.
- Text may not contain C0 control characters other than tab, newline and carriage return, nor
  unpaired surrogates (``"\\ud800"``): they are corruption, not language, and a tokenizer or
  PostgreSQL would choke on them later.
- An example's length is bounded without a tokenizer: ``example_token_bound`` counts the UTF-8
  bytes of its text plus a fixed allowance per message and per example. Byte-level BPE tokenizers
  (GPT-2, Llama 3, Qwen, SmolLM2) never produce more tokens than bytes, so the bound is an upper
  bound: an accepted example is certain to fit ``max_example_tokens``.

The ``DEFAULT_MAX_*`` limits are the one default of each upload limit: ``app.core.settings``
reads them (``SAFEPATCH_UPLOAD_MAX_*``).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from contracts.jsonl import (
    DatasetError,
    PathLike,
    byte_lines,
    describe_json,
    json_key,
    json_type,
    line_text,
    parse_json_object,
    read_bytes,
    str_lines,
)

ROLES: tuple[str, ...] = ("system", "user", "assistant")
MESSAGE_KEYS: tuple[str, ...] = ("role", "content", "weight", "name")
# Keys of OpenAI's tool-calling format: named in the error so the customer knows why.
TOOL_EXAMPLE_KEYS = frozenset({"tools", "functions", "parallel_tool_calls"})
TOOL_MESSAGE_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id"})
TOOL_ROLES = frozenset({"tool", "function"})
MAX_NAME_CHARS = 64  # OpenAI's limit for a message's ``name``

DEFAULT_MAX_EXAMPLES = 100_000
DEFAULT_MAX_LINE_BYTES = 1_000_000
DEFAULT_MAX_EXAMPLE_TOKENS = 32_768
DEFAULT_MAX_ERRORS = 20
# The token bound's allowances: a chat template spends a few tokens per message on role markers
# (ChatML: "<|im_start|>", the role, "\n", "<|im_end|>", "\n") and may add a default system prompt
# and BOS/EOS tokens once per example (SmolLM2's default system prompt is about 20 tokens).
MESSAGE_OVERHEAD_TOKENS = 8
EXAMPLE_OVERHEAD_TOKENS = 64

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    # None: not given (assistant messages are trained by default); 0/1 only on assistant messages.
    weight: int | None = None

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and self.weight != 0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"role": self.role, "content": self.content}
        if self.weight is not None:
            out["weight"] = self.weight
        return out


Conversation: TypeAlias = tuple[Message, ...]


@dataclass(frozen=True)
class ChatLimits:
    """What one chat file may hold; ``None`` is no limit."""

    max_examples: int | None = None
    min_examples: int = 1
    max_line_bytes: int | None = None
    max_example_tokens: int | None = None
    max_errors: int = DEFAULT_MAX_ERRORS


def conversation_as_dict(conversation: Conversation) -> dict[str, object]:
    """One JSONL line's object: ``{"messages": [...]}``."""
    return {"messages": [message.as_dict() for message in conversation]}


def example_token_bound(messages: Iterable[Message]) -> int:
    """An upper bound on an example's tokens for a byte-level BPE tokenizer, without one.

    Each such token covers at least one byte of text, so the UTF-8 bytes of every role and content
    bound the text's tokens; the chat template's markers are the per-message and per-example
    allowances. For English the real count is about a quarter of this.
    """
    return EXAMPLE_OVERHEAD_TOKENS + sum(
        len(message.role) + len(message.content.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS
        for message in messages
    )


def load_chat_jsonl(
    source: PathLike | Iterable[str],
    *,
    name: str | None = None,
    max_examples: int | None = None,
    max_line_bytes: int | None = None,
) -> list[Conversation]:
    """Read and validate chat fine-tuning data from a file path or from lines of text.

    A ``str`` or path object is a file path; to validate text held in memory pass its lines
    (``text.splitlines()``). ``name`` is the file name used in errors (default: the path, or
    ``<lines>``).
    """
    if isinstance(source, str | os.PathLike):
        return validate_chat_bytes(
            read_bytes(source),
            name or str(source),
            max_examples=max_examples,
            max_line_bytes=max_line_bytes,
            max_example_tokens=None,
        )
    limits = ChatLimits(max_examples=max_examples, max_line_bytes=max_line_bytes)
    return _conversations(str_lines(source), name or "<lines>", limits)


def validate_chat_bytes(
    data: bytes,
    filename: str,
    *,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
    min_examples: int = 1,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
    max_example_tokens: int | None = DEFAULT_MAX_EXAMPLE_TOKENS,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> list[Conversation]:
    """Validate an uploaded chat JSONL file; raise one DatasetError listing what is wrong."""
    limits = ChatLimits(
        max_examples=max_examples,
        min_examples=min_examples,
        max_line_bytes=max_line_bytes,
        max_example_tokens=max_example_tokens,
        max_errors=max_errors,
    )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if not data:
        raise DatasetError(filename, "the file is empty: it contains no examples")
    _check_text_file(data, filename)
    return _conversations(byte_lines(data), filename, limits)


def _check_text_file(data: bytes, name: str) -> None:
    """UTF-16 and binary files fail as a whole, not with a problem on every "line"."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DatasetError(
            name,
            "not valid UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
            "save it as UTF-8",
            line=1,
        )
    nul = data.find(b"\x00")
    if nul != -1:  # JSON text never holds a raw NUL byte; binary files nearly always do
        raise DatasetError(
            name,
            f"a NUL byte (byte {nul + 1} of the file): this is a binary file, not UTF-8 JSON lines",
            line=data.count(b"\n", 0, nul) + 1,
        )


def _conversations(
    lines: Iterable[tuple[int, bytes | str]], name: str, limits: ChatLimits
) -> list[Conversation]:
    """Check every line, collecting one problem per broken line, up to ``limits.max_errors``."""
    conversations: list[Conversation] = []
    problems: list[DatasetError] = []
    examples = 0  # non-blank lines, valid or not
    for lineno, raw in lines:
        try:
            text = line_text(raw, name, lineno, limits.max_line_bytes)
            if not text.strip():
                continue
            examples += 1
            if limits.max_examples is not None and examples > limits.max_examples:
                reason = f"too many examples: the limit is {limits.max_examples}"
                problems.append(DatasetError(name, reason, line=lineno))
                break
            obj = parse_json_object(text, name, lineno)
            conversations.append(_conversation(obj, name, lineno, limits.max_example_tokens))
        except DatasetError as problem:
            problems.append(problem)
            if len(problems) >= limits.max_errors:
                raise DatasetError.collected(problems, truncated=True) from None
    if problems:
        raise DatasetError.collected(problems, truncated=False)
    if examples == 0:
        raise DatasetError(name, "the file contains no examples (only blank lines)")
    if len(conversations) < limits.min_examples:
        raise DatasetError(
            name,
            f"too few examples: {len(conversations)}, at least {limits.min_examples} are needed",
        )
    return conversations


# One line's checks. Each raises at the line's first problem: later problems on the same line
# would mostly be echoes of it.

_Fail = Callable[[str, str | None], DatasetError]
# C0 controls except tab, LF and CR; DEL; unpaired UTF-16 surrogates (JSON "\ud800" escapes).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _conversation(
    obj: dict[str, object], name: str, lineno: int, max_tokens: int | None
) -> Conversation:
    def fail(reason: str, field: str | None) -> DatasetError:
        return DatasetError(name, reason, line=lineno, field=field)

    raw_messages = _messages_list(obj, fail)
    messages = tuple(_message(raw, index, fail) for index, raw in enumerate(raw_messages))
    _check_turns(messages, fail)
    if max_tokens is not None and (bound := example_token_bound(messages)) > max_tokens:
        raise fail(
            f"the example is too long: up to {bound} tokens by our count (UTF-8 bytes of the "
            f"text, plus {MESSAGE_OVERHEAD_TOKENS} per message and {EXAMPLE_OVERHEAD_TOKENS} per "
            f"example), the limit is {max_tokens}",
            "messages",
        )
    return messages


def _messages_list(obj: dict[str, object], fail: _Fail) -> list[object]:
    for key in obj:
        if key in TOOL_EXAMPLE_KEYS:
            raise fail(
                "unsupported key: tool and function definitions are not supported "
                "(this service fine-tunes on chat text only)",
                json_key(key),
            )
        if key != "messages":
            raise fail("unsupported key: each line must hold only a 'messages' list", json_key(key))
    if "messages" not in obj:
        raise fail("missing required key", "messages")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise fail(f"expected a list of messages, got {json_type(raw_messages)}", "messages")
    if not raw_messages:
        raise fail("expected at least one message, got an empty list", "messages")
    return raw_messages


def _message(raw: object, index: int, fail: _Fail) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {json_type(raw)}", where)
    for key in raw:
        if key in TOOL_MESSAGE_KEYS:
            raise fail(
                "unsupported key: tool calls are not supported "
                "(this service fine-tunes on chat text only)",
                f"{where}.{json_key(key)}",
            )
        if key not in MESSAGE_KEYS:
            raise fail(
                f"unsupported key (allowed: {', '.join(MESSAGE_KEYS)})", f"{where}.{json_key(key)}"
            )
    role = _role(raw, index, fail)
    content = _content(raw, where, fail)
    if "name" in raw:
        _name(raw["name"], f"{where}.name", fail)
    weight = _weight(raw, role, where, fail) if "weight" in raw else None
    return Message(role=role, content=content, weight=weight)


def _role(raw: dict[str, object], index: int, fail: _Fail) -> Role:
    field = f"messages[{index}].role"
    if "role" not in raw:
        raise fail("missing required key", field)
    role = raw["role"]
    if role == "system" and index != 0:
        raise fail("a system message is only allowed as the first message", field)
    if role == "system" or role == "user" or role == "assistant":
        return role
    tool = isinstance(role, str) and role in TOOL_ROLES
    hint = " (tool and function messages are not supported)" if tool else ""
    raise fail(f"expected one of {', '.join(ROLES)}, got {describe_json(role)}{hint}", field)


def _content(raw: dict[str, object], where: str, fail: _Fail) -> str:
    field = f"{where}.content"
    if "content" not in raw:
        raise fail("missing required key", field)
    content = raw["content"]
    if isinstance(content, list):
        raise fail(
            "expected a string, got a list (content parts are not supported: "
            "give the message's text as one string)",
            field,
        )
    if not isinstance(content, str):
        raise fail(f"expected a string, got {json_type(content)}", field)
    if not content.strip():
        raise fail("must not be empty", field)
    _check_chars(content, field, fail)
    return content


def _name(value: object, field: str, fail: _Fail) -> None:
    if not isinstance(value, str):
        raise fail(f"expected a string, got {json_type(value)}", field)
    if not value.strip() or len(value) > MAX_NAME_CHARS:
        raise fail(f"expected 1 to {MAX_NAME_CHARS} characters, got {len(value)}", field)
    _check_chars(value, field, fail)


def _weight(raw: dict[str, object], role: Role, where: str, fail: _Fail) -> int:
    field = f"{where}.weight"
    if role != "assistant":
        raise fail("weight is only allowed on assistant messages", field)
    value = raw["weight"]
    # bool is an int subclass; JSON true/false is not a valid weight.
    if isinstance(value, bool) or value not in (0, 1):
        raise fail(f"expected 0 or 1, got {describe_json(value)}", field)
    return int(value)  # 0, 1, 0.0 or 1.0 here


def _check_chars(text: str, field: str, fail: _Fail) -> None:
    match = _BAD_CHARS.search(text)
    if match is None:
        return
    char = match.group()
    where = f"U+{ord(char):04X} at character {match.start() + 1}"
    if "\ud800" <= char <= "\udfff":
        raise fail(f"contains an unpaired surrogate ({where}): not valid Unicode", field)
    raise fail(
        f"contains a control character ({where}); "
        "of those only tab, newline and carriage return are allowed",
        field,
    )


def _check_turns(messages: Sequence[Message], fail: _Fail) -> None:
    roles = [message.role for message in messages]
    if "user" not in roles:
        raise fail("needs at least one user message", "messages")
    if "assistant" not in roles:
        raise fail("needs at least one assistant message", "messages")
    first = 1 if roles[0] == "system" else 0
    if roles[first] != "user":
        raise fail(
            f"the first message after any system message must be from the user, "
            f"got {roles[first]!r}",
            f"messages[{first}].role",
        )
    if roles[-1] != "assistant":
        raise fail(
            f"the last message must be from the assistant, got {roles[-1]!r}",
            f"messages[{len(roles) - 1}].role",
        )
    if not any(message.trained for message in messages):
        raise fail("every assistant message has weight 0, so nothing would be trained", "messages")
