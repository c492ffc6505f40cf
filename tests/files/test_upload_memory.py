"""Validating an upload reads it from disk line by line (app/files/service.validate_file): the
memory it takes is a chunk or a line, not the file, and its errors still name the line and field.

The large files are written into the test's tmp dir (32 MiB each); ``tracemalloc`` measures the
peak of Python's allocations while ``service.create`` checks one. Reading the file whole (as
before) peaks above the file's size; streaming stays under a tenth of it. The second half checks
that the streaming checks say exactly what ``contracts.chat.validate_chat_bytes`` says, on the
corpus of broken and quirky files of test_hostile_uploads.py and on line-length edges.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest
from app.core.settings import Settings
from app.db.models import File
from app.files import service
from app.files.upload import ReceivedUpload
from contracts.chat import validate_chat_bytes
from contracts.jsonl import DatasetError
from tests.factories import Caller
from tests.files import test_hostile_uploads as hostile

MiB = 1024 * 1024
SIZE = 32 * MiB
PEAK_LIMIT = SIZE // 10
# About 4 KiB an example, so 32 MiB is ~8,000 examples: under the default limit of 100,000.
GOOD = (
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": "Summarise this, please."},
                {"role": "assistant", "content": "word " * 800},
            ]
        }
    ).encode()
    + b"\n"
)
BAD_ROLE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n'


def write_large(path: Path, tail: bytes = b"") -> int:
    """``SIZE`` bytes of good examples, then ``tail``; the number of good lines."""
    count = SIZE // len(GOOD)
    with path.open("wb") as handle:
        for _ in range(count):
            handle.write(GOOD)
        handle.write(tail)
    return count


def received(path: Path) -> ReceivedUpload:
    with path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return ReceivedUpload(
        path=path,
        filename="train.jsonl",
        size=path.stat().st_size,
        sha256=sha256,
        purpose="fine-tune",
    )


def create_traced(
    session: Session, caller: Caller, settings: Settings, path: Path
) -> tuple[File | InvalidRequest, int]:
    """``service.create`` on the file at ``path``: the stored file or the 400, and the peak of
    Python's allocations while it ran."""
    upload = received(path)
    tracemalloc.start()
    try:
        try:
            result: File | InvalidRequest = service.create(
                session, auth=caller.auth, settings=settings, upload=upload
            )
        except InvalidRequest as error:
            result = error
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_large_valid_upload_is_checked_in_memory_far_below_its_size(
    session: Session, caller: Caller, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "large.jsonl"
    write_large(path)
    size = path.stat().st_size
    assert size > 30 * MiB

    stored, peak = create_traced(session, caller, settings, path)

    assert isinstance(stored, File), stored
    assert stored.bytes == size
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB validating {size / MiB:.1f} MiB"
    assert session.scalars(select(File)).all() == [stored]


@pytest.mark.parametrize(
    ("tail", "where", "reason", "param"),
    [
        (
            BAD_ROLE,
            "field messages[1].role",
            "expected one of system, user, assistant, got 'bot'",
            "messages[1].role",
        ),
        (
            b'{"messages": [], "messages": []}\n',
            None,
            "duplicate key 'messages' in a JSON object",
            "file",
        ),
        (
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
            None,
            "not valid UTF-8 (byte 0xe9",
            "file",
        ),
        (
            codecs.BOM_UTF8 + GOOD,
            None,
            "a byte-order mark (BOM) is only allowed at the start",
            "file",
        ),
    ],
    ids=["bad_role", "duplicate_key", "latin1", "bom"],
)
def test_a_problem_on_the_last_line_of_a_large_upload_names_its_line_and_field(
    session: Session,
    caller: Caller,
    settings: Settings,
    tmp_path: Path,
    tail: bytes,
    where: str | None,
    reason: str,
    param: str,
) -> None:
    path = tmp_path / "late.jsonl"
    line = write_large(path, tail) + 1

    error, peak = create_traced(session, caller, settings, path)

    assert isinstance(error, InvalidRequest)
    located = f"line {line}, {where}" if where else f"line {line}"
    assert error.message.startswith(f"Invalid file 'train.jsonl': {located}: {reason}"), error
    assert (error.code, error.param) == ("invalid_file", param)
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB"
    assert session.scalars(select(File)).all() == []


def test_a_line_far_over_the_limit_is_measured_not_read_into_memory(
    session: Session, caller: Caller, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "long_line.jsonl"
    long_line = b'{"messages": "' + b"x" * SIZE + b'"}'
    path.write_bytes(GOOD + long_line + b"\r\n" + GOOD)

    error, peak = create_traced(session, caller, settings, path)

    assert isinstance(error, InvalidRequest)
    limit = settings.upload_max_line_bytes
    assert error.message == (
        f"Invalid file 'train.jsonl': line 2: line is {len(long_line) + 1} bytes, "
        f"longer than the limit of {limit} bytes"
    )  # the CR counts, as in contracts.jsonl.line_text
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB"


def test_a_nul_byte_late_in_a_large_upload_names_its_byte_and_line(
    session: Session, caller: Caller, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "binary_tail.jsonl"
    count = write_large(path, b"x" * 10 + b"\x00")

    error, peak = create_traced(session, caller, settings, path)

    assert isinstance(error, InvalidRequest)
    assert error.message == (
        f"Invalid file 'train.jsonl': line {count + 1}: a NUL byte (byte "
        f"{count * len(GOOD) + 11} of the file): this is a binary file, not UTF-8 JSON lines"
    )
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB"


# The same answers as contracts.chat.validate_chat_bytes, file by file.

LIMIT = 300  # max_line_bytes for the edge cases below
SMALL = (
    b'{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}'
)


def padded(length: int) -> bytes:
    """A good example of exactly ``length`` bytes (JSON allows leading spaces)."""
    return b" " * (length - len(SMALL)) + SMALL


EDGES: dict[str, bytes] = {
    "good_line_exactly_at_the_limit": padded(LIMIT) + b"\n",
    "good_line_one_over_the_limit": padded(LIMIT + 1) + b"\n",
    "good_line_at_the_limit_then_cr": padded(LIMIT - 1) + b"\r\n",
    "good_line_over_the_limit_with_its_cr": padded(LIMIT) + b"\r\n",
    "last_line_at_the_limit_without_newline": b"\n" + padded(LIMIT),
    "last_line_over_the_limit_without_newline": b"\n" + padded(LIMIT + 1),
    "text_at_the_limit": b"x" * LIMIT + b"\n",
    "text_over_the_limit": b"x" * (LIMIT + 1) + b"\n",
    "bom_then_a_good_line_at_the_limit": codecs.BOM_UTF8 + padded(LIMIT),
    "bom_then_utf16_bom": codecs.BOM_UTF8 + codecs.BOM_UTF16_LE + b"{}\n",
    "bom_then_blank": codecs.BOM_UTF8 + b"\n",
    "bom_twice": codecs.BOM_UTF8 * 2 + b"{}\n",
    "one_byte": b"{",
    "nul_after_bom": codecs.BOM_UTF8 + b"\n\n\x00",
    "only_newlines": b"\n" * 5,
    "unicode_whitespace_line": "\u3000\n".encode(),
}


def expected_message(data: bytes, settings: Settings) -> str | None:
    try:
        validate_chat_bytes(
            data,
            "train.jsonl",
            max_examples=settings.upload_max_examples,
            min_examples=settings.upload_min_examples,
            max_line_bytes=settings.upload_max_line_bytes,
            max_example_tokens=settings.upload_max_example_tokens,
        )
    except DatasetError as error:
        return f"Invalid file 'train.jsonl': {error.describe()}"
    return None


def streamed_message(data: bytes, settings: Settings, path: Path) -> str | None:
    path.write_bytes(data)
    try:
        service.validate_file(settings, "train.jsonl", path)
    except InvalidRequest as error:
        return error.message
    return None


CASES = {
    **{name: broken.data for name, broken in hostile.CORPUS.items()},
    **hostile.ACCEPTED,
    "many_problems": b"x\n" * 30,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_streaming_says_what_validate_chat_bytes_says(tmp_path: Path, case: str) -> None:
    settings = Settings(  # test_hostile_uploads.py's limits
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        upload_max_examples=hostile.MAX_EXAMPLES,
        upload_max_line_bytes=hostile.MAX_LINE_BYTES,
        upload_max_example_tokens=hostile.MAX_EXAMPLE_TOKENS,
    )
    data = CASES[case]
    assert streamed_message(data, settings, tmp_path / "f.jsonl") == expected_message(
        data, settings
    )


@pytest.mark.parametrize("case", list(EDGES), ids=list(EDGES))
def test_line_length_and_encoding_edges_match_validate_chat_bytes(
    tmp_path: Path, case: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        upload_max_line_bytes=LIMIT,
        upload_min_examples=1,
    )
    data = EDGES[case]
    assert streamed_message(data, settings, tmp_path / "f.jsonl") == expected_message(
        data, settings
    )
