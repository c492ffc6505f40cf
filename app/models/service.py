"""Rules of the models resource: what a tenant may see and download, and base-model registry.

Base models are the provider's (visible to every tenant, never downloadable); model versions
belong to the tenant whose job made them. A version is served only when it is ``ready`` and its
file still matches the manifest the worker wrote; a quarantined one says why it is withheld.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.context import AuthContext
from app.core.errors import AppError, NotFound, PermissionDenied
from app.core.redact import relative_paths
from app.db.models import BaseModelRecord, ModelStatus, ModelVersion
from app.models import repository
from app.models.integrity import FILE_CHECKS, ModelFileMismatch
from app.models.ranges import ByteRange, requested_ranges
from contracts.manifest import MANIFEST, CorruptCheckpointError, ManifestEntry, entries

AnyModel = BaseModelRecord | ModelVersion


class ModelQuarantined(PermissionDenied):
    code = "model_quarantined"


class CorruptModelFile(AppError):
    """The file on disk no longer matches its manifest: reported, never served."""

    status_code = 500
    type = "server_error"
    code = "checkpoint_corrupted"


@dataclass(frozen=True)
class Download:
    version: ModelVersion
    path: Path
    sha256: str
    stat: os.stat_result  # of the verified file: what the response sends
    ranges: list[ByteRange] | None  # None: the whole file


def list_models(session: Session, *, auth: AuthContext) -> list[AnyModel]:
    """Base models first (by name), then the tenant's versions, newest first."""
    return [
        *repository.list_base(session),
        *repository.list_versions_for_tenant(session, auth.tenant.id),
    ]


def get(session: Session, *, auth: AuthContext, model: str) -> AnyModel:
    found: AnyModel | None = repository.get_base(session, model)
    if found is None:
        found = repository.get_version_for_tenant(session, auth.tenant.id, model)
    if found is None:
        raise NotFound(
            f"The model '{model}' does not exist.", param="model", code="model_not_found"
        )
    return found


def lineage(session: Session, version: ModelVersion) -> list[str]:
    """Names from the base model down to ``version`` (base -> fine-tuned -> patched)."""
    names = [version.name]
    parent_id = version.parent_id
    while parent_id is not None:
        parent = repository.get_version(session, parent_id)
        if parent is None:
            break
        names.append(parent.name)
        parent_id = parent.parent_id
    base = (version.metrics or {}).get("base_model")
    return ([base] if base else []) + names[::-1]


def files(
    session: Session, *, auth: AuthContext, model: str
) -> tuple[ModelVersion, list[ManifestEntry]]:
    """The files of a downloadable version (the manifest first, then what it lists)."""
    version = _downloadable(get(session, auth=auth, model=model))
    return version, _listed(version)


def open_file(
    session: Session,
    *,
    auth: AuthContext,
    model: str,
    filename: str,
    range_header: str | None,
    if_range: str | None,
    reverify_s: float,
) -> Download:
    """Check a download (visible, ready, listed, intact) and audit it; return what to send.

    A file is hashed against its manifest the first time this process serves it, and again
    only when ``stat`` says it changed or its check is older than ``reverify_s``
    (``app/models/integrity.py``)."""
    version = _downloadable(get(session, auth=auth, model=model))
    directory = Path(version.storage_uri)
    # Only names the manifest lists are served: a path trick in `filename` matches none.
    entry = next((e for e in _listed(version) if e.name == filename), None)
    if entry is None:
        raise NotFound(
            f"Model '{model}' has no file '{filename}'.", param="filename", code="file_not_found"
        )
    path = directory / filename
    stat = FILE_CHECKS.trusted(path, entry, reverify_s=reverify_s)
    if stat is None:
        # Nothing is written yet: end the read-only transaction, so that no lock (SQLite's
        # write lock is taken at BEGIN) or snapshot is held while gigabytes are hashed.
        session.commit()
        try:
            stat = FILE_CHECKS.verify(path, entry)
        except ModelFileMismatch as error:
            _withhold(session, auth, version, filename, error)
    etag = f'"{entry.sha256}"'
    ranges = requested_ranges(
        range_header, if_range, etag=etag, mtime=stat.st_mtime, size=stat.st_size
    )
    audit.record(
        session,
        action="model.downloaded",
        subject_type="model",
        subject_id=version.name,
        actor=auth.actor,
        tenant_id=version.tenant_id,
        payload={
            "model": version.name,
            "file": filename,
            # The bytes sent (inclusive), as parsed: never the client's raw header.
            "ranges": None if ranges is None else [asdict(part) for part in ranges],
        },
    )
    return Download(version=version, path=path, sha256=entry.sha256, stat=stat, ranges=ranges)


def _withhold(
    session: Session,
    auth: AuthContext,
    version: ModelVersion,
    filename: str,
    error: ModelFileMismatch,
) -> NoReturn:
    audit.record(
        session,
        action="model.corruption_detected",
        subject_type="model",
        subject_id=version.name,
        actor=auth.actor,
        tenant_id=version.tenant_id,
        payload={
            "file": filename,
            "detail": relative_paths(str(error), Path(version.storage_uri)),
        },
    )
    session.commit()  # the evidence outlives the error response
    raise CorruptModelFile(
        f"File '{filename}' of model '{version.name}' failed its integrity check and is "
        "withheld; the operator has been notified through the audit log."
    ) from error


def register_base_model(
    session: Session,
    *,
    name: str,
    storage_uri: str,
    sha256: str,
    size_bytes: int,
    baseline_metrics: dict[str, Any] | None,
    suite_version: str | None,
    actor: str,
) -> BaseModelRecord:
    """Add or update a base model customers may fine-tune (``safepatch models ...`` calls it)."""
    record = repository.get_base(session, name)
    if record is None:
        record = BaseModelRecord(name=name)
        session.add(record)
    record.storage_uri = storage_uri
    record.sha256 = sha256
    record.size_bytes = size_bytes
    if baseline_metrics is not None:
        record.baseline_metrics = baseline_metrics
        record.suite_version = suite_version
    session.flush()
    audit.record(
        session,
        action="base_model.registered",
        subject_type="model",
        subject_id=name,
        actor=actor,
        payload={"name": name, "sha256": sha256, "size_bytes": size_bytes},
    )
    return record


def _downloadable(model: AnyModel) -> ModelVersion:
    if isinstance(model, BaseModelRecord):
        raise PermissionDenied(
            f"'{model.name}' is a hosted base model; only your fine-tuned models can be "
            "downloaded.",
            param="model",
            code="model_not_downloadable",
        )
    if model.status != ModelStatus.READY:
        raise ModelQuarantined(
            f"Model '{model.name}' is quarantined and cannot be downloaded: "
            f"{model.status_reason or 'it did not pass its safety check'}.",
            param="model",
        )
    return model


def _listed(version: ModelVersion) -> list[ManifestEntry]:
    """The manifest itself (its sha256 is the version's) and every file it lists."""
    directory = Path(version.storage_uri)
    try:
        manifest = ManifestEntry(MANIFEST, version.sha256, (directory / MANIFEST).stat().st_size)
        return [manifest, *entries(directory)]
    except (OSError, CorruptCheckpointError) as error:
        raise CorruptModelFile(
            f"The files of model '{version.name}' are unavailable on this server."
        ) from error
