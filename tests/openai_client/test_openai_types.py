"""Our JSON against the installed ``openai`` package's own types, field by field.

The client parses leniently (a missing field just reads as None), so a response that "works"
with the SDK can still lack what OpenAI's schema requires. Here every object must validate
strictly, carry every field the type declares (required or optional) unless it is listed as
deliberately omitted, and keep its value through the type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import BaseModel as OpenAIModel
from openai.types import Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ModelKind, ModelStatus
from app.jobs.states import JobStage, JobStatus, transition
from tests.factories import BASE_MODEL, Caller, create_file, create_job, create_model_version
from tests.jobs.test_endpoints import post_job

JOBS = "/v1/fine_tuning/jobs"
# Declared by the type, absent from ours on purpose: OpenAI's own model objects omit it too
# unless a shutdown is announced.
OMITTED: dict[type[OpenAIModel], set[str]] = {Model: {"shutdown_date"}}


def assert_openai_shape(kind: type[OpenAIModel], body: dict[str, Any]) -> OpenAIModel:
    declared = set(kind.model_fields)
    required = {name for name, field in kind.model_fields.items() if field.is_required()}
    assert required <= declared - OMITTED.get(kind, set())
    missing = declared - OMITTED.get(kind, set()) - set(body)
    assert not missing, f"{kind.__name__} fields missing from our JSON: {sorted(missing)}"
    parsed = kind.model_validate(body)
    assert required <= parsed.model_fields_set
    dumped = parsed.model_dump(mode="json", exclude_unset=True)
    for name in declared & set(body):
        assert _plain(dumped[name]) == _plain(body[name]), name
    return parsed


def _plain(value: Any) -> Any:
    """Drop the Nones that a nested OpenAI type fills in for fields we don't send."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_a_job_in_every_state_parses_as_an_openai_fine_tuning_job(
    client: TestClient, caller: Caller, session: Session
) -> None:
    created = client.post(
        JOBS,
        json={
            "model": BASE_MODEL,
            "training_file": create_file(session, caller).id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            "suffix": "shape",
            "metadata": {"k": "v"},
        },
        headers=caller.headers,
    ).json()
    job = assert_openai_shape(FineTuningJob, created)
    assert isinstance(job, FineTuningJob)
    assert job.method is not None and job.method.supervised is not None
    assert job.method.supervised.hyperparameters is not None
    assert job.method.supervised.hyperparameters.n_epochs == 2

    running = create_job(session, caller)
    transition(running, JobStatus.RUNNING, JobStage.FINE_TUNING)
    running.estimated_finish = utcnow()
    failed = create_job(session, caller)
    failed.error = {"code": "safety_patch_failed", "message": "it drifted", "param": None}
    transition(failed, JobStatus.FAILED)
    session.commit()
    for each in (running, failed):
        body = client.get(f"{JOBS}/{each.id}", headers=caller.headers).json()
        assert_openai_shape(FineTuningJob, body)
    failed_body = client.get(f"{JOBS}/{failed.id}", headers=caller.headers).json()
    parsed = FineTuningJob.model_validate(failed_body)
    assert parsed.error is not None and parsed.error.code == "safety_patch_failed"
    running_body = client.get(f"{JOBS}/{running.id}", headers=caller.headers).json()
    assert FineTuningJob.model_validate(running_body).estimated_finish is not None

    listed = client.get(JOBS, headers=caller.headers).json()["data"]
    for item in listed:
        assert_openai_shape(FineTuningJob, item)


def test_events_parse_as_openai_job_events(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers)
    events = client.get(f"{JOBS}/{job.id}/events", headers=caller.headers).json()["data"]

    assert len(events) == 3
    for event in events:
        assert_openai_shape(FineTuningJobEvent, event)


def test_checkpoints_parse_as_openai_job_checkpoints(
    client: TestClient, caller: Caller, session: Session, tmp_path: Path
) -> None:
    job = create_job(session, caller)
    version = create_model_version(
        session,
        caller,
        tmp_path / "ckpt",
        name=f"ft:{BASE_MODEL}:{job.id}:ckpt-step-6",
        kind=ModelKind.CHECKPOINT,
        job=job,
        status=ModelStatus.QUARANTINED,
        reason="an intermediate checkpoint is never safety-verified",
        step=6,
    )
    version.metrics = {"epoch": 2, "step": 6, "train_loss": 0.25, "probe_asr": 0.5}
    session.commit()
    [body] = client.get(f"{JOBS}/{job.id}/checkpoints", headers=caller.headers).json()["data"]

    checkpoint = assert_openai_shape(FineTuningJobCheckpoint, body)
    assert isinstance(checkpoint, FineTuningJobCheckpoint)
    assert (checkpoint.step_number, checkpoint.metrics.train_loss) == (6, 0.25)
    assert (checkpoint.metrics.model_extra or {})["probe_asr"] == 0.5


@pytest.mark.parametrize("which", ["base", "version"])
def test_models_parse_as_openai_models(
    client: TestClient, caller: Caller, session: Session, tmp_path: Path, which: str
) -> None:
    name = BASE_MODEL
    if which == "version":
        name = create_model_version(session, caller, tmp_path / "m", name="ft:shape:m").name
    body = client.get(f"/v1/models/{name}", headers=caller.headers).json()

    model = assert_openai_shape(Model, body)
    assert model.id == name
    for item in client.get("/v1/models", headers=caller.headers).json()["data"]:
        assert_openai_shape(Model, item)


def test_the_check_would_notice_a_missing_field(client: TestClient, caller: Caller) -> None:
    job = post_job(client, caller)
    del job["result_files"]
    with pytest.raises(AssertionError, match="result_files"):
        assert_openai_shape(FineTuningJob, job)
    job_without_optional = post_job(client, caller)
    del job_without_optional["estimated_finish"]
    with pytest.raises(AssertionError, match="estimated_finish"):
        assert_openai_shape(FineTuningJob, job_without_optional)
