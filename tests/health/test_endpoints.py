from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.queue import check_broker
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.databases import REDIS_URL


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_when_database_and_broker_answer(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_when_the_broker_is_down(
    settings: Settings, session_factory: SessionFactory
) -> None:
    def broker_down() -> None:
        raise ConnectionRefusedError("redis:6379")

    app = create_app(
        settings,
        session_factory=session_factory,
        task_queue=RecordingQueue(),
        broker_check=broker_down,
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    # A stable word, never the exception's text (host and port): the detail is in the log.
    assert body["checks"]["broker"] == "unavailable"
    assert "redis:6379" not in response.text and "ConnectionRefused" not in response.text


def test_readyz_is_503_when_the_database_is_down(settings: Settings) -> None:
    def no_database() -> Session:
        raise OSError("connection refused")

    app = create_app(
        settings,
        session_factory=no_database,
        task_queue=RecordingQueue(),
        broker_check=lambda: None,
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unavailable"
    assert "connection refused" not in response.text


def test_check_broker_against_real_redis() -> None:
    check_broker(Settings(broker_url=REDIS_URL))
    with pytest.raises(Exception, match=r"(?i)connect"):
        check_broker(Settings(broker_url="redis://127.0.0.1:1/0"), timeout_s=0.5)


def test_check_broker_filesystem_needs_its_spool(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=None)
    with pytest.raises(OSError, match="broker folder"):
        check_broker(settings)
    settings.ensure_dirs()
    check_broker(settings)
