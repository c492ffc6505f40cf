from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.core import db
from app.core.db import after_commit, create_db_engine, session_scope
from app.core.dependencies import SessionDep
from app.core.errors import InvalidRequest
from app.db import migrate
from app.db.models import Tenant


def tenant_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Tenant)) or 0


def test_request_transaction_commits_then_runs_after_commit_callbacks(
    app: FastAPI, session: Session
) -> None:
    calls: list[str] = []

    @app.post("/test/ok")
    def ok(session: SessionDep) -> None:
        session.add(Tenant(name="committed"))
        session.flush()
        after_commit(session, lambda: calls.append("enqueued"))

    with TestClient(app) as client:
        assert client.post("/test/ok").status_code == 200
    assert calls == ["enqueued"]
    assert tenant_count(session) == 1


def test_failed_request_rolls_back_and_never_runs_its_callbacks(
    app: FastAPI, session: Session
) -> None:
    calls: list[str] = []

    @app.post("/test/fails")
    def fails(session: SessionDep) -> None:
        session.add(Tenant(name="rolled-back"))
        session.flush()
        after_commit(session, lambda: calls.append("enqueued"))
        raise InvalidRequest("no")

    with TestClient(app) as client:
        assert client.post("/test/fails").status_code == 400
    assert calls == []
    assert tenant_count(session) == 0


def test_a_failing_commit_is_an_error_response_not_a_200(app: FastAPI, session: Session) -> None:
    @app.post("/test/duplicate")
    def duplicate(session: SessionDep) -> None:
        # The unique violation surfaces at the commit, after the handler returned.
        session.add_all([Tenant(name="twin"), Tenant(name="twin")])

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/test/duplicate")
    assert response.status_code == 500
    assert tenant_count(session) == 0


def test_a_failing_callback_is_logged_not_raised(session: Session) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ConnectionError("broker down")

    after_commit(session, broken)
    after_commit(session, lambda: ran.append("second"))
    db.run_after_commit(session)
    assert ran == ["second"]


def test_session_scope_commits_or_rolls_back(session_factory: db.SessionFactory) -> None:
    calls: list[str] = []
    with session_scope(session_factory) as session:
        session.add(Tenant(name="kept"))
        after_commit(session, lambda: calls.append("after"))
    assert calls == ["after"]
    with pytest.raises(RuntimeError), session_scope(session_factory) as session:
        session.add(Tenant(name="dropped"))
        after_commit(session, lambda: calls.append("never"))
        raise RuntimeError
    with session_factory() as session:
        assert session.scalars(select(Tenant.name)).all() == ["kept"]
    assert calls == ["after"]


def test_sqlite_connections_are_shareable_between_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        # Foreign keys are enforced, not just declared.
        with pytest.raises(Exception, match="FOREIGN KEY"):
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, created_at) "
                    "VALUES ('k', 'no-such-tenant', 'sp-', 'h', '2026-01-01')"
                )
            )
    engine.dispose()


def test_a_forked_process_gets_its_own_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAFEPATCH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SAFEPATCH_DATABASE_URL", raising=False)
    db.get_settings.cache_clear()
    db.reset_engine()
    try:
        parent = db.get_engine()
        assert db.get_engine() is parent
        monkeypatch.setattr(db.os, "getpid", lambda: -1)  # as seen from a forked child
        child = db.get_engine()
        assert child is not parent
        assert str(child.url) == f"sqlite:///{tmp_path / 'safepatch.db'}"
    finally:
        db.reset_engine()
        db.get_settings.cache_clear()
