"""Another tenant learns nothing: every endpoint that takes an id, in the path or as a cursor or
filter, answers another tenant's id exactly as it answers an id that exists nowhere.

For each request the intruder's answer to the owner's id is compared with its answer to an id of
the same shape that does not exist: the same status, the same headers and the same body once the
id it echoes is masked. The owner's own answer shows the id is real (else the comparison would
prove nothing), and the owner's objects are unchanged afterwards. The route table below must
cover every operation the OpenAPI document lists with an id, so a new endpoint cannot be missed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.ids import random_token
from app.db.models import AuditRecord, File, FineTuningJob, ModelVersion
from tests.factories import (
    Caller,
    create_caller,
    create_job,
)
from tests.files.test_endpoints import chat_jsonl, upload
from tests.models.test_endpoints import create_lineage

JOBS = "/v1/fine_tuning/jobs"
MASK = "<id>"


@dataclass
class Owned:
    """What the owner has, by id: a file with content, a job with events and a checkpoint, a
    ready patched model (downloadable) and a quarantined fine-tuned one, audit records."""

    file: str
    job: str
    event: str
    checkpoint: str
    checkpoint_name: str
    finetuned: str
    patched: str
    audit_record: str


@pytest.fixture
def owned(client: TestClient, caller: Caller, session: Session, tmp_path: Path) -> Owned:
    status, file = upload(client, caller, chat_jsonl())
    assert status == 200
    models = create_lineage(session, caller, tmp_path)
    patched, job = models.patched, str(models.patched.job_id)
    # A download, so the model has audit records of its own to filter by.
    download = f"/v1/models/{patched.name}/files/model.safetensors"
    assert client.get(download, headers=caller.headers).status_code == 200
    events = client.get(f"{JOBS}/{job}/events", headers=caller.headers).json()["data"]
    records = client.get("/v1/audit", headers=caller.headers).json()["data"]
    return Owned(
        file=str(file["id"]),
        job=job,
        event=events[0]["id"],
        checkpoint=models.checkpoint.id,
        checkpoint_name=models.checkpoint.name,
        finetuned=models.finetuned.name,
        patched=patched.name,
        audit_record=records[0]["id"],
    )


# (method, path, query, headers): "{id}" is the owner's id under test; "{own_job}" is a job of
# the intruder's own (for cursors into another job's events and checkpoints).
Request = tuple[str, str, dict[str, str], dict[str, str]]


def requests_for(owned: Owned) -> list[tuple[str, Request]]:
    """(the owner's id, the request) for every endpoint and parameter that takes an id."""
    ranged = {"Range": "bytes=0-9"}
    by_path: list[tuple[str, Request]] = [
        (owned.file, ("GET", "/v1/files/{id}", {}, {})),
        (owned.file, ("GET", "/v1/files/{id}/content", {}, {})),
        (owned.file, ("DELETE", "/v1/files/{id}", {}, {})),
        (owned.job, ("GET", JOBS + "/{id}", {}, {})),
        (owned.job, ("POST", JOBS + "/{id}/cancel", {}, {})),
        (owned.job, ("GET", JOBS + "/{id}/events", {}, {})),
        (owned.job, ("GET", JOBS + "/{id}/checkpoints", {}, {})),
    ]
    for model in (owned.patched, owned.finetuned, owned.checkpoint_name):
        by_path += [
            (model, ("GET", "/v1/models/{id}", {}, {})),
            (model, ("GET", "/v1/models/{id}/files", {}, {})),
            (model, ("GET", "/v1/models/{id}/files/model.safetensors", {}, ranged)),
            (model, ("GET", "/v1/models/{id}/files/manifest.json", {}, {})),
        ]
    by_query: list[tuple[str, Request]] = [
        (owned.file, ("GET", "/v1/files", {"after": "{id}"}, {})),
        (owned.job, ("GET", JOBS, {"after": "{id}"}, {})),
        (owned.event, ("GET", JOBS + "/{own_job}/events", {"after": "{id}"}, {})),
        (owned.checkpoint, ("GET", JOBS + "/{own_job}/checkpoints", {"after": "{id}"}, {})),
        (owned.audit_record, ("GET", "/v1/audit", {"after": "{id}"}, {})),
        (owned.job, ("GET", "/v1/audit", {"job": "{id}"}, {})),
        (owned.patched, ("GET", "/v1/audit", {"model": "{id}"}, {})),
    ]
    return by_path + by_query


def send(
    client: TestClient, caller: Caller, request: Request, *, id: str, own_job: str
) -> Response:
    method, path, query, headers = request
    fill = {"{id}": id, "{own_job}": own_job}
    for placeholder, value in fill.items():
        path = path.replace(placeholder, value)
    params = {name: fill.get(value, value) for name, value in query.items()}
    return client.request(method, path, params=params, headers=caller.headers | headers)


def missing_like(real: str) -> str:
    """An id of the same length and prefix that exists nowhere."""
    return real[:-10] + random_token(10)


def masked(response: Response, id: str) -> tuple[int, dict[str, str], object]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date",)}
    body = json.loads(response.text.replace(json.dumps(id)[1:-1], MASK))
    return response.status_code, headers, body


def test_another_tenant_gets_for_every_id_what_a_missing_id_gets(
    client: TestClient, caller: Caller, session: Session, owned: Owned
) -> None:
    intruder = create_caller(session)
    own_job = create_job(session, intruder).id
    before = snapshot(session)

    for real, request in requests_for(owned):
        fake = missing_like(real)
        seen = masked(send(client, intruder, request, id=real, own_job=own_job), real)
        nowhere = masked(send(client, intruder, request, id=fake, own_job=own_job), fake)
        assert seen == nowhere, request
        _, path, query, _ = request
        if "{id}" in path or "after" in query:  # an object named in the path, or a cursor
            assert seen[0] == 404, request
            assert MASK in json.dumps(seen[2]), request  # the id echoed is the caller's own
        else:  # a filter: nothing matches, as for any id that is not the caller's
            assert seen[0] == 200 and seen[2]["data"] == [], request

    assert snapshot(session) == before  # no cancel, delete, download or record


def test_the_owner_reaches_every_one_of_those_ids(
    client: TestClient, caller: Caller, session: Session, owned: Owned
) -> None:
    """Without this, the comparison above could be between two ids that both exist nowhere."""
    own_job = create_job(session, caller).id
    for real, request in requests_for(owned):
        method, _, query, _ = request
        if method != "GET" or "after" in query:  # cancel/delete would change the objects;
            continue  # a cursor into another job, or the first page's, is rightly empty
        response = send(client, caller, request, id=real, own_job=own_job)
        assert response.status_code in (200, 206, 403), (request, response.text)
        if "job" in query or "model" in query:
            assert response.json()["data"], request


def test_every_operation_that_takes_an_id_is_walked(client: TestClient, owned: Owned) -> None:
    document = client.get("/openapi.json").json()
    walked = [
        (method, path.replace("{id}", "x").replace("{own_job}", "x"))
        for _, (method, path, _, _) in requests_for(owned)
    ]
    for path, operations in document["paths"].items():
        pattern = re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method, operation in operations.items():
            queries = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            if "{" in path or queries & {"after", "job", "model"}:
                assert any(m == method.upper() and pattern.match(p) for m, p in walked), (
                    f"{method.upper()} {path} takes an id and is not walked"
                )


def snapshot(session: Session) -> tuple[object, ...]:
    session.expire_all()
    return (
        session.scalar(select(func.count()).select_from(File)),
        session.scalars(select(FineTuningJob.status).order_by(FineTuningJob.id)).all(),
        session.scalars(select(FineTuningJob.cancel_requested).order_by(FineTuningJob.id)).all(),
        session.scalar(select(func.count()).select_from(ModelVersion)),
        session.scalar(select(func.count()).select_from(AuditRecord)),
    )
