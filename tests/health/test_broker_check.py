"""``/readyz``'s broker check against real Redis: one connection for the process, each result
reused for ``broker_check_cache_s``, a broken connection replaced, the detail only in the log."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from kombu import Connection

from app.core import queue
from app.core.db import SessionFactory
from app.core.queue import BrokerCheck, BrokerUnavailable
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.databases import REDIS_URL

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    """Every kombu connection the checks open (real ones: this only records them)."""
    opened: list[Connection] = []

    def recording(*args: object, **kwargs: object) -> Connection:
        connection = Connection(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(queue, "Connection", recording)
    return opened


def test_checks_reuse_one_connection(connections: list[Connection]) -> None:
    check = BrokerCheck(Settings(broker_url=REDIS_URL, broker_check_cache_s=0))
    try:
        for _ in range(5):
            check()
    finally:
        check.close()
    assert len(connections) == 1


def test_a_result_is_reused_for_the_cache_period(connections: list[Connection]) -> None:
    clock = Clock()
    settings = Settings(broker_url=NOWHERE, broker_check_cache_s=5.0)
    check = BrokerCheck(settings, timeout_s=0.2, clock=clock)

    for _ in range(3):  # one real attempt, then its result twice
        with pytest.raises(BrokerUnavailable):
            check()
    assert len(connections) == 1

    clock.now += 5.0  # the period is over: the broker is asked again, on a new connection
    with pytest.raises(BrokerUnavailable):
        check()
    assert len(connections) == 2


def test_a_failed_check_logs_the_detail_and_says_nothing_of_it(
    connections: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    check = BrokerCheck(Settings(broker_url=NOWHERE, broker_check_cache_s=0), timeout_s=0.2)
    with (
        caplog.at_level(logging.WARNING, logger="app.core.queue"),
        pytest.raises(BrokerUnavailable) as raised,
    ):
        check()
    assert "127.0.0.1" not in str(raised.value)
    assert any(record.exc_info is not None for record in caplog.records)


def test_readyz_answers_a_stable_word_when_the_broker_is_down(
    settings: Settings, session_factory: SessionFactory
) -> None:
    down = settings.model_copy(update={"broker_url": NOWHERE})
    check = BrokerCheck(down, timeout_s=0.2)
    app = create_app(
        down, session_factory=session_factory, task_queue=RecordingQueue(), broker_check=check
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "unavailable"}
    assert "127.0.0.1" not in response.text and ":1" not in response.text
