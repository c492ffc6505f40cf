from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord, FineTuningJob, JobEvent, ModelKind, ModelStatus, ModelVersion
from app.jobs.states import JobStage, JobStatus, transition
from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, create_caller, create_job, create_model_version

JOBS = "/v1/fine_tuning/jobs"


TRAIN_JSONL = b"".join(
    [
        b'{"messages": [{"role": "user", "content": "Hi?"}, ',
        b'{"role": "assistant", "content": "Hello."}]}\n',
    ]
)


def upload_file(client: TestClient, caller: Caller, purpose: str = "fine-tune") -> str:
    response = client.post(
        "/v1/files",
        files={"file": ("train.jsonl", TRAIN_JSONL)},
        data={"purpose": purpose},
        headers=caller.headers,
    )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def post_job(client: TestClient, caller: Caller, **fields: Any) -> dict[str, Any]:
    if "training_file" not in fields:
        fields["training_file"] = upload_file(client, caller)
    body = {"model": "smollm2-135m-instruct"} | fields
    response = client.post(JOBS, json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_create_returns_a_queued_openai_job_and_enqueues_it_after_commit(
    client: TestClient, caller: Caller, task_queue: RecordingQueue, session: Session
) -> None:
    training_file, validation_file = upload_file(client, caller), upload_file(client, caller)
    job = post_job(
        client,
        caller,
        training_file=training_file,
        validation_file=validation_file,
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 0.5},
        seed=42,
        suffix="sql-bot",
        metadata={"team": "data"},
    )

    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert (job["status"], job["stage"]) == ("queued", None)
    assert job["organization_id"] == caller.auth.tenant.id
    assert job["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": "auto",
        "learning_rate_multiplier": 0.5,
    }
    assert (job["training_file"], job["validation_file"]) == (training_file, validation_file)
    assert (job["seed"], job["suffix"], job["metadata"]) == (42, "sql-bot", {"team": "data"})
    assert job["finished_at"] is None and job["fine_tuned_model"] is None
    assert isinstance(job["created_at"], int)
    assert task_queue.job_ids == [job["id"]]
    # Enqueued only once the row is committed (visible to a fresh session).
    stored = session.get(FineTuningJob, job["id"])
    assert stored is not None and stored.status == JobStatus.QUEUED


def test_create_defaults(client: TestClient, caller: Caller) -> None:
    job = post_job(client, caller)
    assert job["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert 0 <= job["seed"] < 2**31
    assert job["validation_file"] is None and job["metadata"] is None


def test_create_writes_events_and_a_hash_chained_audit_trail(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = post_job(client, caller)
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.seq)
    ).all()
    assert [(event.seq, event.message) for event in events] == [
        (1, f"Created fine-tuning job: {job['id']}"),
        (2, "Job queued"),
    ]
    audit = session.scalars(
        select(AuditRecord).where(AuditRecord.subject_id == job["id"]).order_by(AuditRecord.seq)
    ).all()
    assert [record.action for record in audit] == ["job.created", "job.state_changed"]
    assert audit[0].actor == f"api_key:{caller.auth.api_key.id}"
    assert audit[1].payload["to"] == {"status": "queued", "stage": None}
    assert audit[1].prev_hash == audit[0].hash


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m"}, "training_file", "missing_required_parameter"),
        ({"training_file": "f"}, "model", "missing_required_parameter"),
        (
            {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
            "invalid_value",
        ),
        (
            {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": "many"}},
            "hyperparameters.n_epochs",
            None,
        ),
        ({"model": "m", "training_file": "f", "suffix": "has:colon"}, "suffix", "invalid_value"),
        ({"model": "m", "training_file": "f", "seed": "x"}, "seed", "invalid_type"),
        (
            {"model": "m", "training_file": "f", "metadata": {str(i): "v" for i in range(17)}},
            "metadata",
            "invalid_value",
        ),
        ({"model": "m", "training_file": "f", "bogus": 1}, "bogus", "unknown_parameter"),
    ],
)
def test_invalid_create_is_an_openai_400_naming_the_parameter(
    client: TestClient,
    caller: Caller,
    task_queue: RecordingQueue,
    body: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    response = client.post(JOBS, json=body, headers=caller.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert param in error["message"]
    assert task_queue.job_ids == []


def test_get_and_list_only_see_the_callers_jobs(
    client: TestClient, caller: Caller, session: Session
) -> None:
    other = create_caller(session)
    mine = create_job(session, caller)
    theirs = create_job(session, other)

    assert client.get(f"{JOBS}/{mine.id}", headers=caller.headers).json()["id"] == mine.id
    response = client.get(f"{JOBS}/{theirs.id}", headers=caller.headers)
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "fine_tuning_job_id"
    listed = client.get(JOBS, headers=caller.headers).json()
    assert [job["id"] for job in listed["data"]] == [mine.id]
    cancel = client.post(f"{JOBS}/{theirs.id}/cancel", headers=caller.headers)
    assert cancel.status_code == 404


def test_list_pages_newest_first(client: TestClient, caller: Caller, session: Session) -> None:
    created = [create_job(session, caller).id for _ in range(5)]
    newest_first = created[::-1]

    first = client.get(JOBS, params={"limit": 2}, headers=caller.headers).json()
    assert first["object"] == "list"
    assert [job["id"] for job in first["data"]] == newest_first[:2]
    assert first["has_more"] is True
    second = client.get(
        JOBS, params={"limit": 2, "after": newest_first[1]}, headers=caller.headers
    ).json()
    assert [job["id"] for job in second["data"]] == newest_first[2:4]
    last = client.get(
        JOBS, params={"limit": 2, "after": newest_first[3]}, headers=caller.headers
    ).json()
    assert [job["id"] for job in last["data"]] == newest_first[4:]
    assert last["has_more"] is False


def test_list_filters_by_metadata_pairs(
    client: TestClient, caller: Caller, session: Session
) -> None:
    odd = {'quote"d': "1", "é k": "ü", "a.b[c]": "x"}  # keys a JSON path cannot always name
    red = create_job(session, caller, metadata={"team": "red", "run": "1"} | odd).id
    blue = create_job(session, caller, metadata={"team": "blue", "run": "1"}).id
    red_again = create_job(session, caller, metadata={"team": "red", "run": "2"}).id
    create_job(session, caller)  # no metadata at all
    create_job(session, create_caller(session), metadata={"team": "red", "run": "1"})

    def listed(params: dict[str, Any]) -> list[str]:
        response = client.get(JOBS, params=params, headers=caller.headers)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    assert listed({"metadata[team]": "red"}) == [red_again, red]
    assert listed({"metadata[team]": "red", "metadata[run]": "1"}) == [red]  # every pair
    assert listed({"metadata[run]": "1"}) == [blue, red]
    assert listed({"metadata[team]": "green"}) == []
    assert listed({"metadata[missing]": "red"}) == []
    for key, value in odd.items():
        assert listed({f"metadata[{key}]": value}) == [red], key
    assert listed({'metadata[quote"d]': "2"}) == []
    # The filter and the cursor together.
    page = client.get(JOBS, params={"metadata[team]": "red", "limit": 1}, headers=caller.headers)
    assert [job["id"] for job in page.json()["data"]] == [red_again] and page.json()["has_more"]
    assert listed({"metadata[team]": "red", "after": red_again}) == [red]


def test_a_malformed_metadata_filter_is_a_400(client: TestClient, caller: Caller) -> None:
    for params in ({"metadata": "team"}, {"metadata[team]": "re\x00d"}):
        response = client.get(JOBS, params=params, headers=caller.headers)
        assert response.status_code == 400, params
        assert response.json()["error"]["param"].startswith("metadata")
    # Only the jobs list takes it.
    files = client.get("/v1/files", params={"metadata[team]": "red"}, headers=caller.headers)
    assert files.status_code == 400 and files.json()["error"]["code"] == "unknown_parameter"
    unknown = client.get(JOBS, params={"meta[team]": "red"}, headers=caller.headers)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "meta[team]"


def test_list_rejects_a_limit_out_of_range(client: TestClient, caller: Caller) -> None:
    response = client.get(JOBS, params={"limit": 101}, headers=caller.headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


def test_cancel_a_queued_job_cancels_it_at_once(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    response = client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None


def test_cancel_a_running_job_asks_the_worker(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    transition(job, JobStatus.RUNNING, JobStage.FINE_TUNING)
    transition(job, JobStatus.RUNNING, JobStage.EVALUATING)
    session.commit()

    body = client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers).json()
    assert (body["status"], body["stage"], body["cancel_requested"]) == (
        "running",
        "evaluating",
        True,
    )
    again = client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers).json()
    assert again["cancel_requested"] is True
    messages = [
        e["message"]
        for e in client.get(f"{JOBS}/{job.id}/events", headers=caller.headers).json()["data"]
    ]
    assert messages.count("Cancellation requested; the worker stops at the next checkpoint") == 1


def test_cancel_a_finished_job_is_a_409(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers)
    response = client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_job_state"


def test_events_are_listed_newest_first_with_a_cursor(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    client.post(f"{JOBS}/{job.id}/cancel", headers=caller.headers)
    url = f"{JOBS}/{job.id}/events"

    page = client.get(url, params={"limit": 2}, headers=caller.headers).json()
    assert [e["message"] for e in page["data"]] == ["Job cancelled", "Job queued"]
    assert page["data"][0]["object"] == "fine_tuning.job.event"
    assert page["has_more"] is True
    rest = client.get(url, params={"after": page["data"][-1]["id"]}, headers=caller.headers).json()
    assert [e["message"] for e in rest["data"]] == [f"Created fine-tuning job: {job.id}"]
    assert rest["has_more"] is False


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_a_file_that_does_not_exist_is_a_400_naming_it(
    client: TestClient, caller: Caller, task_queue: RecordingQueue, param: str
) -> None:
    body = {
        "model": BASE_MODEL,
        "training_file": upload_file(client, caller),
        param: "file-missing",
    }
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Invalid file ID: file-missing",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_file_id",
    }
    assert task_queue.job_ids == []


def test_an_unknown_base_model_is_a_400_listing_the_available_ones(
    client: TestClient, caller: Caller, session: Session, task_queue: RecordingQueue
) -> None:
    body = {"model": "gpt-7", "training_file": upload_file(client, caller)}
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_available")
    assert "'gpt-7'" in error["message"] and BASE_MODEL in error["message"]
    assert session.scalars(select(FineTuningJob)).all() == []
    assert task_queue.job_ids == []


def test_another_tenants_file_cannot_be_used(
    client: TestClient, caller: Caller, session: Session
) -> None:
    other = create_caller(session)
    foreign = upload_file(client, other)
    response = client.post(
        JOBS, json={"model": BASE_MODEL, "training_file": foreign}, headers=caller.headers
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"
    assert session.scalars(select(FineTuningJob)).all() == []


def test_safety_extension_is_stored_and_shown(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = post_job(
        client,
        caller,
        safety={"asr_threshold": 0.1, "auto_patch": False, "strategy": "projection"},
    )

    assert job["safety"] == {
        "asr_threshold": 0.1,
        "auto_patch": False,
        "strategy": "projection",
        "baseline": None,
        "fine_tuned": None,
        "patched": None,
        "drift": None,
        "patch_status": "pending",
        "patch": None,
    }
    stored = session.get(FineTuningJob, job["id"])
    assert stored is not None
    assert stored.safety_settings["asr_threshold"] == 0.1


def test_safety_defaults(client: TestClient, caller: Caller) -> None:
    safety = post_job(client, caller)["safety"]
    assert (safety["asr_threshold"], safety["auto_patch"], safety["strategy"]) == (
        0.05,
        True,
        "sft",
    )


@pytest.mark.parametrize(
    ("safety", "param"),
    [
        ({"asr_threshold": 2}, "safety.asr_threshold"),
        ({"strategy": "magic"}, "safety.strategy"),
        ({"bogus": 1}, "safety.bogus"),
    ],
)
def test_bad_safety_settings_are_400s(
    client: TestClient, caller: Caller, safety: dict[str, Any], param: str
) -> None:
    body = {"model": BASE_MODEL, "training_file": upload_file(client, caller), "safety": safety}
    response = client.post(JOBS, json=body, headers=caller.headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_the_job_carries_openais_other_fields(client: TestClient, caller: Caller) -> None:
    job = post_job(client, caller, hyperparameters={"n_epochs": 2}, suffix="sql-bot")

    assert job["estimated_finish"] is None  # no worker has measured a step yet
    assert job["result_files"] == [] and job["integrations"] is None
    assert job["user_provided_suffix"] == "sql-bot"
    assert job["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
            }
        },
    }


def test_hyperparameters_may_come_under_method(
    client: TestClient, caller: Caller, session: Session
) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}}
    job = post_job(client, caller, method=method)

    expected = {"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto"}
    assert job["hyperparameters"] == expected
    assert job["method"]["supervised"]["hyperparameters"] == expected
    stored = session.get(FineTuningJob, job["id"])
    assert stored is not None and stored.hyperparameters == expected
    # A method without hyperparameters means the defaults.
    bare = post_job(client, caller, method={"type": "supervised"})
    assert bare["hyperparameters"]["batch_size"] == "auto"


def test_hyperparameters_given_twice_must_agree(
    client: TestClient, caller: Caller, task_queue: RecordingQueue
) -> None:
    same = post_job(
        client,
        caller,
        hyperparameters={"n_epochs": 3},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto"}},
        },
    )
    assert same["hyperparameters"]["n_epochs"] == 3

    body = {
        "model": BASE_MODEL,
        "training_file": upload_file(client, caller),
        "hyperparameters": {"n_epochs": 3},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5}}},
    }
    response = client.post(JOBS, json=body, headers=caller.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("method", "conflicting_hyperparameters")
    assert "'hyperparameters' and 'method.supervised.hyperparameters' disagree" in error["message"]
    assert task_queue.job_ids == [same["id"]]


@pytest.mark.parametrize(
    "method",
    [
        {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
        {"type": "reinforcement"},
        {"type": "magic"},
    ],
)
def test_only_supervised_fine_tuning_is_offered(
    client: TestClient, caller: Caller, task_queue: RecordingQueue, method: dict[str, Any]
) -> None:
    body = {"model": BASE_MODEL, "training_file": upload_file(client, caller), "method": method}
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("method.type", "invalid_value")
    assert f"only 'supervised' fine-tuning is supported, not '{method['type']}'" in error["message"]
    assert task_queue.job_ids == []


def test_a_method_without_its_type_is_a_400(client: TestClient, caller: Caller) -> None:
    body = {
        "model": BASE_MODEL,
        "training_file": upload_file(client, caller),
        "method": {"supervised": {"hyperparameters": {"n_epochs": 2}}},
    }
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "method.type"


def test_estimated_finish_is_shown_while_training_and_cleared_after(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    transition(job, JobStatus.RUNNING, JobStage.FINE_TUNING)
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    job.estimated_finish = moment
    session.commit()

    shown = client.get(f"{JOBS}/{job.id}", headers=caller.headers).json()
    assert shown["estimated_finish"] == int(moment.timestamp())
    transition(job, JobStatus.RUNNING, JobStage.EVALUATING)
    session.commit()
    assert client.get(f"{JOBS}/{job.id}", headers=caller.headers).json()["estimated_finish"] is None


def checkpoint(
    session: Session, caller: Caller, job: FineTuningJob, tmp_path: Path, step: int
) -> ModelVersion:
    return create_model_version(
        session,
        caller,
        tmp_path / f"step-{step}",
        name=f"ft:{BASE_MODEL}:{job.id}:ckpt-step-{step}",
        kind=ModelKind.CHECKPOINT,
        job=job,
        status=ModelStatus.QUARANTINED,
        reason="an intermediate checkpoint is never safety-verified",
        step=step,
    )


def test_checkpoints_are_listed_latest_step_first_with_a_cursor(
    client: TestClient, caller: Caller, session: Session, tmp_path: Path
) -> None:
    job = create_job(session, caller)
    made = [checkpoint(session, caller, job, tmp_path, step) for step in (4, 12, 8)]
    url = f"{JOBS}/{job.id}/checkpoints"

    page = client.get(url, params={"limit": 2}, headers=caller.headers).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["step_number"] for c in page["data"]] == [12, 8]
    assert (page["first_id"], page["last_id"]) == (made[1].id, made[2].id)
    first = page["data"][0]
    assert first["object"] == "fine_tuning.job.checkpoint"
    assert first["fine_tuned_model_checkpoint"] == made[1].name
    assert first["fine_tuning_job_id"] == job.id
    assert first["status"] == "quarantined"
    rest = client.get(url, params={"after": page["last_id"]}, headers=caller.headers).json()
    assert [c["step_number"] for c in rest["data"]] == [4] and rest["has_more"] is False

    other = create_caller(session)
    assert client.get(url, headers=other.headers).status_code == 404
    missing = client.get(url, params={"after": "mv-missing"}, headers=caller.headers)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "after"
