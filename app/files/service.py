"""Rules of the files resource: validate chat JSONL at upload, store it once by its sha256."""

from __future__ import annotations

import codecs
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.context import AuthContext
from app.core.db import after_commit
from app.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from app.core.settings import Settings
from app.db.models import File, FileStatus
from app.files import quota, repository
from app.files.upload import ReceivedUpload
from contracts.chat import ChatLimits, _conversation  # one example's checks
from contracts.jsonl import DatasetError, line_text, parse_json_object

PURPOSES = ("fine-tune",)
# The multipart envelope around the file: boundaries, part headers and the purpose field.
MULTIPART_ALLOWANCE = 64 * 1024
MAX_FILENAME_CHARS = 255  # files.filename is VARCHAR(255)
# Validation reads the upload from disk a chunk or a line at a time: its memory is one chunk or
# one line (at most SAFEPATCH_UPLOAD_MAX_LINE_BYTES), whatever the file's size.
READ_CHUNK_BYTES = 256 * 1024


def upload_body_limit(settings: Settings) -> int:
    """The largest POST /v1/files body ``app.core.limits`` lets through."""
    return settings.max_upload_bytes + MULTIPART_ALLOWANCE


def blob_path(settings: Settings, sha256: str) -> Path:
    """Where content with this hash lives: ``files/ab/abcdef…`` (two-level fan-out)."""
    return settings.files_dir / sha256[:2] / sha256


def _check_filename(filename: str) -> None:
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidRequest(
            f"Invalid file name: at most {MAX_FILENAME_CHARS} characters, got {len(filename)}.",
            param="file",
            code="invalid_filename",
        )
    if not filename.isprintable():
        raise InvalidRequest(
            f"Invalid file name {filename!r}: control characters are not allowed.",
            param="file",
            code="invalid_filename",
        )


def validate_file(settings: Settings, filename: str, path: Path) -> int:
    """Check the chat JSONL file at ``path`` against the configured limits, streaming it line by
    line; the number of examples. A DatasetError becomes a 400 that names the line and field."""
    limits = ChatLimits(
        max_examples=settings.upload_max_examples,
        min_examples=settings.upload_min_examples,
        max_line_bytes=settings.upload_max_line_bytes,
        max_example_tokens=settings.upload_max_example_tokens,
    )
    try:
        with path.open("rb") as handle:
            start = _check_text_file(handle, filename)
            handle.seek(start)
            return _count_examples(_lines(handle, limits.max_line_bytes), filename, limits)
    except DatasetError as error:
        # e.g. "Invalid file 'train.jsonl': line 3, field messages[1].role: expected one of ..."
        raise InvalidRequest(
            f"Invalid file '{filename}': {error.describe()}",
            param=error.field or "file",
            code="invalid_file",
        ) from error


# The checks below are contracts.chat.validate_chat_bytes's, over a file instead of bytes in
# memory: the same whole-file checks first, then every line, with the same messages. Only the
# count of examples is kept, not the conversations (they would take more memory than the file).


def _check_text_file(handle: BinaryIO, name: str) -> int:
    """Empty, UTF-16 and binary files fail as a whole, before any line is checked (as in
    ``validate_chat_bytes``); the offset where the text starts (past a UTF-8 byte-order mark)."""
    start = len(codecs.BOM_UTF8) if handle.read(3) == codecs.BOM_UTF8 else 0
    handle.seek(start)
    head = handle.read(2)
    if not head:
        raise DatasetError(name, "the file is empty: it contains no examples")
    if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DatasetError(
            name,
            "not valid UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
            "save it as UTF-8",
            line=1,
        )
    handle.seek(start)
    offset, newlines = 0, 0  # bytes and newlines before the chunk, counted from ``start``
    while chunk := handle.read(READ_CHUNK_BYTES):
        nul = chunk.find(b"\x00")
        if nul != -1:  # JSON text never holds a raw NUL byte; binary files nearly always do
            raise DatasetError(
                name,
                f"a NUL byte (byte {offset + nul + 1} of the file): this is a binary file, "
                "not UTF-8 JSON lines",
                line=newlines + chunk.count(b"\n", 0, nul) + 1,
            )
        offset += len(chunk)
        newlines += chunk.count(b"\n")
    return start


def _lines(handle: BinaryIO, max_line_bytes: int | None) -> Iterator[tuple[int, bytes, int]]:
    """(1-based line number, the line without its newline, its length in bytes), one line at a
    time. A line over ``max_line_bytes`` is read past to measure it, not kept: its ``raw`` is
    then only its first ``max_line_bytes + 1`` bytes."""
    limit = -1 if max_line_bytes is None else max_line_bytes + 1
    for lineno in itertools.count(1):
        raw = handle.readline(limit)
        if not raw:
            return
        length = len(raw)
        ended = raw.endswith(b"\n")
        while not ended:  # past the limit, or the last line (no newline at the end of the file)
            more = handle.readline(READ_CHUNK_BYTES)
            if not more:
                break
            length += len(more)
            ended = more.endswith(b"\n")
        yield lineno, raw.removesuffix(b"\n"), length - 1 if ended else length


def _count_examples(lines: Iterator[tuple[int, bytes, int]], name: str, limits: ChatLimits) -> int:
    """Check every line, collecting one problem per broken line up to ``limits.max_errors``
    (contracts.chat's rules and messages); the number of examples."""
    problems: list[DatasetError] = []
    examples = 0  # non-blank lines, valid or not
    valid = 0
    for lineno, raw, length in lines:
        try:
            if limits.max_line_bytes is not None and length > limits.max_line_bytes:
                raise DatasetError(
                    name,
                    f"line is {length} bytes, longer than the limit of "
                    f"{limits.max_line_bytes} bytes",
                    line=lineno,
                )
            text = line_text(raw, name, lineno, limits.max_line_bytes)
            if not text.strip():
                continue
            examples += 1
            if limits.max_examples is not None and examples > limits.max_examples:
                reason = f"too many examples: the limit is {limits.max_examples}"
                problems.append(DatasetError(name, reason, line=lineno))
                break
            obj = parse_json_object(text, name, lineno)
            _conversation(obj, name, lineno, limits.max_example_tokens)
            valid += 1
        except DatasetError as problem:
            problems.append(problem)
            if len(problems) >= limits.max_errors:
                raise DatasetError.collected(problems, truncated=True) from None
    if problems:
        raise DatasetError.collected(problems, truncated=False)
    if examples == 0:
        raise DatasetError(name, "the file contains no examples (only blank lines)")
    if valid < limits.min_examples:
        raise DatasetError(
            name, f"too few examples: {valid}, at least {limits.min_examples} are needed"
        )
    return valid


def _check_storage_quota(
    session: Session, auth: AuthContext, settings: Settings, size: int
) -> None:
    """413 when the file would take the tenant's files and models past its storage quota.
    Checked after validation, so the tenant's row (locked until the file is committed, as for
    jobs) is not held while a large file is read."""
    quota.check_upload(
        session, auth.tenant.id, quota=settings.storage_quota_bytes_per_tenant, size=size
    )


def _check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest(
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"Invalid value for 'purpose': {purpose!r}; supported: {', '.join(PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def _place(upload: ReceivedUpload, path: Path) -> None:
    """Move the upload's temporary file into the store (a rename: same directory tree);
    identical content is already there, so the temporary file is left for the caller."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(upload.path, path)


def create(
    session: Session, *, auth: AuthContext, settings: Settings, upload: ReceivedUpload
) -> File:
    """Validate an upload streamed to disk (``app.files.upload``) and store it; nothing is
    written when validation fails. Validation reads the file before the first statement, so the
    transaction (the tenant's row lock, the insert) opens only once the file is known good."""
    purpose = _check_purpose(upload.purpose)
    if upload.size > settings.max_upload_bytes:  # already refused while it streamed
        raise PayloadTooLarge(
            f"File is too large: {upload.size} bytes, the limit is {settings.max_upload_bytes}.",
            param="file",
        )
    filename = upload.filename
    _check_filename(filename)
    examples = validate_file(settings, filename, upload.path)  # line by line, from disk
    _check_storage_quota(session, auth, settings, upload.size)
    path = blob_path(settings, upload.sha256)
    _place(upload, path)
    file = File(
        tenant_id=auth.tenant.id,
        filename=filename,
        purpose=purpose,
        bytes=upload.size,
        sha256=upload.sha256,
        storage_path=str(path),
        status=FileStatus.PROCESSED,
    )
    session.add(file)
    session.flush()
    audit.record(
        session,
        action="file.created",
        subject_type="file",
        subject_id=file.id,
        actor=auth.actor,
        tenant_id=file.tenant_id,
        payload={
            "filename": filename,
            "purpose": purpose,
            "bytes": upload.size,
            "sha256": upload.sha256,
            "examples": examples,
        },
    )
    return file


def get(session: Session, *, auth: AuthContext, file_id: str) -> File:
    file = repository.get_for_tenant(session, auth.tenant.id, file_id)
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return file


def list_files(
    session: Session,
    *,
    auth: AuthContext,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[Sequence[File], bool]:
    """A page of the tenant's files in ``order`` of creation, and whether more follow."""
    cursor = get(session, auth=auth, file_id=after) if after is not None else None
    files = repository.list_for_tenant(
        session, auth.tenant.id, purpose=purpose, after=cursor, limit=limit + 1, order=order
    )
    return files[:limit], len(files) > limit


def read_content(session: Session, *, auth: AuthContext, file_id: str) -> tuple[File, bytes]:
    file = get(session, auth=auth, file_id=file_id)
    try:
        return file, Path(file.storage_path).read_bytes()
    except FileNotFoundError as error:
        raise NotFound(f"The content of file {file_id} is missing.", param="id") from error


def delete(session: Session, *, auth: AuthContext, file_id: str) -> File:
    """Remove the file row; its content goes after commit unless another row shares it."""
    file = get(session, auth=auth, file_id=file_id)
    session.delete(file)
    session.flush()
    audit.record(
        session,
        action="file.deleted",
        subject_type="file",
        subject_id=file.id,
        actor=auth.actor,
        tenant_id=file.tenant_id,
        payload={"filename": file.filename, "sha256": file.sha256},
    )
    if repository.count_by_sha256(session, file.sha256) == 0:
        path = Path(file.storage_path)
        after_commit(session, lambda: path.unlink(missing_ok=True))
    return file
