"""Small factories for test data, written through the services so rows look like real ones."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.context import AuthContext
from app.core.ids import random_token
from app.core.settings import Settings
from app.db.models import (
    BaseModelRecord,
    File,
    FileStatus,
    FineTuningJob,
    ModelKind,
    ModelStatus,
    ModelVersion,
)
from app.jobs import service as job_service
from app.jobs.schemas import JobCreate
from app.models import repository as models_repository
from contracts.manifest import MANIFEST, describe

BASE_MODEL = "smollm2-135m-instruct"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Embedded-mode settings under ``tmp_path`` (no servers named), with ``overrides``."""
    return Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None, **overrides)


@dataclass
class Caller:
    auth: AuthContext
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class NullQueue:
    def enqueue_job(self, job_id: str) -> None:
        pass


def create_base_model(session: Session, name: str = BASE_MODEL) -> BaseModelRecord:
    """A base model row jobs may name (its weights are not on disk: for API-only tests)."""
    record = models_repository.get_base(session, name)
    if record is None:
        record = BaseModelRecord(
            name=name, storage_uri=f"/nonexistent/{name}", sha256="0" * 64, size_bytes=0
        )
        session.add(record)
        session.commit()
    return record


def create_caller(session: Session, name: str | None = None) -> Caller:
    """A tenant with an API key, committed in the test's transaction (and the base model its
    jobs name by default)."""
    create_base_model(session)
    tenant, api_key, key = auth_service.create_tenant(
        session, name=name or f"tenant-{random_token(8)}", actor="test"
    )
    session.commit()
    return Caller(AuthContext(tenant=tenant, api_key=api_key), key)


def create_file(session: Session, caller: Caller, *, purpose: str = "fine-tune") -> File:
    """A file row of ``caller`` (its content is not stored: for tests that only need the id)."""
    file = File(
        tenant_id=caller.auth.tenant.id,
        filename="train.jsonl",
        purpose=purpose,
        bytes=0,
        sha256=hashlib.sha256(b"").hexdigest(),
        storage_path="/nonexistent",
        status=FileStatus.PROCESSED,
    )
    session.add(file)
    session.commit()
    return file


def create_job(session: Session, caller: Caller, **fields: Any) -> FineTuningJob:
    """A queued job of ``caller`` (not enqueued anywhere), with a training file made for it."""
    if "training_file" not in fields:
        fields["training_file"] = create_file(session, caller).id
    request = JobCreate.model_validate({"model": BASE_MODEL} | fields)
    job = job_service.create(
        session,
        auth=caller.auth,
        job_create=request,
        queue=NullQueue(),
        max_active_jobs=Settings.model_fields["max_active_jobs_per_tenant"].default,
    )
    session.commit()
    return job


def write_model_dir(directory: Path, files: dict[str, bytes]) -> None:
    """A model directory as the worker leaves it: ``files`` plus a manifest of their sha256
    (the format of ``workers/ml/checkpoints.save_model``; no torch, the bytes are opaque)."""
    directory.mkdir(parents=True)
    listed: dict[str, dict[str, Any]] = {}
    for name, content in files.items():
        (directory / name).write_bytes(content)
        listed[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    manifest = {"files": listed, "metadata": {}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def create_model_version(
    session: Session,
    caller: Caller,
    directory: Path,
    *,
    name: str,
    kind: ModelKind = ModelKind.FINE_TUNED,
    parent: ModelVersion | None = None,
    job: FineTuningJob | None = None,
    status: ModelStatus = ModelStatus.READY,
    reason: str | None = None,
    step: int | None = None,
    files: dict[str, bytes] | None = None,
) -> ModelVersion:
    """A model version of ``caller`` stored in ``directory`` (written unless it exists), as the
    worker records it: sha256 and size from the manifest, the base model in its metrics."""
    if not directory.exists():
        write_model_dir(directory, files or {"model.safetensors": b"weights of " + name.encode()})
    saved = describe(directory)
    version = ModelVersion(
        name=name,
        tenant_id=caller.auth.tenant.id,
        kind=kind,
        parent_id=parent.id if parent is not None else None,
        job_id=job.id if job is not None else None,
        storage_uri=str(directory),
        sha256=saved.sha256,
        size_bytes=saved.size_bytes,
        status=status,
        status_reason=reason,
        step=step,
        metrics={"asr": 0.0, "over_refusal": 0.1, "base_model": BASE_MODEL},
    )
    session.add(version)
    session.commit()
    return version


def upload_training_file(client: TestClient, caller: Caller, content: bytes) -> str:
    """Upload ``content`` as a fine-tuning file through the API; its id."""
    response = client.post(
        "/v1/files",
        files={"file": ("train.jsonl", content)},
        data={"purpose": "fine-tune"},
        headers=caller.headers,
    )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id
