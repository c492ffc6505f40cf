"""The storage quota counts a tenant's model versions as well as its files: once they fill it, a
new job is a 413 ``storage_quota_exceeded`` saying what takes the room, and so is an upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import FineTuningJob, ModelKind, ModelStatus, ModelVersion
from tests.factories import (
    BASE_MODEL,
    Caller,
    create_caller,
    create_file,
    create_job,
    make_settings,
)
from tests.files.test_endpoints import chat_jsonl, upload

JOBS = "/v1/fine_tuning/jobs"
QUOTA = 10_000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, upload_min_examples=1, storage_quota_bytes_per_tenant=QUOTA)


def add_model(session: Session, caller: Caller, size: int) -> ModelVersion:
    """A checkpoint a job of ``caller`` left, taking ``size`` bytes."""
    job = create_job(session, caller)
    version = ModelVersion(
        name=f"ft:{BASE_MODEL}:{job.id}:ckpt-step-1",
        tenant_id=caller.auth.tenant.id,
        job_id=job.id,
        kind=ModelKind.CHECKPOINT,
        storage_uri="/nonexistent",
        sha256="0" * 64,
        size_bytes=size,
        status=ModelStatus.QUARANTINED,
        step=1,
    )
    session.add(version)
    session.commit()
    return version


def jobs(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(FineTuningJob)) or 0


def test_models_filling_the_quota_refuse_a_new_job(
    client: TestClient, caller: Caller, session: Session
) -> None:
    body = {"model": BASE_MODEL, "training_file": create_file(session, caller).id}
    add_model(session, caller, QUOTA - 1)
    assert client.post(JOBS, json=body, headers=caller.headers).status_code == 200

    add_model(session, caller, 1)  # now exactly full: a job's models would not fit
    before = jobs(session)
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("storage_quota_exceeded", "invalid_request_error")
    assert f"take {QUOTA} bytes (files 0, models {QUOTA})" in error["message"]
    assert f"the quota is {QUOTA} bytes" in error["message"]
    assert jobs(session) == before

    # Per tenant: another's models take none of this tenant's room, nor the other way round.
    other = create_caller(session)
    other_body = {"model": BASE_MODEL, "training_file": create_file(session, other).id}
    assert client.post(JOBS, json=other_body, headers=other.headers).status_code == 200


def test_models_count_against_an_upload(
    client: TestClient, caller: Caller, session: Session
) -> None:
    data = chat_jsonl(3)
    add_model(session, caller, QUOTA - len(data) + 1)

    status, body = upload(client, caller, data)

    assert status == 413
    assert body["error"]["code"] == "storage_quota_exceeded"
    assert f"models {QUOTA - len(data) + 1})" in body["error"]["message"]
