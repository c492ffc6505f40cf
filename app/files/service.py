"""Rules of the files resource: validate chat JSONL at upload, store it once by its sha256."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.context import AuthContext
from app.core.db import after_commit
from app.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from app.core.settings import Settings
from app.db.models import File, FileStatus
from app.files import quota, repository
from app.files.upload import ReceivedUpload
from contracts.chat import validate_chat_bytes
from contracts.jsonl import DatasetError

PURPOSES = ("fine-tune",)
# The multipart envelope around the file: boundaries, part headers and the purpose field.
MULTIPART_ALLOWANCE = 64 * 1024
MAX_FILENAME_CHARS = 255  # files.filename is VARCHAR(255)


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


def _validate(settings: Settings, filename: str, data: bytes) -> int:
    """Check the chat JSONL against the configured limits; the number of examples."""
    try:
        conversations = validate_chat_bytes(
            data,
            filename,
            max_examples=settings.upload_max_examples,
            min_examples=settings.upload_min_examples,
            max_line_bytes=settings.upload_max_line_bytes,
            max_example_tokens=settings.upload_max_example_tokens,
        )
    except DatasetError as error:
        # e.g. "Invalid file 'train.jsonl': line 3, field messages[1].role: expected one of ..."
        raise InvalidRequest(
            f"Invalid file '{filename}': {error.describe()}",
            param=error.field or "file",
            code="invalid_file",
        ) from error
    return len(conversations)


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
    # The validator takes bytes (contracts.chat): the file is in memory for this step only.
    examples = _validate(settings, filename, upload.path.read_bytes())
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
