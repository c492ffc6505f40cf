from __future__ import annotations

import itertools

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from app.audit import repository
from app.audit import service as audit
from app.db.models import AuditRecord


def append(session: Session, n: int) -> list[AuditRecord]:
    records = [
        audit.record(
            session,
            action="thing.happened",
            subject_type="thing",
            subject_id=f"thing-{i}",
            actor="test",
            payload={"i": i, "nested": {"b": [1, 2.5, None], "a": "ü"}},
        )
        for i in range(n)
    ]
    session.commit()
    return records


def test_records_form_a_chain_that_verifies(session: Session) -> None:
    records = append(session, 4)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == audit.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    session.expire_all()  # verify what the database returns, not the objects we hold
    result = audit.verify_chain(session)
    assert (result.ok, result.checked, result.first_broken) == (True, 4, None)
    assert result.head == audit.Anchor(4, records[-1].hash)


def test_the_database_refuses_updates_and_deletes(session: Session) -> None:
    append(session, 1)
    for statement in (
        "UPDATE audit_records SET actor = 'mallory'",
        "DELETE FROM audit_records",
    ):
        with pytest.raises(DatabaseError, match="append-only"), session.begin_nested():
            session.execute(text(statement))


def test_verify_finds_the_first_tampered_record(
    session: Session, connection: Connection, backend: str
) -> None:
    append(session, 3)
    # Tampering needs the append-only triggers out of the way (rolled back with the test).
    if backend == "postgresql":
        session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
    else:
        session.execute(text("DROP TRIGGER audit_records_no_update"))
    session.execute(text("UPDATE audit_records SET actor = 'mallory' WHERE seq = 2"))
    session.expire_all()
    broken = audit.verify_chain(session).first_broken
    assert broken is not None and broken.seq == 2


def test_a_writer_that_lost_the_race_retries_on_the_new_head(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = append(session, 2)
    stale_heads = iter([first])  # the first attempt sees the head before `second` existed
    real_get_head = repository.get_head
    monkeypatch.setattr(
        repository, "get_head", lambda s: next(stale_heads, None) or real_get_head(s)
    )

    third = audit.record(session, action="x", subject_type="t", subject_id="3", actor="test")
    assert (third.seq, third.prev_hash) == (3, second.hash)
    session.commit()
    assert session.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq)).all() == [1, 2, 3]
