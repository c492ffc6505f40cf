"""app.core.limits: a NUL in any id or filter is a 4xx on every endpoint, never a database error
(PostgreSQL can't compare text containing NUL); body limits are covered with the files API."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.factories import Caller, create_job

NUL = "%00"
PATHS = [
    ("GET", f"/v1/files/file-{NUL}x"),
    ("GET", f"/v1/files/file-{NUL}x/content"),
    ("DELETE", f"/v1/files/file-{NUL}x"),
    ("GET", f"/v1/fine_tuning/jobs/ftjob-{NUL}"),
    ("POST", f"/v1/fine_tuning/jobs/ftjob-{NUL}/cancel"),
    ("GET", f"/v1/fine_tuning/jobs/ftjob-{NUL}/events"),
    ("GET", f"/v1/fine_tuning/jobs/ftjob-{NUL}/checkpoints"),
    ("GET", f"/v1/models/{NUL}"),
    ("GET", f"/v1/models/ft:m:{NUL}/files"),
    ("GET", f"/v1/models/m/files/{NUL}"),
]
QUERIES = [
    ("/v1/files", "after"),
    ("/v1/files", "purpose"),
    ("/v1/fine_tuning/jobs", "after"),
    ("/v1/fine_tuning/jobs/{job}/events", "after"),
    ("/v1/fine_tuning/jobs/{job}/checkpoints", "after"),
    ("/v1/audit", "job"),
    ("/v1/audit", "model"),
    ("/v1/audit", "action"),
    ("/v1/audit", "after"),
]


@pytest.fixture
def lenient_client(app: FastAPI) -> TestClient:
    """A 500 comes back as a response instead of an exception."""
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_a_nul_in_a_path_is_a_404(
    lenient_client: TestClient, caller: Caller, method: str, path: str
) -> None:
    with lenient_client as client:
        response = client.request(method, path, headers=caller.headers)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["message"].startswith(f"Invalid URL ({method} '")
    assert "\\x00" in error["message"]  # the id, as it arrived


@pytest.mark.parametrize(("path", "name"), QUERIES)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(
    lenient_client: TestClient, caller: Caller, session: Session, path: str, name: str
) -> None:
    job = create_job(session, caller)
    with lenient_client as client:
        response = client.get(
            path.format(job=job.id), params={name: "x\x00"}, headers=caller.headers
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (name, "invalid_value")
    assert f"query parameter '{name}'" in error["message"]
