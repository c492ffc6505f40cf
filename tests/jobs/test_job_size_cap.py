"""The job-size cap: a job whose n_epochs x training-file tokens (estimated as the file's bytes)
passes ``SAFEPATCH_MAX_JOB_EPOCH_TOKENS`` is a 400 naming both fields, and nothing is written."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import AuditRecord, File, FileStatus, FineTuningJob
from app.jobs import service as job_service
from tests.factories import BASE_MODEL, Caller, make_settings
from workers.job_spec import AUTO_HYPERPARAMETERS

JOBS = "/v1/fine_tuning/jobs"
FILE_BYTES = 1000
CAP = 10 * FILE_BYTES  # ten epochs over the file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, upload_min_examples=1, max_job_epoch_tokens=CAP)


def training_file(session: Session, caller: Caller, size: int = FILE_BYTES) -> File:
    file = File(
        tenant_id=caller.auth.tenant.id,
        filename="train.jsonl",
        purpose="fine-tune",
        bytes=size,
        sha256=hashlib.sha256(b"x" * size).hexdigest(),
        storage_path="/nonexistent",
        status=FileStatus.PROCESSED,
    )
    session.add(file)
    session.commit()
    return file


def post(client: TestClient, caller: Caller, file: File, n_epochs: Any) -> Any:
    body = {
        "model": BASE_MODEL,
        "training_file": file.id,
        "hyperparameters": {"n_epochs": n_epochs},
    }
    return client.post(JOBS, json=body, headers=caller.headers)


def counts(session: Session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(FineTuningJob)) or 0,
        session.scalar(select(func.count()).select_from(AuditRecord)) or 0,
    )


def test_a_job_at_the_cap_is_created(client: TestClient, caller: Caller, session: Session) -> None:
    response = post(client, caller, training_file(session, caller), 10)
    assert response.status_code == 200, response.text


def test_a_job_past_the_cap_is_a_400_naming_the_fields(
    client: TestClient, caller: Caller, session: Session
) -> None:
    file = training_file(session, caller)
    before = counts(session)

    response = post(client, caller, file, 11)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("job_too_large", "hyperparameters.n_epochs")
    message = error["message"]
    assert "hyperparameters.n_epochs (11)" in message
    assert f"training_file {file.id}" in message
    assert f"{11 * FILE_BYTES}, over the limit of {CAP}" in message
    assert counts(session) == before


def test_auto_epochs_are_sized_as_the_worker_will_run_them(
    client: TestClient, caller: Caller, session: Session
) -> None:
    assert AUTO_HYPERPARAMETERS["n_epochs"] == job_service.AUTO_N_EPOCHS
    # Three epochs over a file of a third of the cap and one byte more: past it.
    big = training_file(session, caller, size=CAP // job_service.AUTO_N_EPOCHS + 1)
    response = post(client, caller, big, "auto")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "job_too_large"
    assert post(client, caller, training_file(session, caller), "auto").status_code == 200
