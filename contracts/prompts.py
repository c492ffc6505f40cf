"""Prompt files: the evaluation suites, the alignment mix and the patch's candidate pool.

A ``.txt`` file holds one prompt per non-blank line; a ``.jsonl`` file one object per line with
a ``prompt`` and optionally ``id``, ``category``, ``answers``, ``refusal`` and ``kind``. The
authors are us, so the first problem is raised (a `DatasetError` with its line and field).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from contracts.jsonl import (
    DatasetError,
    PathLike,
    decode_lines,
    describe_json,
    json_type,
    parse_json_object,
    read_bytes,
)


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
    data = read_bytes(path)
    return parse_prompts_bytes(data, str(path))


def parse_prompts_bytes(data: bytes, filename: str) -> list[Prompt]:
    """Parse prompt-file bytes; the format follows the suffix of ``filename``."""
    suffix = Path(filename).suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        shown = repr(suffix) if suffix else "(none)"
        raise DatasetError(filename, f"unsupported file type {shown}: expected .txt or .jsonl")
    lines = decode_lines(data, filename, max_line_bytes=None)
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
        obj = parse_json_object(text, name, lineno)
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
            name, f"expected a string, got {json_type(value)}", line=lineno, field=key
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
            name, f"expected a list of strings, got {json_type(value)}", line=lineno, field=key
        )
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(
                name,
                f"expected a non-empty string, got {describe_json(item)}",
                line=lineno,
                field=f"{key}[{index}]",
            )
    return tuple(value)
