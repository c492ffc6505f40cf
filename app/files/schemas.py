"""Response bodies of the files API, in OpenAI's shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.db.models import File


class FileRead(BaseModel):
    """An OpenAI ``file`` object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @classmethod
    def of(cls, file: File) -> FileRead:
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=int(file.created_at.timestamp()),
            filename=file.filename,
            purpose=file.purpose,
            status=file.status,
        )


class FileList(BaseModel):
    """OpenAI's cursor page: ``first_id``/``last_id`` are the page's ends (null when empty)."""

    object: Literal["list"] = "list"
    data: list[FileRead]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, data: list[FileRead], *, has_more: bool) -> FileList:
        return cls(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
