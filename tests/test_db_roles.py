"""The production roles on a real PostgreSQL: docker/postgres-init/10-safepatch-roles.sh makes
an owner and an application role, `db upgrade` as the owner grants the application role its
privileges (app/db/grants.py), and the API and a worker then run as the application role.

That role can do the service's writes, and cannot change, delete, truncate or untrigger the
audit trail, or drop or create tables: the database keeps the trail append-only, not only the
code. Each test makes its own database and roles (unique names; roles are server-wide) and drops
them afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, exc, text
from sqlalchemy.engine import make_url

from app.core.db import create_db_engine, create_session_factory, session_scope
from app.db.grants import grant_application_role
from app.db.migrate import alembic_config
from app.jobs.states import JobStatus
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.databases import POSTGRES_URL
from tests.factories import BASE_MODEL, create_caller, make_settings
from workers.execution import execute_job
from workers.runtime import JobRun

INIT_SCRIPT = Path(__file__).resolve().parents[1] / "docker/postgres-init/10-safepatch-roles.sh"
INSUFFICIENT_PRIVILEGE = "42501"
TRAIN_JSONL = (
    b'{"messages": [{"role": "user", "content": "Hi?"}, '
    b'{"role": "assistant", "content": "Hello."}]}\n'
)


@dataclass(frozen=True)
class Roles:
    database: str
    owner: str
    app: str

    def url(self, role: str) -> str:
        # Trust auth on the test server: the passwords are set, not checked.
        url = make_url(POSTGRES_URL).set(
            username=role, password=f"{role}-pw", database=self.database
        )
        return url.render_as_string(hide_password=False)


def run_init_script(roles: Roles) -> None:
    """The script the postgres container runs, against the test server."""
    server = make_url(POSTGRES_URL)
    environment = os.environ | {
        "PGHOST": server.host or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "POSTGRES_USER": server.username or "postgres",
        "SAFEPATCH_DB_NAME": roles.database,
        "SAFEPATCH_DB_OWNER": roles.owner,
        "SAFEPATCH_DB_APP_USER": roles.app,
        "SAFEPATCH_DB_OWNER_PASSWORD": "owner-pw",
        "SAFEPATCH_DB_APP_PASSWORD": 'it\'s a "quoted" pw; DROP ROLE x',
    }
    subprocess.run(["sh", str(INIT_SCRIPT)], env=environment, check=True, capture_output=True)


@pytest.fixture
def roles() -> Iterator[Roles]:
    if shutil.which("psql") is None:
        pytest.skip("psql is needed to run the init script")
    suffix = uuid.uuid4().hex[:10]
    roles = Roles(f"safepatch_test_{suffix}", f"sp_owner_{suffix}", f"sp_app_{suffix}")
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        run_init_script(roles)
        config = alembic_config(url=roles.url(roles.owner))
        config.attributes["app_role"] = roles.app
        command.upgrade(config, "head")
        yield roles
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{roles.database}" WITH (FORCE)')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{roles.app}"')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{roles.owner}"')
        admin.dispose()


def refused(url: str, statement: str) -> str:
    """The SQLSTATE with which ``statement`` fails (its transaction rolled back)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection, pytest.raises(exc.DBAPIError) as raised:
            connection.execute(text(statement))
        return str(getattr(raised.value.orig, "sqlstate", None))
    finally:
        engine.dispose()


def test_the_application_role_cannot_tamper_with_the_audit_trail(roles: Roles) -> None:
    app_url = roles.url(roles.app)
    engine = create_db_engine(app_url)
    try:
        with session_scope(create_session_factory(engine)) as session:
            create_caller(session)  # a tenant, its key, and their audit records
    finally:
        engine.dispose()
    for statement in (
        "UPDATE audit_records SET actor = 'someone else'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only",
        "ALTER TABLE audit_records DISABLE TRIGGER ALL",
        "DROP TABLE audit_records",
        "DROP TABLE fine_tuning_jobs",
        "CREATE TABLE shadow (id int)",
        "SELECT * FROM alembic_version",
    ):
        assert refused(app_url, statement) == INSUFFICIENT_PRIVILEGE, statement


def test_the_application_role_runs_the_api_and_a_worker(roles: Roles, tmp_path: Path) -> None:
    engine = create_db_engine(roles.url(roles.app))
    factory = create_session_factory(engine)
    try:
        with session_scope(factory) as session:
            caller = create_caller(session)
        settings = make_settings(tmp_path, upload_min_examples=1)
        app = create_app(
            settings,
            session_factory=factory,
            task_queue=RecordingQueue(),
            broker_check=lambda: None,
        )
        with TestClient(app) as client:
            uploaded = client.post(
                "/v1/files",
                files={"file": ("train.jsonl", TRAIN_JSONL)},
                data={"purpose": "fine-tune"},
                headers=caller.headers,
            )
            assert uploaded.status_code == 200, uploaded.text
            body = {"model": BASE_MODEL, "training_file": uploaded.json()["id"]}
            created = client.post("/v1/fine_tuning/jobs", json=body, headers=caller.headers)
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]

            def pipeline(run: JobRun) -> None:
                run.event("Working", data={"step": 1})
                raise RuntimeError("the worker's writes went through up to here")

            # Claim (lease), events, state changes, the failure and their audit records.
            execute_job(
                job_id, pipeline=pipeline, owner="w", settings=settings, session_factory=factory
            )
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=caller.headers).json()
            assert job["status"] == JobStatus.FAILED
            cancelled = client.delete(f"/v1/files/{uploaded.json()['id']}", headers=caller.headers)
            assert cancelled.status_code == 200, cancelled.text  # a DELETE, too
    finally:
        engine.dispose()


def test_the_grants_refuse_the_role_that_runs_them(roles: Roles) -> None:
    engine = create_engine(roles.url(roles.owner))
    try:
        with engine.begin() as connection, pytest.raises(ValueError, match="does not own"):
            grant_application_role(connection, roles.owner)
        with engine.begin() as connection, pytest.raises(ValueError, match="no role"):
            grant_application_role(connection, f"{roles.app}_missing")
    finally:
        engine.dispose()
