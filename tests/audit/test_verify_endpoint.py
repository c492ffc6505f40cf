"""GET /v1/audit/verify: the operator's view of the whole chain, refused to tenants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.auth.service import create_admin_key
from app.core.settings import Settings
from app.db.models import AuditRecord
from tests.factories import Caller, create_caller

VERIFY = "/v1/audit/verify"
ADMIN_KEY, ADMIN_KEY_SHA256 = create_admin_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        admin_key_sha256=ADMIN_KEY_SHA256,
    )


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AuditRecord)) or 0


def test_the_admin_sees_the_whole_chain_verified(
    client: TestClient, caller: Caller, session: Session
) -> None:
    create_caller(session)  # another tenant's records are in the same chain
    head = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert head is not None

    response = client.get(VERIFY, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "object": "audit.verification",
        "ok": True,
        "checked": count(session),
        "first_broken": None,
        "broken": [],
        "head": {"seq": head.seq, "hash": head.hash},
        "published_anchor": None,
    }
    anchored = client.get(
        VERIFY, params={"anchor_seq": head.seq, "anchor_hash": head.hash}, headers=ADMIN
    )
    assert anchored.json()["ok"] is True


def test_a_broken_link_is_reported(
    client: TestClient, caller: Caller, session: Session, backend: str
) -> None:
    second = session.scalars(select(AuditRecord).where(AuditRecord.seq == 2)).one()
    if backend == "postgresql":
        session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
    else:
        session.execute(text("DROP TRIGGER audit_records_no_update"))
    session.execute(text("UPDATE audit_records SET actor = 'mallory' WHERE seq = 2"))
    session.commit()

    body = client.get(VERIFY, headers=ADMIN).json()
    assert body["ok"] is False and body["checked"] == count(session)
    assert body["first_broken"] == {
        "seq": 2,
        "id": second.id,
        "reason": "hash does not match the record's content: the record was altered",
    }
    assert body["broken"] == [body["first_broken"]]  # the records after it were checked too
    assert body["head"]["seq"] == 1  # the newest record whose link holds


def test_an_anchor_past_the_end_is_reported_missing(client: TestClient, caller: Caller) -> None:
    body = client.get(
        VERIFY, params={"anchor_seq": 10_000, "anchor_hash": "a" * 64}, headers=ADMIN
    ).json()
    assert body["ok"] is False
    assert body["first_broken"]["seq"] == 10_000 and body["first_broken"]["id"] is None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"anchor_seq": 3}, "anchor_hash"),
        ({"anchor_hash": "a" * 64}, "anchor_seq"),
        ({"anchor_seq": 0, "anchor_hash": "a" * 64}, "anchor_seq"),
        ({"anchor_seq": 3, "anchor_hash": "not-a-hash"}, "anchor_hash"),
    ],
)
def test_a_bad_anchor_is_a_400(
    client: TestClient, caller: Caller, params: dict[str, Any], param: str
) -> None:
    response = client.get(VERIFY, params=params, headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_tenant_key_is_refused_and_learns_nothing(client: TestClient, caller: Caller) -> None:
    response = client.get(VERIFY, headers=caller.headers)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "admin_key_required"
    assert not any(char.isdigit() for char in error["message"])  # no counts, no seqs


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer spa-wrong"}, "invalid_api_key"),
        ({"Authorization": f"Basic {ADMIN_KEY}"}, "missing_api_key"),
    ],
)
def test_without_the_admin_key_it_is_a_401(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.get(VERIFY, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code


def test_with_no_admin_key_configured_nobody_gets_in(
    tmp_path: Path, session_factory: Any, task_queue: Any
) -> None:
    from app.main import create_app

    unconfigured = Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None)
    app = create_app(unconfigured, session_factory=session_factory, task_queue=task_queue)
    with TestClient(app) as client:
        assert client.get(VERIFY, headers=ADMIN).status_code == 401
