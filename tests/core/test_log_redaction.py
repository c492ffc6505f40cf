"""Secrets and tenants' data stay out of the server's logs: passwords in URLs and API keys are
masked in every log line, and production engines log SQL statements without their values."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, exc, text

from app.core import db
from app.core.logging import configure_logging
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.databases import POSTGRES_URL

KEY = "sp-" + "Ab3" * 16
SECRET = "pw-4f9c1e"


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the handler ``configure_logging`` installs writes (to a buffer, not stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO")
    [handler] = root.handlers
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_log_lines_mask_passwords_and_api_keys(logged: io.StringIO) -> None:
    log = logging.getLogger("safepatch.test")
    log.warning("broker redis://:%s@redis:6379/0 is away; key %s refused", SECRET, KEY)
    try:
        raise ConnectionError(f"could not connect to postgresql://app:{SECRET}@db:5432/safepatch")
    except ConnectionError:
        log.exception("startup failed")
    lines = logged.getvalue()
    assert SECRET not in lines
    assert KEY not in lines
    assert "redis://:***@redis:6379/0" in lines
    assert f"{KEY[:8]}***" in lines  # the display prefix, as the audit trail shows it
    assert "postgresql://app:***@db:5432/safepatch" in lines  # inside the traceback too


def failing_insert(engine: Engine) -> str:
    """The text of a database error (division by zero, whose message names no value) for a
    statement whose parameter is a tenant's data."""
    with engine.connect() as connection, pytest.raises(exc.DBAPIError) as raised:
        connection.execute(text("SELECT 1 / (length(:value) - length(:value))"), {"value": SECRET})
    return str(raised.value)


def prod_settings(tmp_path: Path) -> Settings:
    # Trust auth on the test server: any password connects.
    url = POSTGRES_URL.replace("postgres@", f"postgres:{SECRET}@")
    return Settings(
        env="prod",
        data_dir=tmp_path,
        database_url=url,
        broker_url="redis://:broker-pw@127.0.0.1:6379/0",
    )


def test_production_engines_log_statements_without_their_values(tmp_path: Path) -> None:
    db.reset_engine()
    try:
        assert SECRET not in failing_insert(db.get_engine(prod_settings(tmp_path)))
    finally:
        db.reset_engine()
    dev = db.create_db_engine(POSTGRES_URL)
    try:
        assert SECRET in failing_insert(dev)  # what production no longer logs
    finally:
        dev.dispose()


def test_the_api_engine_hides_values_in_production(tmp_path: Path) -> None:
    app = create_app(
        prod_settings(tmp_path), task_queue=RecordingQueue(), broker_check=lambda: None
    )
    with TestClient(app):
        engine = app.state.session_factory.kw["bind"]
        assert SECRET not in failing_insert(engine)
