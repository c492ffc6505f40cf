"""Torch-free loaders and validators for prompt files and chat fine-tuning data.

The HTTP API imports this module to validate customer uploads, so it uses only the standard library
and reports every problem as one `DatasetError` that names the file, the 1-based line and the field,
for example ``train.jsonl, line 7, field messages[1].role: expected one of system, user, assistant,
got 'bot'``.

Choices that a customer may trip over, made once here:
- A UTF-8 byte-order mark at the very start of a file is accepted and dropped (editors on Windows
  add one); anywhere else it is an error. Any other encoding is rejected.
- Blank (whitespace-only) lines are skipped anywhere in the file; line numbers still count them.
- Duplicate keys in one JSON object, NaN/Infinity, and keys we do not understand are rejected rather
  than silently ignored: a ``tools`` key or a ``tool`` role means the customer expects behaviour
  this service does not train.
"""

from __future__ import annotations

import codecs
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

ROLES: tuple[str, ...] = ("system", "user", "assistant")
MESSAGE_KEYS: tuple[str, ...] = ("role", "content", "weight", "name")
DEFAULT_MAX_EXAMPLES = 100_000
DEFAULT_MAX_LINE_BYTES = 1_000_000

Role = Literal["system", "user", "assistant"]
PathLike: TypeAlias = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset problem located by file, 1-based line (None: the whole file) and field."""

    def __init__(
        self,
        path: PathLike,
        reason: str,
        *,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = [self.path]
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {reason}")

    def as_dict(self) -> dict[str, str | int | None]:
        """The error as a JSON-ready mapping (the API's error body)."""
        return {"path": self.path, "line": self.line, "field": self.field, "reason": self.reason}


# ---------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    category: str | None = None
    answers: tuple[str, ...] = ()
    refusal: str | None = None
    kind: str | None = None


def load_prompts(path: PathLike) -> list[Prompt]:
    """Read prompts from a ``.txt`` file (one per non-blank line) or a ``.jsonl`` file."""
    data = _read_bytes(path)
    return parse_prompts_bytes(data, str(path))


def parse_prompts_bytes(data: bytes, filename: str) -> list[Prompt]:
    """Parse prompt-file bytes; the format follows the suffix of ``filename``."""
    suffix = Path(filename).suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        shown = repr(suffix) if suffix else "(none)"
        raise DatasetError(filename, f"unsupported file type {shown}: expected .txt or .jsonl")
    lines = _decode_lines(data, filename, max_line_bytes=None)
    prompts = _txt_prompts(lines) if suffix == ".txt" else _jsonl_prompts(lines, filename)
    if not prompts:
        raise DatasetError(filename, "the file contains no prompts")
    return prompts


def _txt_prompts(lines: Iterable[tuple[int, str]]) -> list[Prompt]:
    return [
        Prompt(id=f"line-{lineno}", prompt=text.strip()) for lineno, text in lines if text.strip()
    ]


def _jsonl_prompts(lines: Iterable[tuple[int, str]], name: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    first_line_of_id: dict[str, int] = {}
    for lineno, text in lines:
        if not text.strip():
            continue
        obj = _parse_json_object(text, name, lineno)
        prompt = _required_text(obj, "prompt", name, lineno)
        prompt_id = _optional_text(obj, "id", name, lineno) or f"line-{lineno}"
        if prompt_id in first_line_of_id:
            raise DatasetError(
                name,
                f"duplicate id {prompt_id!r} (first used on line {first_line_of_id[prompt_id]})",
                line=lineno,
                field="id",
            )
        first_line_of_id[prompt_id] = lineno
        prompts.append(
            Prompt(
                id=prompt_id,
                prompt=prompt,
                category=_optional_text(obj, "category", name, lineno),
                answers=_optional_text_list(obj, "answers", name, lineno),
                refusal=_optional_text(obj, "refusal", name, lineno),
                kind=_optional_text(obj, "kind", name, lineno),
            )
        )
    return prompts


def _required_text(obj: dict[str, object], key: str, name: str, lineno: int) -> str:
    if key not in obj:
        raise DatasetError(name, "missing required key", line=lineno, field=key)
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(
            name, f"expected a string, got {_json_type(value)}", line=lineno, field=key
        )
    if not value.strip():
        raise DatasetError(name, "must not be empty", line=lineno, field=key)
    return value


def _optional_text(obj: dict[str, object], key: str, name: str, lineno: int) -> str | None:
    if obj.get(key) is None:
        return None
    return _required_text(obj, key, name, lineno)


def _optional_text_list(
    obj: dict[str, object], key: str, name: str, lineno: int
) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DatasetError(
            name, f"expected a list of strings, got {_json_type(value)}", line=lineno, field=key
        )
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(
                name,
                f"expected a non-empty string, got {_describe(item)}",
                line=lineno,
                field=f"{key}[{index}]",
            )
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# Chat fine-tuning data (OpenAI's chat JSONL format)


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


def conversation_prompt_texts(conversation: Conversation) -> list[str]:
    """The user messages of a conversation, in order."""
    return [message.content for message in conversation if message.role == "user"]


def conversation_as_dict(conversation: Conversation) -> dict[str, object]:
    """One JSONL line's object: ``{"messages": [...]}``."""
    return {"messages": [message.as_dict() for message in conversation]}


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
            _read_bytes(source),
            name or str(source),
            max_examples=max_examples,
            max_line_bytes=max_line_bytes,
        )
    label = name or "<lines>"
    return _conversations(
        _text_lines(source, label, max_line_bytes=max_line_bytes), label, max_examples
    )


def validate_chat_bytes(
    data: bytes,
    filename: str,
    *,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
) -> list[Conversation]:
    """Validate an uploaded chat JSONL file; raise DatasetError at the first problem."""
    lines = _decode_lines(data, filename, max_line_bytes=max_line_bytes)
    return _conversations(lines, filename, max_examples)


def _conversations(
    lines: Iterable[tuple[int, str]], name: str, max_examples: int | None
) -> list[Conversation]:
    conversations: list[Conversation] = []
    for lineno, text in lines:
        if not text.strip():
            continue
        if max_examples is not None and len(conversations) >= max_examples:
            raise DatasetError(name, f"too many examples: the limit is {max_examples}", line=lineno)
        conversations.append(_conversation(_parse_json_object(text, name, lineno), name, lineno))
    if not conversations:
        raise DatasetError(name, "the file contains no examples")
    return conversations


def _conversation(obj: dict[str, object], name: str, lineno: int) -> Conversation:
    def fail(reason: str, field: str | None) -> DatasetError:
        return DatasetError(name, reason, line=lineno, field=field)

    for key in obj:
        if key != "messages":
            raise fail("unsupported key: each line must hold only a 'messages' list", key)
    if "messages" not in obj:
        raise fail("missing required key", "messages")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise fail(f"expected a list of messages, got {_json_type(raw_messages)}", "messages")
    if not raw_messages:
        raise fail("expected at least one message, got an empty list", "messages")

    messages: list[Message] = []
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise fail(f"expected a JSON object, got {_json_type(raw)}", where)
        for key in raw:
            if key not in MESSAGE_KEYS:
                raise fail(
                    f"unsupported key (allowed: {', '.join(MESSAGE_KEYS)})", f"{where}.{key}"
                )
        if "role" not in raw:
            raise fail("missing required key", f"{where}.role")
        role = raw["role"]
        if role not in ROLES:
            raise fail(
                f"expected one of {', '.join(ROLES)}, got {_describe(role)}", f"{where}.role"
            )
        if role == "system" and index != 0:
            raise fail("a system message is only allowed as the first message", f"{where}.role")
        if "content" not in raw:
            raise fail("missing required key", f"{where}.content")
        content = raw["content"]
        if not isinstance(content, str):
            raise fail(f"expected a string, got {_json_type(content)}", f"{where}.content")
        if not content.strip():
            raise fail("must not be empty", f"{where}.content")
        if "name" in raw and not isinstance(raw["name"], str):
            raise fail(f"expected a string, got {_json_type(raw['name'])}", f"{where}.name")
        weight: int | None = None
        if "weight" in raw:
            if role != "assistant":
                raise fail("weight is only allowed on assistant messages", f"{where}.weight")
            value = raw["weight"]
            # bool is an int subclass; JSON true/false is not a valid weight.
            if isinstance(value, bool) or value not in (0, 1):
                raise fail(f"expected 0 or 1, got {_describe(value)}", f"{where}.weight")
            weight = int(value)
        messages.append(Message(role=role, content=content, weight=weight))

    roles = [message.role for message in messages]
    if "user" not in roles:
        raise fail("needs at least one user message", "messages")
    if "assistant" not in roles:
        raise fail("needs at least one assistant message", "messages")
    if roles[-1] != "assistant":
        raise fail(
            f"the last message must be from the assistant, got {roles[-1]!r}",
            f"messages[{len(roles) - 1}].role",
        )
    if not any(message.trained for message in messages):
        raise fail("every assistant message has weight 0, so nothing would be trained", "messages")
    return tuple(messages)


# ---------------------------------------------------------------------------------------------
# Prompt normalisation (for disjointness and near-duplicate checks)


def normalize_prompt(text: str) -> str:
    """Casefold, drop apostrophes, turn other punctuation and symbols into spaces, collapse spaces.

    "Can't" and "cant" compare equal; "e-mail" becomes "e mail". Used to keep evaluation prompts
    out of training data and the patch example out of the customer's data.
    """
    chars: list[str] = []
    for char in unicodedata.normalize("NFKC", text).casefold():
        if char in "'\u2018\u2019`":
            continue
        chars.append(" " if unicodedata.category(char)[0] in "PS" else char)
    return " ".join("".join(chars).split())


def prompt_tokens(text: str) -> frozenset[str]:
    """The set of words of a normalised prompt."""
    return frozenset(normalize_prompt(text).split())


def token_jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two prompts' word sets (1.0: same words)."""
    tokens_a, tokens_b = prompt_tokens(a), prompt_tokens(b)
    if not tokens_a and not tokens_b:
        return 1.0
    return len(tokens_a & tokens_b) / len(tokens_a | tokens_b)


# ---------------------------------------------------------------------------------------------
# Reading lines and JSON


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _ConstantError(Exception):
    pass


def _object_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _reject_constant(token: str) -> object:
    raise _ConstantError(token)


def _parse_json_object(text: str, name: str, lineno: int) -> dict[str, object]:
    if text.lstrip().startswith("\ufeff"):
        # Typically two files concatenated; json's own message would point at Python's codecs.
        raise DatasetError(
            name, "a byte-order mark (BOM) is only allowed at the start of the file", line=lineno
        )
    try:
        value = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except _DuplicateKeyError as exc:
        raise DatasetError(
            name, f"duplicate key {exc.key!r} in a JSON object", line=lineno
        ) from None
    except _ConstantError as exc:
        raise DatasetError(
            name, f"not valid JSON: {exc.args[0]} is not allowed", line=lineno
        ) from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            name, f"not valid JSON: {exc.msg} (column {exc.colno})", line=lineno
        ) from None
    except RecursionError:
        raise DatasetError(name, "not valid JSON: nested too deeply", line=lineno) from None
    if not isinstance(value, dict):
        raise DatasetError(name, f"expected a JSON object, got {_json_type(value)}", line=lineno)
    return value


def _read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the file: {exc.strerror or exc}") from None


def _decode_lines(
    data: bytes, name: str, *, max_line_bytes: int | None
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for UTF-8 bytes, dropping a leading BOM."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if max_line_bytes is not None and len(raw) > max_line_bytes:
            raise DatasetError(
                name,
                f"line is {len(raw)} bytes, longer than the limit of {max_line_bytes} bytes",
                line=lineno,
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                name,
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
                "save the file as UTF-8",
                line=lineno,
            ) from None
        yield lineno, text.removesuffix("\r")


def _text_lines(
    lines: Iterable[str], name: str, *, max_line_bytes: int | None
) -> Iterator[tuple[int, str]]:
    for lineno, text in enumerate(lines, start=1):
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        text = text.removesuffix("\n").removesuffix("\r")
        if max_line_bytes is not None and len(text.encode("utf-8")) > max_line_bytes:
            raise DatasetError(
                name, f"line is longer than the limit of {max_line_bytes} bytes", line=lineno
            )
        yield lineno, text


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe(value: object) -> str:
    """A short rendering of a JSON value for an error message: 'bot', 5, true, a list."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return _json_type(value)
