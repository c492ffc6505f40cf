"""Small factories for test data, written through the services so rows look like real ones."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.service import AuthContext
from app.core.ids import random_token
from app.db.models import File, FileStatus, FineTuningJob
from app.jobs import service as job_service
from app.jobs.schemas import JobCreate


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


def create_caller(session: Session, name: str | None = None) -> Caller:
    """A tenant with an API key, committed in the test's transaction."""
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
    request = JobCreate.model_validate({"model": "smollm2-135m-instruct"} | fields)
    job = job_service.create(session, auth=caller.auth, job_create=request, queue=NullQueue())
    session.commit()
    return job
