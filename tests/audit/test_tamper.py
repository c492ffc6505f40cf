"""The hash chain catches tampering that got past the append-only guards.

Each test plays an attacker with full control of the database (a superuser: PostgreSQL triggers
disabled, SQLite triggers dropped, inside the test's rolled-back transaction) and checks that
``verify_chain`` reports the first broken link: the record, its seq and why. Two attacks leave an
internally consistent chain (recomputing every later hash, dropping the newest records); an
anchor kept from an earlier verification catches those. Verification reports every broken link
and goes on past each, so two attacks are two reports.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.chain import ALTERED, COPY_ALTERED
from app.audit.service import Anchor, ChainVerification
from app.db.models import AuditRecord

N = 5


def append(session: Session, n: int = N) -> list[AuditRecord]:
    records = [
        audit.record(
            session,
            action="model.patched",
            subject_type="model_version",
            subject_id=f"ft:m:{i}",
            actor="worker",
            payload={"asr": 0.01 * i},
        )
        for i in range(1, n + 1)
    ]
    session.commit()
    return records


def as_attacker(session: Session, backend: str, *statements: str) -> None:
    """Run SQL past the append-only guards, then forget what the session had cached."""
    if backend == "postgresql":
        session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
    else:
        session.execute(text("DROP TRIGGER IF EXISTS audit_records_no_update"))
        session.execute(text("DROP TRIGGER IF EXISTS audit_records_no_delete"))
    for statement in statements:
        session.execute(text(statement))
    session.expire_all()


def broken(result: ChainVerification) -> tuple[int, str | None, str]:
    assert not result.ok and result.first_broken is not None
    return result.first_broken.seq, result.first_broken.id, result.first_broken.reason


def test_an_intact_chain_verifies(session: Session) -> None:
    records = append(session)
    result = audit.verify_chain(session, anchors=[Anchor(N, records[-1].hash)])
    assert (result.ok, result.checked, result.head) == (True, N, Anchor(N, records[-1].hash))
    assert result.broken == () and result.first_broken is None


def test_altering_the_hashed_payload_text_is_detected_at_that_record(
    session: Session, backend: str
) -> None:
    records = append(session)
    as_attacker(
        session,
        backend,
        """UPDATE audit_records SET payload_canonical = '{"asr"\\:0.0}' WHERE seq = 3""",
    )

    result = audit.verify_chain(session)
    assert broken(result) == (3, records[2].id, ALTERED)
    assert len(result.broken) == 1 and result.checked == N  # the records after 3 still hold


def test_altering_the_payload_copy_is_detected_at_that_record(
    session: Session, backend: str
) -> None:
    # The JSON column is what the `model=` filter queries: changing it alone must show too.
    records = append(session)
    as_attacker(
        session, backend, """UPDATE audit_records SET payload = '{"asr": 0.5}' WHERE seq = 3"""
    )

    assert broken(audit.verify_chain(session)) == (3, records[2].id, COPY_ALTERED)


def test_every_broken_link_is_reported(session: Session, backend: str) -> None:
    records = append(session)
    as_attacker(
        session,
        backend,
        "UPDATE audit_records SET actor = 'mallory' WHERE seq = 2",
        """UPDATE audit_records SET payload = '{"asr": 0.5}' WHERE seq = 3""",
        "DELETE FROM audit_records WHERE seq = 4",
    )

    result = audit.verify_chain(session)
    assert [(link.seq, link.id) for link in result.broken] == [
        (2, records[1].id),
        (3, records[2].id),
        (5, records[4].id),
    ]
    assert [link.reason for link in result.broken] == [
        ALTERED,
        COPY_ALTERED,
        "seq 5 follows seq 3: record 4 is missing (deleted or renumbered)",
    ]
    assert result.first_broken == result.broken[0]
    assert result.checked == N - 1 and result.head == Anchor(1, records[0].hash)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "'mallory'"),
        ("action", "'model.deleted'"),
        ("subject_id", "'ft:m:other'"),
        ("created_at", "'2020-01-01 00:00:00+00:00'"),
        ("hash", "'" + "e" * 64 + "'"),
    ],
)
def test_altering_any_column_is_detected(
    session: Session, backend: str, column: str, value: str
) -> None:
    records = append(session, 3)
    as_attacker(session, backend, f"UPDATE audit_records SET {column} = {value} WHERE seq = 2")
    assert broken(audit.verify_chain(session))[:2] == (2, records[1].id)


def test_deleting_a_record_is_detected_at_the_next_one(session: Session, backend: str) -> None:
    records = append(session)
    as_attacker(session, backend, "DELETE FROM audit_records WHERE seq = 2")

    result = audit.verify_chain(session)
    seq, record_id, reason = broken(result)
    assert (seq, record_id) == (3, records[2].id)
    assert reason == "seq 3 follows seq 1: record 2 is missing (deleted or renumbered)"
    # One deletion, one break: the records after it are checked and hold.
    assert len(result.broken) == 1
    assert result.checked == N - 1 and result.head == Anchor(N, records[-1].hash)


def test_deleting_and_renumbering_is_detected_by_the_broken_link(
    session: Session, backend: str
) -> None:
    records = append(session)
    as_attacker(
        session,
        backend,
        "DELETE FROM audit_records WHERE seq = 2",
        "UPDATE audit_records SET seq = seq + 100 WHERE seq > 2",
        "UPDATE audit_records SET seq = seq - 101 WHERE seq > 100",
    )
    seq, record_id, reason = broken(audit.verify_chain(session))
    assert (seq, record_id) == (2, records[2].id)
    assert reason.startswith("prev_hash is not the hash of seq 1")


def test_swapping_two_records_is_detected_at_the_first_of_them(
    session: Session, backend: str
) -> None:
    records = append(session)
    as_attacker(
        session,
        backend,
        "UPDATE audit_records SET seq = -1 WHERE seq = 2",
        "UPDATE audit_records SET seq = 2 WHERE seq = 3",
        "UPDATE audit_records SET seq = 3 WHERE seq = -1",
    )
    seq, record_id, reason = broken(audit.verify_chain(session))
    assert (seq, record_id) == (2, records[2].id)  # the old third record, now second
    assert reason.startswith("prev_hash is not the hash of seq 1")


def forged(after: AuditRecord, seq: int) -> AuditRecord:
    """A record an attacker writes: plausible content, its own hash computed correctly."""
    entry = AuditRecord(
        id="audit-forged",
        seq=seq,
        prev_hash=after.hash,
        tenant_id=None,
        actor="worker",
        action="model.patched",
        subject_type="model_version",
        subject_id="ft:m:forged",
        payload={"asr": 0.0},
        payload_canonical='{"asr":0.0}',
        created_at=after.created_at + timedelta(seconds=1),
    )
    entry.hash = audit.record_hash(entry)
    return entry


def test_inserting_a_forged_record_is_detected(session: Session, backend: str) -> None:
    first, second, *_ = append(session)
    fake = forged(after=first, seq=2)
    # Make room at seq 2 and point the displaced record at the forgery, as a careful attacker
    # would; only recomputing every later hash would hide it (next test).
    as_attacker(
        session,
        backend,
        "UPDATE audit_records SET seq = seq + 100 WHERE seq >= 2",
        "UPDATE audit_records SET seq = seq - 99 WHERE seq >= 100",
        f"UPDATE audit_records SET prev_hash = '{fake.hash}' WHERE seq = 3",
    )
    session.add(fake)
    session.flush()
    session.expire_all()

    seq, record_id, reason = broken(audit.verify_chain(session))
    assert (seq, record_id) == (3, second.id)
    assert reason == ALTERED


def test_a_forged_record_with_a_made_up_link_is_detected_at_itself(
    session: Session, backend: str
) -> None:
    records = append(session)
    fake = forged(after=records[-1], seq=N + 1)
    fake.prev_hash = "f" * 64
    fake.hash = audit.record_hash(fake)
    session.add(fake)
    session.flush()
    session.expire_all()

    seq, record_id, reason = broken(audit.verify_chain(session))
    assert (seq, record_id) == (N + 1, "audit-forged")
    assert reason.startswith(f"prev_hash is not the hash of seq {N}")


def test_a_rewritten_chain_is_caught_only_by_an_anchor(session: Session, backend: str) -> None:
    records = append(session)
    anchor = Anchor(N, records[-1].hash)  # what the last verification reported as its head
    as_attacker(
        session,
        backend,
        """UPDATE audit_records SET payload = '{"asr": 0.0}', payload_canonical = '{"asr"\\:0.0}'
        WHERE seq = 2""",
    )
    # ... and recompute every hash from there on, so each link holds again.
    previous = records[0]
    for entry in session.query(AuditRecord).order_by(AuditRecord.seq).all()[1:]:
        entry.prev_hash = previous.hash
        entry.hash = audit.record_hash(entry)
        session.flush()
        previous = entry
    session.expire_all()

    assert audit.verify_chain(session).ok  # the chain alone can't tell
    seq, record_id, reason = broken(audit.verify_chain(session, anchors=[anchor]))
    assert (seq, record_id) == (N, records[-1].id)
    assert reason.startswith("hash differs from the anchor")


def test_dropping_the_newest_records_is_caught_only_by_an_anchor(
    session: Session, backend: str
) -> None:
    records = append(session)
    anchor = Anchor(N, records[-1].hash)
    as_attacker(session, backend, f"DELETE FROM audit_records WHERE seq >= {N - 1}")

    cut = audit.verify_chain(session)
    assert cut.ok and cut.checked == N - 2
    result = audit.verify_chain(session, anchors=[anchor])
    assert broken(result) == (
        N,
        None,
        f"missing: the chain ends at seq {N - 2}, before the anchored record",
    )


def test_an_emptied_table_is_caught_by_an_anchor(session: Session, backend: str) -> None:
    anchor = Anchor(N, append(session)[-1].hash)
    as_attacker(session, backend, "DELETE FROM audit_records")
    assert audit.verify_chain(session).checked == 0
    result = audit.verify_chain(session, anchors=[anchor])
    assert broken(result)[0] == N and result.head is None
