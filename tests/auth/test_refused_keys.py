"""Refused keys counted per prefix and minute (app.auth.refused_keys): bounded records, counts
kept while the database is away, and the flushing thread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth.refused_keys import (
    MAX_CLIENTS,
    MAX_UNKNOWN_PREFIXES,
    OTHER_PREFIXES,
    Flusher,
    RefusedKeyLog,
)
from app.core.db import SessionFactory, create_db_engine
from app.db import migrate
from app.db.models import AuditRecord
from tests.factories import Caller

ACTION = "api_key.authentication_failed"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(session: Session) -> list[AuditRecord]:
    statement = select(AuditRecord).where(AuditRecord.action == ACTION).order_by(AuditRecord.seq)
    return list(session.scalars(statement))


def test_only_ended_minutes_are_written(session: Session, session_factory: SessionFactory) -> None:
    clock = Clock(1_800_000_000.0)  # 08:00:00 UTC, a minute's start
    log = RefusedKeyLog(clock)
    log.add(prefix="sp-AAAAA", client="10.0.0.1")
    clock.now += 30
    log.add(prefix="sp-AAAAA", client="10.0.0.2")
    assert log.flush(session_factory) == 0  # the minute is not over
    clock.now += 40  # next minute
    log.add(prefix="sp-AAAAA", client="10.0.0.1")

    assert log.flush(session_factory) == 1
    [first] = records(session)
    assert first.payload == {
        "reason": "unknown_key",
        "prefix": "sp-AAAAA",
        "count": 2,
        "minute": "2027-01-15T08:00:00+00:00",
        "clients": ["10.0.0.1", "10.0.0.2"],
    }
    assert log.pending() == 1
    assert log.flush(session_factory, everything=True) == 1
    assert [r.payload["count"] for r in records(session)] == [2, 1]


def test_varying_the_prefix_cannot_buy_a_record_per_attempt(
    session: Session, session_factory: SessionFactory
) -> None:
    log = RefusedKeyLog()
    for i in range(MAX_UNKNOWN_PREFIXES + 500):
        log.add(prefix=f"sp-{i:05d}", client=f"10.0.{i // 256}.{i % 256}")

    assert log.flush(session_factory, everything=True) == MAX_UNKNOWN_PREFIXES + 1
    rest = [r for r in records(session) if r.subject_id == OTHER_PREFIXES]
    assert [r.payload["count"] for r in rest] == [500]
    assert len(rest[0].payload["clients"]) == MAX_CLIENTS


def test_a_revoked_key_has_its_own_record_for_its_tenant(
    session: Session, session_factory: SessionFactory, caller: Caller
) -> None:
    log = RefusedKeyLog()
    key, tenant = caller.auth.api_key.id, caller.auth.tenant.id
    log.add(prefix="sp-RRRRR", client=None, api_key_id=key, tenant_id=tenant)
    log.add(prefix="sp-RRRRR", client=None)  # the same prefix, an unknown key
    log.flush(session_factory, everything=True)
    found = {(r.subject_id, r.tenant_id, r.payload["reason"]) for r in records(session)}
    assert found == {(key, tenant, "revoked_key"), ("sp-RRRRR", None, "unknown_key")}


def test_counts_survive_a_database_that_is_away() -> None:
    away = sessionmaker(create_engine("postgresql+psycopg://u@127.0.0.1:1/x"))
    log = RefusedKeyLog()
    log.add(prefix="sp-AAAAA", client="10.0.0.1")
    with pytest.raises(Exception, match=r"127\.0\.0\.1"):
        log.flush(away, everything=True)
    assert log.pending() == 1


def test_the_thread_flushes_ended_minutes_and_the_rest_at_stop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flush.db'}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    factory = sessionmaker(engine)
    clock = Clock(1_800_000_000.0)
    log = RefusedKeyLog(clock)
    flusher = Flusher(log, factory, interval_s=0.05)
    flusher.start()
    try:
        log.add(prefix="sp-AAAAA", client="10.0.0.1")
        clock.now += 60
        log.add(prefix="sp-BBBBB", client="10.0.0.1")
        deadline = time.monotonic() + 5
        while log.pending() > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with factory() as session:
            assert [r.subject_id for r in records(session)] == ["sp-AAAAA"]
        flusher.stop()
        with factory() as session:
            assert [r.subject_id for r in records(session)] == ["sp-AAAAA", "sp-BBBBB"]
    finally:
        flusher.stop()
        engine.dispose()
