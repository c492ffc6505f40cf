from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db.base import utcnow
from app.db.models import ModelKind
from tests.factories import BASE_MODEL, Caller, create_caller, create_job, create_model_version

AUDIT = "/v1/audit"


def actions(body: dict[str, object]) -> list[str]:
    data = body["data"]
    assert isinstance(data, list)
    return [item["action"] for item in data]


def test_lists_the_tenants_records_newest_first(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    body = client.get(AUDIT, params={"job": job.id}, headers=caller.headers).json()

    assert body["object"] == "list" and body["has_more"] is False
    assert actions(body) == ["job.state_changed", "job.created"]
    record = body["data"][1]
    assert record["object"] == "audit.record"
    assert record["subject"] == {"type": "fine_tuning_job", "id": job.id}
    assert record["actor"] == caller.auth.actor
    assert record["payload"]["model"] == "smollm2-135m-instruct"
    assert isinstance(record["created_at"], int) and len(record["hash"]) == 64


def test_filters_by_action_model_and_time(
    client: TestClient, caller: Caller, session: Session
) -> None:
    create_job(session, caller)
    audit.record(
        session,
        action="model.downloaded",
        subject_type="model_version",
        subject_id="ft:m:abc",
        actor=caller.auth.actor,
        tenant_id=caller.auth.tenant.id,
        payload={},
    )
    session.commit()
    headers = caller.headers

    created = client.get(AUDIT, params={"action": "job.created"}, headers=headers).json()
    assert actions(created) == ["job.created"]
    by_model = client.get(AUDIT, params={"model": "ft:m:abc"}, headers=headers).json()
    assert actions(by_model) == ["model.downloaded"]
    now = int(utcnow().timestamp())
    future = client.get(AUDIT, params={"since": now + 3600}, headers=headers).json()
    assert future["data"] == []
    past = client.get(AUDIT, params={"until": now - 3600}, headers=headers).json()
    assert past["data"] == []
    window = {"since": now - 3600, "until": now + 3600, "action": "model.downloaded"}
    assert actions(client.get(AUDIT, params=window, headers=headers).json()) == ["model.downloaded"]


def record(
    session: Session, caller: Caller, action: str, subject: tuple[str, str], **payload: Any
) -> None:
    audit.record(
        session,
        action=action,
        subject_type=subject[0],
        subject_id=subject[1],
        actor="worker:test",
        tenant_id=caller.auth.tenant.id,
        payload=payload,
    )
    session.commit()


def test_model_filter_returns_the_records_about_the_model(
    client: TestClient, caller: Caller, session: Session, tmp_path: Path
) -> None:
    # A job's trail as the worker writes it (workers/job_pipeline.py), then a download.
    job = create_job(session, caller)
    other_job = create_job(session, caller)
    subject = ("fine_tuning_job", job.id)
    finetuned = create_model_version(session, caller, tmp_path / "ft", name="ft:m:1", job=job)
    patched = create_model_version(
        session,
        caller,
        tmp_path / "patched",
        name="ft:m:1:patched",
        kind=ModelKind.PATCHED,
        parent=finetuned,
        job=job,
    )
    record(session, caller, "evaluation.recorded", subject, model=BASE_MODEL, stage="base")
    record(session, caller, "model_version.created", subject, model=finetuned.name)
    record(session, caller, "evaluation.recorded", subject, model=finetuned.name, stage="x")
    record(session, caller, "safety.drift_decided", subject, model=finetuned.name)
    record(session, caller, "safety.patch_accepted", subject, model=patched.name)
    record(session, caller, "model.downloaded", ("model", patched.name), model=patched.name)
    other = ("fine_tuning_job", other_job.id)
    record(session, caller, "evaluation.recorded", other, model=BASE_MODEL, stage="base")
    stranger = create_caller(session)
    record(
        session, stranger, "evaluation.recorded", ("fine_tuning_job", "ftjob-x"), model=BASE_MODEL
    )

    def about(model: str, **params: Any) -> list[tuple[str, str]]:
        body = client.get(AUDIT, params={"model": model} | params, headers=caller.headers).json()
        return [(r["action"], r["payload"].get("model", "")) for r in body["data"]]

    job_trail = [
        ("safety.patch_accepted", patched.name),
        ("safety.drift_decided", finetuned.name),
        ("evaluation.recorded", finetuned.name),
        ("model_version.created", finetuned.name),
        ("evaluation.recorded", BASE_MODEL),  # the baseline, measured in this job
        ("job.state_changed", ""),
        ("job.created", BASE_MODEL),
    ]
    # The patched version: its download and everything the job that made it recorded.
    assert about(patched.name) == [("model.downloaded", patched.name), *job_trail]
    assert about(finetuned.name) == job_trail  # the patched model's download is not about it
    assert about(patched.name, action="evaluation.recorded") == [
        ("evaluation.recorded", finetuned.name),
        ("evaluation.recorded", BASE_MODEL),
    ]
    # A base model: the records naming it, in every job of the tenant's (none of the other's).
    assert about(BASE_MODEL) == [
        ("evaluation.recorded", BASE_MODEL),
        ("evaluation.recorded", BASE_MODEL),
        ("job.created", BASE_MODEL),
        ("job.created", BASE_MODEL),
    ]
    # Another tenant's model is a model nobody has.
    stranger_view = client.get(AUDIT, params={"model": patched.name}, headers=stranger.headers)
    assert stranger_view.status_code == 200 and stranger_view.json()["data"] == []
    assert about("ft:nobody:has") == []


def test_cursor_pagination_walks_every_record_once(
    client: TestClient, caller: Caller, session: Session
) -> None:
    for _ in range(3):
        create_job(session, caller)
    everything = client.get(AUDIT, headers=caller.headers).json()["data"]
    seen: list[str] = []
    params: dict[str, object] = {"limit": 2}
    while True:
        page = client.get(AUDIT, params=params, headers=caller.headers).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        params["after"] = page["data"][-1]["id"]
    assert seen == [item["id"] for item in everything]
    assert len(seen) == len(set(seen)) >= 6


def test_another_tenant_sees_none_of_the_records(
    client: TestClient, caller: Caller, session: Session
) -> None:
    job = create_job(session, caller)
    other = create_caller(session)
    body = client.get(AUDIT, params={"job": job.id}, headers=other.headers).json()
    assert body["data"] == []
    mine = client.get(AUDIT, params={"job": job.id}, headers=caller.headers).json()
    cursor = mine["data"][0]["id"]
    response = client.get(AUDIT, params={"after": cursor}, headers=other.headers)
    assert response.status_code == 404


def test_bad_filters_are_400s(client: TestClient, caller: Caller) -> None:
    both = client.get(AUDIT, params={"job": "a", "model": "b"}, headers=caller.headers)
    assert both.status_code == 400
    negative = client.get(AUDIT, params={"since": -1}, headers=caller.headers)
    assert negative.status_code == 400 and negative.json()["error"]["param"] == "since"
    # Past year 9999 (datetime's end) or time_t: found by tests/test_api_fuzz.py as 500s.
    for name, value in [("since", 253_402_300_800), ("until", 2**63), ("since", 67768036191676800)]:
        beyond = client.get(AUDIT, params={name: value}, headers=caller.headers)
        assert beyond.status_code == 400, (name, value)
        assert beyond.json()["error"]["param"] == name
    last = client.get(AUDIT, params={"until": 253_402_300_799}, headers=caller.headers)
    assert last.status_code == 200
