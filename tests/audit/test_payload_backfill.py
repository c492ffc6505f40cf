"""The migration that added ``payload_canonical`` keeps the existing chain verifiable.

Records written before it (hashed over the payload in memory) are backfilled with the text
their hash covered, so every intact one still verifies; one whose payload PostgreSQL had already
changed (``-0.0``) stays the one broken link, and the records after it are still checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.chain import ALTERED, GENESIS_HASH
from app.core.db import create_db_engine
from app.db import migrate
from tests.audit.test_append_only import table_privileges
from tests.databases import scratch_database

BEFORE = "e2a90e3884e2"  # the revision before b7e4c2d91f3a
PAYLOADS: list[dict[str, Any]] = [
    {},
    {"model": "m", "asr": 0.25, "nested": {"b": [1, None, True], "a": "é"}},
    {"safety": {"asr_threshold": -0.0}},  # what PostgreSQL's JSONB changed into 0.0
    {"big": 2**64, "tenth": 0.1},
    {"after": "the broken one"},
]


def legacy_record(seq: int, prev_hash: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A row as the code before the migration wrote it, hash included."""
    row = {
        "id": f"audit-{seq}",
        "seq": seq,
        "tenant_id": None,
        "actor": "test",
        "action": "thing.happened",
        "subject_type": "thing",
        "subject_id": str(seq),
        "payload": payload,
        "created_at": datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=seq),
        "prev_hash": prev_hash,
    }
    content = {key: value for key, value in row.items() if key != "prev_hash"}
    content["created_at"] = row["created_at"].isoformat()
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    row["hash"] = hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()
    return row


@pytest.fixture
def old_database(backend: str, tmp_path: Path) -> Iterator[Engine]:
    with scratch_database(backend, tmp_path) as url:
        migrate.upgrade(url, BEFORE)
        engine = create_db_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def test_the_backfill_keeps_every_intact_record_verifiable(
    old_database: Engine, backend: str
) -> None:
    table = sa.Table("audit_records", sa.MetaData(), autoload_with=old_database)
    rows, prev = [], GENESIS_HASH
    for seq, payload in enumerate(PAYLOADS, start=1):
        rows.append(legacy_record(seq, prev, payload))
        prev = rows[-1]["hash"]
    with old_database.begin() as connection:
        connection.execute(table.insert(), rows)

    migrate.upgrade(old_database.url.render_as_string(hide_password=False))

    with Session(old_database) as session:
        result = audit.verify_chain(session)
        texts = session.execute(sa.text("SELECT payload_canonical FROM audit_records")).scalars()
        assert all(text is not None for text in texts)
    assert result.checked == len(PAYLOADS)
    if backend == "postgresql":
        # JSONB had already turned -0.0 into 0.0: that record's hashed value is gone.
        assert [(link.seq, link.reason) for link in result.broken] == [(3, ALTERED)]
    else:
        assert result.ok, result.broken

    refused = pytest.raises(DatabaseError, match=r"append-only|permission denied")
    with refused, old_database.begin() as connection:
        connection.execute(sa.text("UPDATE audit_records SET actor = 'mallory'"))
    if backend == "postgresql":  # the backfill gave itself UPDATE for a moment, and took it back
        with old_database.connect() as connection:
            assert "UPDATE" not in table_privileges(connection, "postgres")
