"""Another tenant's file named in a request body is answered exactly as a file that exists
nowhere: ``POST /v1/fine_tuning/jobs`` with someone else's ``training_file`` or
``validation_file`` gets the same status, headers and body (the id it echoes masked) as with an
id of the same shape that does not exist, and creates and enqueues nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord, FineTuningJob
from tests.auth.test_tenant_isolation import masked, missing_like
from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, create_caller, create_file

JOBS = "/v1/fine_tuning/jobs"


def counts(session: Session) -> tuple[int | None, int | None]:
    return (
        session.scalar(select(func.count()).select_from(FineTuningJob)),
        session.scalar(select(func.count()).select_from(AuditRecord)),
    )


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_another_tenants_file_in_a_job_is_answered_as_a_missing_file(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    param: str,
) -> None:
    theirs = create_file(session, caller).id
    intruder = create_caller(session)
    own = create_file(session, intruder).id
    before = counts(session)

    def post(file_id: str, who: Caller) -> tuple[int, dict[str, str], object]:
        body = {"model": BASE_MODEL, "training_file": own, param: file_id}
        return masked(client.post(JOBS, json=body, headers=who.headers), file_id)

    fake = missing_like(theirs)
    seen, nowhere = post(theirs, intruder), post(fake, intruder)

    assert seen == nowhere
    assert seen[0] == 400
    assert seen[2] == {
        "error": {
            "message": "Invalid file ID: <id>",
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_file_id",
        }
    }
    assert counts(session) == before and task_queue.job_ids == []
    # The id is real: its owner can use it (else both answers would be about missing files).
    mine = {"model": BASE_MODEL, "training_file": theirs, param: theirs}
    assert client.post(JOBS, json=mine, headers=caller.headers).status_code == 200
