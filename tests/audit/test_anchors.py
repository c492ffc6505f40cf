"""The chain's head published outside the database, and verification against it by default.

The attacker of tests/audit/test_tamper.py (triggers disabled, every later hash recomputed, or
the newest records dropped) leaves a chain that checks out on its own; the published anchor
catches it, with no anchor passed by anyone, and the publisher refuses to bless it.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from app.audit import anchors
from app.audit import service as audit
from app.auth.service import create_admin_key
from app.core import db
from app.core.settings import Settings, get_settings
from app.db.models import AuditRecord
from safepatch.cli import cli
from tests.audit.test_tamper import append, as_attacker
from tests.factories import make_settings
from workers.audit_anchor import AuditAnchorPublisher, publish_anchor

VERIFY = "/v1/audit/verify"
ADMIN_KEY, ADMIN_KEY_SHA256 = create_admin_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
N = 5


@pytest.fixture
def anchor_path(tmp_path: Path) -> Path:
    return tmp_path / "elsewhere" / "audit-head.json"


@pytest.fixture
def settings(tmp_path: Path, anchor_path: Path) -> Settings:
    return make_settings(tmp_path, admin_key_sha256=ADMIN_KEY_SHA256, audit_anchor_path=anchor_path)


def rewrite(session: Session, backend: str, seq: int) -> None:
    """Edit record ``seq`` and recompute every hash from there on: each link holds again."""
    as_attacker(
        session,
        backend,
        f"""UPDATE audit_records SET payload = '{{"asr": 0.5}}',
        payload_canonical = '{{"asr"\\:0.5}}' WHERE seq = {seq}""",
    )
    entries = session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
    for previous, entry in itertools.pairwise(entries):
        if entry.seq >= seq:
            entry.prev_hash = previous.hash
            entry.hash = audit.record_hash(entry)
            session.flush()
    session.expire_all()
    assert audit.verify_chain(session).ok  # on its own, the chain can't tell


def test_publishing_writes_the_head_atomically(session: Session, anchor_path: Path) -> None:
    assert anchors.publish(session, anchor_path) == anchors.Publication(None, published=False)
    records = append(session)

    publication = anchors.publish(session, anchor_path)
    assert publication.published and publication.anchor is not None
    assert publication.anchor.anchor == audit.Anchor(N, records[-1].hash)
    written = json.loads(anchor_path.read_text())
    assert (written["seq"], written["hash"]) == (N, records[-1].hash)
    assert anchors.read(anchor_path) == publication.anchor
    # No temporary file left beside it, only the lock that serialises publishers.
    assert sorted(p.name for p in anchor_path.parent.iterdir()) == [
        anchor_path.name,
        anchor_path.name + ".lock",
    ]

    again = anchors.publish(session, anchor_path)
    assert not again.published and again.anchor == publication.anchor
    more = append(session, 2)
    moved = anchors.publish(session, anchor_path)
    assert moved.published and moved.anchor is not None
    assert moved.anchor.anchor == audit.Anchor(N + 2, more[-1].hash)


def test_a_rewrite_below_the_published_anchor_is_caught_by_default(
    client: TestClient, session: Session, backend: str, anchor_path: Path
) -> None:
    records = append(session)
    published = anchors.publish(session, anchor_path).anchor
    assert published is not None
    assert client.get(VERIFY, headers=ADMIN).json()["published_anchor"] == {
        "seq": N,
        "hash": records[-1].hash,
        "published_at": int(published.published_at.timestamp()),
    }
    rewrite(session, backend, 2)
    session.commit()

    body = client.get(VERIFY, headers=ADMIN).json()  # no anchor passed
    assert body["ok"] is False
    assert [(link["seq"], link["id"]) for link in body["broken"]] == [(N, records[-1].id)]
    assert body["first_broken"]["reason"].startswith("hash differs from the anchor")


def test_a_truncation_below_the_published_anchor_is_caught_by_default(
    client: TestClient, session: Session, backend: str, anchor_path: Path
) -> None:
    append(session)
    anchors.publish(session, anchor_path)
    as_attacker(session, backend, f"DELETE FROM audit_records WHERE seq >= {N - 1}")
    session.commit()
    assert audit.verify_chain(session).ok

    body = client.get(VERIFY, headers=ADMIN).json()
    assert body["ok"] is False
    assert body["broken"] == [
        {
            "seq": N,
            "id": None,
            "reason": f"missing: the chain ends at seq {N - 2}, before the anchored record",
        }
    ]


def test_the_publisher_refuses_to_bless_a_rewrite(
    session: Session, backend: str, anchor_path: Path
) -> None:
    append(session)
    anchors.publish(session, anchor_path)
    before = anchor_path.read_bytes()
    rewrite(session, backend, 2)
    append(session, 2)  # new records on top of the rewritten chain

    publication = anchors.publish(session, anchor_path)
    assert not publication.published and publication.refused is not None
    assert publication.refused.first_broken is not None
    assert publication.refused.first_broken.seq == N
    assert anchor_path.read_bytes() == before


@pytest.mark.parametrize("content", ["", "{", '{"seq": 0, "hash": "x"}', "[1, 2]", "\xff"])
def test_a_damaged_anchor_file_is_a_500_naming_it(
    client: TestClient, session: Session, anchor_path: Path, content: str
) -> None:
    append(session, 1)
    anchor_path.parent.mkdir(parents=True)
    anchor_path.write_text(content, encoding="latin-1")

    response = client.get(VERIFY, headers=ADMIN)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "audit_anchor_unreadable" and str(anchor_path) in error["message"]


def test_workers_publish_when_a_path_is_set(
    session: Session, session_factory: Any, settings: Settings, anchor_path: Path
) -> None:
    from workers.celery_app import celery_app

    assert AuditAnchorPublisher in celery_app.steps["consumer"]
    records = append(session)
    publish_anchor(settings.model_copy(update={"audit_anchor_path": None}))  # no-op, no DB
    assert not anchor_path.exists()

    publish_anchor(settings, session_factory=session_factory)
    assert anchors.read(anchor_path) is not None
    assert json.loads(anchor_path.read_text())["hash"] == records[-1].hash


runner = CliRunner()


@pytest.fixture
def embedded_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("SAFEPATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAFEPATCH_DATABASE_URL", "")
    monkeypatch.setenv("SAFEPATCH_BROKER_URL", "")
    monkeypatch.setenv("SAFEPATCH_AUDIT_ANCHOR_PATH", str(tmp_path / "anchors" / "head.json"))
    get_settings.cache_clear()
    db.reset_engine()
    yield tmp_path
    db.reset_engine()
    get_settings.cache_clear()


def test_the_cli_publishes_and_verifies_against_the_published_anchor(
    embedded_env: Path,
) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["admin", "create-tenant", "acme"]).exit_code == 0

    published = runner.invoke(cli, ["admin", "audit-anchor"])
    assert published.exit_code == 0, published.output
    assert published.stdout.startswith('{"seq": 2, ') and "(published)" in published.stdout
    report = json.loads(runner.invoke(cli, ["admin", "audit-verify"]).stdout)
    assert report["ok"] and report["published_anchor"]["seq"] == 2

    with sqlite3.connect(embedded_env / "safepatch.db") as connection:
        connection.execute("DROP TRIGGER audit_records_no_delete")
        connection.execute("DELETE FROM audit_records WHERE seq = 2")
    cut = runner.invoke(cli, ["admin", "audit-verify"])
    assert cut.exit_code == 1
    assert json.loads(cut.stdout)["broken"][0]["reason"].startswith("missing: the chain ends")
    assert runner.invoke(cli, ["admin", "audit-verify", "--no-published-anchor"]).exit_code == 0

    refused = runner.invoke(cli, ["admin", "audit-anchor"])
    assert refused.exit_code == 1 and "not published" in refused.stderr


def test_the_cli_needs_a_path_to_publish(
    embedded_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEPATCH_AUDIT_ANCHOR_PATH", "")
    get_settings.cache_clear()
    result = runner.invoke(cli, ["admin", "audit-anchor"])
    assert result.exit_code == 2 and "SAFEPATCH_AUDIT_ANCHOR_PATH" in result.stderr
