"""Database fixtures: every DB test runs on PostgreSQL and on SQLite.

Per test session and backend, one fresh database built with ``alembic upgrade head`` (so the
migrations are what the tests run on). Each test then runs inside a transaction on one connection
that is rolled back at the end: the app's sessions join it with SAVEPOINTs, so their commits are
real commits to the code under test and vanish afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from app.core.db import SessionFactory, create_db_engine
from app.core.settings import Settings
from app.db import migrate
from app.main import create_app
from tests.databases import BACKENDS, scratch_database
from tests.factories import Caller, create_caller, make_settings


class RecordingQueue:
    """Stands in for Celery: remembers what was enqueued."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []

    def enqueue_job(self, job_id: str) -> None:
        self.job_ids.append(job_id)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scratch_database(backend, tmp_path_factory.mktemp("sqlite")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> SessionFactory:
    def factory() -> Session:
        return Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )

    return factory


@pytest.fixture
def session(session_factory: SessionFactory) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Tests upload files of a few examples; the minimum of 10 is tested on its own
    # (tests/files/test_hostile_uploads.py).
    return make_settings(tmp_path, upload_min_examples=1)


@pytest.fixture
def task_queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def app(settings: Settings, session_factory: SessionFactory, task_queue: RecordingQueue) -> FastAPI:
    return create_app(
        settings, session_factory=session_factory, task_queue=task_queue, broker_check=lambda: None
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def caller(session: Session) -> Caller:
    return create_caller(session)


@pytest.fixture(scope="session")
def tiny_safe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model that refuses everything (tests/tiny_models.py), built once (~25 s)."""
    from tests.tiny_models import TINY_SAFE, build_tiny_safe_model

    return build_tiny_safe_model(tmp_path_factory.mktemp("models") / TINY_SAFE).path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the test item, so fixtures can tell if the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
