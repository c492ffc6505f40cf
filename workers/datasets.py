"""Torch-free loaders and validators for prompt files and chat fine-tuning data.

The HTTP API imports this module to validate customer uploads, so it uses only the standard library
and reports problems as a `DatasetError` that names the file, the 1-based line and the field, for
example ``train.jsonl, line 7, field messages[1].role: expected one of system, user, assistant,
got 'bot'``. A chat file is checked to the end (up to ``max_errors`` problems, one per line), so a
customer can fix every broken line in one go; ``DatasetError.problems`` holds them all.

Choices that a customer may trip over, made once here (docs/reliability.md, "Hostile input"):
- A UTF-8 byte-order mark at the very start of a file is accepted and dropped (editors on Windows
  add one, and OpenAI accepts it); anywhere else it is an error. Any other encoding is rejected.
- Blank (whitespace-only) lines are skipped anywhere in the file; line numbers still count them.
  CRLF line endings are accepted, and so is a last line without a newline.
- Duplicate keys in one JSON object, NaN/Infinity, and keys we do not understand are rejected rather
  than silently ignored: a ``tools`` key or a ``tool`` role means the customer expects behaviour
  this service does not train, and a misspelt key would otherwise train on nothing.
- Text may not contain C0 control characters other than tab, newline and carriage return, nor
  unpaired surrogates (``"\\ud800"``): they are corruption, not language, and a tokenizer or
  PostgreSQL would choke on them later.
- An example's length is bounded without a tokenizer: ``example_token_bound`` counts the UTF-8
  bytes of its text plus a fixed allowance per message and per example. Byte-level BPE tokenizers
  (GPT-2, Llama 3, Qwen, SmolLM2) never produce more tokens than bytes, so the bound is an upper
  bound: an accepted example is certain to fit ``max_example_tokens``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

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
PathLike: TypeAlias = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset problem located by file, 1-based line (None: the whole file) and field.

    When a file has several problems the raised error describes the first one (``line``,
    ``field``, ``reason``) and ``problems`` lists all that were found, in file order;
    ``truncated`` says the check stopped at ``max_errors``.
    """

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
        self.problems: tuple[DatasetError, ...] = (self,)
        self.truncated = False
        super().__init__(
            f"{self.path}, {self.located()}" if self.location() else f"{self.path}: {reason}"
        )

    def location(self) -> str:
        """``line 7, field messages[1].role``; empty for a whole-file problem."""
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return ", ".join(where)

    def located(self) -> str:
        """``line 7, field messages[1].role: reason``, or the reason alone for the whole file."""
        location = self.location()
        return f"{location}: {self.reason}" if location else self.reason

    def describe(self) -> str:
        """Every problem without the file name: ``line 2: ...; line 5, field ...: ...``."""
        text = "; ".join(problem.located() for problem in self.problems)
        if len(self.problems) > 1:
            more = f"the first {len(self.problems)}" if self.truncated else len(self.problems)
            text = f"{more} problems: {text}"
        return text

    @classmethod
    def collected(cls, problems: Sequence[DatasetError], *, truncated: bool) -> DatasetError:
        """One error carrying ``problems`` (the first one's location and reason)."""
        first = problems[0]
        if len(problems) == 1 and not truncated:
            return first
        error = cls(first.path, first.reason, line=first.line, field=first.field)
        error.problems = tuple(problems)
        error.truncated = truncated
        error.args = (f"{first.path}: {error.describe()}",)
        return error

    def as_dict(self) -> dict[str, str | int | None]:
        """The (first) error as a JSON-ready mapping."""
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


@dataclass(frozen=True)
class ChatLimits:
    """What one chat file may hold; ``None`` is no limit."""

    max_examples: int | None = None
    min_examples: int = 1
    max_line_bytes: int | None = None
    max_example_tokens: int | None = None
    max_errors: int = DEFAULT_MAX_ERRORS


def conversation_prompt_texts(conversation: Conversation) -> list[str]:
    """The user messages of a conversation, in order."""
    return [message.content for message in conversation if message.role == "user"]


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
            _read_bytes(source),
            name or str(source),
            max_examples=max_examples,
            max_line_bytes=max_line_bytes,
            max_example_tokens=None,
        )
    limits = ChatLimits(max_examples=max_examples, max_line_bytes=max_line_bytes)
    return _conversations(_str_lines(source), name or "<lines>", limits)


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
    return _conversations(_byte_lines(data), filename, limits)


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
            text = _line_text(raw, name, lineno, limits.max_line_bytes)
            if not text.strip():
                continue
            examples += 1
            if limits.max_examples is not None and examples > limits.max_examples:
                reason = f"too many examples: the limit is {limits.max_examples}"
                problems.append(DatasetError(name, reason, line=lineno))
                break
            obj = _parse_json_object(text, name, lineno)
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
                _key(key),
            )
        if key != "messages":
            raise fail("unsupported key: each line must hold only a 'messages' list", _key(key))
    if "messages" not in obj:
        raise fail("missing required key", "messages")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise fail(f"expected a list of messages, got {_json_type(raw_messages)}", "messages")
    if not raw_messages:
        raise fail("expected at least one message, got an empty list", "messages")
    return raw_messages


def _message(raw: object, index: int, fail: _Fail) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {_json_type(raw)}", where)
    for key in raw:
        if key in TOOL_MESSAGE_KEYS:
            raise fail(
                "unsupported key: tool calls are not supported "
                "(this service fine-tunes on chat text only)",
                f"{where}.{_key(key)}",
            )
        if key not in MESSAGE_KEYS:
            raise fail(
                f"unsupported key (allowed: {', '.join(MESSAGE_KEYS)})", f"{where}.{_key(key)}"
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
    raise fail(f"expected one of {', '.join(ROLES)}, got {_describe(role)}{hint}", field)


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
        raise fail(f"expected a string, got {_json_type(content)}", field)
    if not content.strip():
        raise fail("must not be empty", field)
    _check_chars(content, field, fail)
    return content


def _name(value: object, field: str, fail: _Fail) -> None:
    if not isinstance(value, str):
        raise fail(f"expected a string, got {_json_type(value)}", field)
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
        raise fail(f"expected 0 or 1, got {_describe(value)}", field)
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
            name, f"duplicate key {_describe(exc.key)} in a JSON object", line=lineno
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
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits (CVE-2020-10735).
        raise DatasetError(name, "not valid JSON: a number is too long", line=lineno) from None
    if not isinstance(value, dict):
        raise DatasetError(name, f"expected a JSON object, got {_json_type(value)}", line=lineno)
    return value


def _read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the file: {exc.strerror or exc}") from None


def _byte_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its newline), one line at a time (no copy of
    the whole file as a list of lines)."""
    start, lineno = 0, 1
    while True:
        end = data.find(b"\n", start)
        if end == -1:
            yield lineno, data[start:]
            return
        yield lineno, data[start:end]
        start, lineno = end + 1, lineno + 1


def _str_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for lineno, text in enumerate(lines, start=1):
        yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text


def _line_text(raw: bytes | str, name: str, lineno: int, max_line_bytes: int | None) -> str:
    """One line as text: within the byte limit, valid UTF-8, without its line ending."""
    if isinstance(raw, str):
        text = raw.removesuffix("\n").removesuffix("\r")
        size = len(text.encode("utf-8", "surrogatepass"))
        if max_line_bytes is not None and size > max_line_bytes:
            raise DatasetError(
                name, f"line is longer than the limit of {max_line_bytes} bytes", line=lineno
            )
        return text
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
    return text.removesuffix("\r")


def _decode_lines(
    data: bytes, name: str, *, max_line_bytes: int | None
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for UTF-8 bytes, dropping a leading BOM; raise at the
    first undecodable line (prompt files: their authors are us, one error is enough)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for lineno, raw in _byte_lines(data):
        yield lineno, _line_text(raw, name, lineno, max_line_bytes)


def _key(key: str) -> str:
    """A JSON key as it may appear in a field path: printable and short."""
    shown = key if key.isprintable() else repr(key)[1:-1]
    return shown if len(shown) <= 40 else shown[:37] + "..."


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
