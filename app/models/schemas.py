"""The ``model`` object in OpenAI's shape (id, object, created, owned_by) plus our lineage,
safety metrics, integrity and status."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.db.models import BaseModelRecord, ModelVersion
from app.jobs.schemas import unix
from contracts.manifest import ManifestEntry

PROVIDER = "safepatch"


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str
    status: str
    status_reason: str | None = None
    parent: str | None = None
    lineage: list[str]
    job_id: str | None = None
    step: int | None = None
    sha256: str
    size_bytes: int
    metrics: dict[str, Any] | None = None
    downloadable: bool

    @classmethod
    def of_base(cls, record: BaseModelRecord) -> ModelRead:
        created = unix(record.created_at)
        assert created is not None
        return cls(
            id=record.name,
            created=created,
            owned_by=PROVIDER,
            kind="base",
            status="ready",
            lineage=[record.name],
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            metrics=record.baseline_metrics,
            downloadable=False,
        )

    @classmethod
    def of_version(
        cls, version: ModelVersion, *, lineage: list[str], parent: str | None
    ) -> ModelRead:
        created = unix(version.created_at)
        assert created is not None
        return cls(
            id=version.name,
            created=created,
            owned_by=version.tenant_id or PROVIDER,
            kind=version.kind,
            status=version.status,
            status_reason=version.status_reason,
            parent=parent,
            lineage=lineage,
            job_id=version.job_id,
            step=version.step,
            sha256=version.sha256,
            size_bytes=version.size_bytes,
            metrics=version.metrics,
            downloadable=version.status == "ready",
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelRead]


class ModelFileRead(BaseModel):
    name: str
    bytes: int
    sha256: str
    url: str

    @classmethod
    def of(cls, model: str, entry: ManifestEntry) -> ModelFileRead:
        return cls(
            name=entry.name,
            bytes=entry.size,
            sha256=entry.sha256,
            url=f"/v1/models/{model}/files/{entry.name}",
        )


class ModelFileList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    sha256: str
    data: list[ModelFileRead]
