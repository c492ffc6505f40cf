"""Strict reading of JSON-lines files, and the error that locates a problem in one.

Torch-free and standard library only: the API validates customer uploads with it, the workers
read their data files with it. A problem is a `DatasetError` that names the file, the 1-based line
and the field, for example ``train.jsonl, line 7, field messages[1].role: expected one of
system, user, assistant, got 'bot'``.

Choices that a customer may trip over, made once here (docs/reliability.md, "Hostile input"):
- A UTF-8 byte-order mark at the very start of a file is accepted and dropped (editors on Windows
  add one, and OpenAI accepts it); anywhere else it is an error. Any other encoding is rejected.
- CRLF line endings are accepted, and so is a last line without a newline.
- Duplicate keys in one JSON object and NaN/Infinity are rejected rather than silently ignored.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

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


def parse_json_object(text: str, name: str, lineno: int) -> dict[str, object]:
    if text.lstrip().startswith("\ufeff"):
        # Typically two files concatenated; json's own message would point at Python's codecs.
        raise DatasetError(
            name, "a byte-order mark (BOM) is only allowed at the start of the file", line=lineno
        )
    try:
        value = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except _DuplicateKeyError as exc:
        raise DatasetError(
            name, f"duplicate key {describe_json(exc.key)} in a JSON object", line=lineno
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
        raise DatasetError(name, f"expected a JSON object, got {json_type(value)}", line=lineno)
    return value


def read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the file: {exc.strerror or exc}") from None


def byte_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
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


def str_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for lineno, text in enumerate(lines, start=1):
        yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text


def line_text(raw: bytes | str, name: str, lineno: int, max_line_bytes: int | None) -> str:
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


def decode_lines(
    data: bytes, name: str, *, max_line_bytes: int | None
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for UTF-8 bytes, dropping a leading BOM; raise at the
    first undecodable line (prompt files: their authors are us, one error is enough)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for lineno, raw in byte_lines(data):
        yield lineno, line_text(raw, name, lineno, max_line_bytes)


def json_key(key: str) -> str:
    """A JSON key as it may appear in a field path: printable and short."""
    shown = key if key.isprintable() else repr(key)[1:-1]
    return shown if len(shown) <= 40 else shown[:37] + "..."


def json_type(value: object) -> str:
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


def describe_json(value: object) -> str:
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
    return json_type(value)
