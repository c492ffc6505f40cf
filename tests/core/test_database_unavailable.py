"""The database away (a restart, a fail-over) is a 503 with Retry-After in the one error body,
never a 500; a database error that is a bug stays a 500. The real PostgreSQL restart is in
tests/faults/test_faults.py."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import exc
from sqlalchemy.orm import Session

from app.core.db import is_database_unavailable
from app.core.errors import DATABASE_RETRY_AFTER_S
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import RecordingQueue


class DeadConnection(Exception):
    """What psycopg raises when the server closed the connection or refused it."""


def operational() -> exc.OperationalError:
    return exc.OperationalError("SELECT 1", {}, DeadConnection("server closed the connection"))


@pytest.mark.parametrize(
    "error",
    [
        operational(),
        exc.InterfaceError("SELECT 1", {}, DeadConnection("connection already closed")),
        exc.DBAPIError("SELECT 1", {}, DeadConnection("x"), connection_invalidated=True),
        exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
    ],
    ids=["operational", "interface", "invalidated", "pool-timeout"],
)
def test_these_mean_the_database_is_away(error: Exception) -> None:
    assert is_database_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        exc.IntegrityError("INSERT", {}, DeadConnection("duplicate key")),
        exc.ProgrammingError("SELECT", {}, DeadConnection("relation does not exist")),
        ValueError("not a database error"),
    ],
    ids=["integrity", "programming", "other"],
)
def test_these_are_bugs_not_outages(error: Exception) -> None:
    assert not is_database_unavailable(error)


def app_whose_database_is(settings: Settings, raising: Exception) -> FastAPI:
    def session_factory() -> Session:
        raise raising

    return create_app(
        settings,
        session_factory=session_factory,
        task_queue=RecordingQueue(),
        broker_check=lambda: None,
    )


def test_an_authenticated_request_while_the_database_is_away_is_a_503(settings: Settings) -> None:
    app = app_whose_database_is(settings, operational())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(
            "/v1/fine_tuning/jobs/ftjob-abc", headers={"Authorization": "Bearer sp-x"}
        )
        ready = client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["retry-after"] == str(DATABASE_RETRY_AFTER_S)
    assert response.json() == {
        "error": {
            "message": "The service is temporarily unable to reach its database; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "database_unavailable",
        }
    }
    assert ready.status_code == 503 and ready.headers["retry-after"]
    assert ready.json()["checks"]["database"] == "unavailable"  # the detail is in the log


def test_a_database_error_that_is_a_bug_is_still_a_500(settings: Settings) -> None:
    app = app_whose_database_is(
        settings, exc.ProgrammingError("SELECT", {}, DeadConnection("syntax error"))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/files", headers={"Authorization": "Bearer sp-x"})
    assert response.status_code == 500 and "retry-after" not in response.headers
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] is None
