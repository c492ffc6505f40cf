from __future__ import annotations

import hashlib
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service
from app.auth.refused_keys import RefusedKeyLog
from app.auth.service import hash_key
from app.core.db import SessionFactory
from app.core.errors import Conflict, NotFound
from app.db.base import utcnow
from app.db.models import AuditRecord
from tests.factories import BASE_MODEL, Caller, create_file

JOBS = "/v1/fine_tuning/jobs"


def test_keys_are_random_prefixed_and_stored_only_as_a_hash(caller: Caller) -> None:
    assert caller.key.startswith("sp-") and len(caller.key) == 3 + 48
    api_key = caller.auth.api_key
    assert api_key.key_hash == hashlib.sha256(caller.key.encode()).hexdigest()
    assert api_key.prefix == caller.key[:8]
    assert caller.key not in {api_key.key_hash, api_key.prefix}


def test_tenant_names_are_unique(session: Session, caller: Caller) -> None:
    with pytest.raises(Conflict):
        service.create_tenant(session, name=caller.auth.tenant.name, actor="test")


def test_a_valid_key_authenticates(client: TestClient, caller: Caller) -> None:
    assert client.get(JOBS, headers=caller.headers).status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
        ({"Authorization": "Bearer "}, "missing_api_key"),
        ({"Authorization": "Bearer sp-not-a-real-key"}, "invalid_api_key"),
    ],
)
def test_requests_without_a_valid_key_get_401(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.get(JOBS, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)


def test_the_401_does_not_echo_the_key(client: TestClient) -> None:
    secret = "sp-" + "S" * 48
    response = client.get(JOBS, headers={"Authorization": f"Bearer {secret}"})
    assert secret not in response.text
    assert "sp-SSSSS****" in response.json()["error"]["message"]


def test_a_revoked_key_is_refused(client: TestClient, caller: Caller, session: Session) -> None:
    caller.auth.api_key.revoked_at = utcnow()
    session.merge(caller.auth.api_key)
    session.commit()
    assert client.get(JOBS, headers=caller.headers).status_code == 401


def test_a_second_key_of_the_same_tenant_sees_the_same_jobs(
    client: TestClient, caller: Caller, session: Session
) -> None:
    _, second_key = service.create_api_key(
        session, tenant=caller.auth.tenant, actor="test", name="ci"
    )
    session.commit()
    created = client.post(
        JOBS,
        json={"model": BASE_MODEL, "training_file": create_file(session, caller).id},
        headers=caller.headers,
    ).json()
    listed = client.get(JOBS, headers={"Authorization": f"Bearer {second_key}"}).json()
    assert [job["id"] for job in listed["data"]] == [created["id"]]


def key_records(session: Session, action: str) -> list[AuditRecord]:
    statement = select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
    return list(session.scalars(statement))


def test_creating_a_key_is_audited(session: Session, caller: Caller) -> None:
    first = caller.auth.api_key
    second, _ = service.create_api_key(session, tenant=caller.auth.tenant, actor="test", name="ci")
    session.commit()

    records = [
        r for r in key_records(session, "api_key.created") if r.subject_id in {first.id, second.id}
    ]
    assert [(r.subject_id, r.payload) for r in records] == [
        (first.id, {"prefix": first.prefix, "name": "default"}),
        (second.id, {"prefix": second.prefix, "name": "ci"}),
    ]
    assert all(r.tenant_id == caller.auth.tenant.id and r.actor == "test" for r in records)


def test_revoking_a_key_is_audited_once_and_the_key_is_refused(
    client: TestClient, caller: Caller, session: Session
) -> None:
    key_id = caller.auth.api_key.id
    revoked = service.revoke_api_key(session, key_id=key_id, actor="cli:admin")
    session.commit()
    first_time = revoked.revoked_at
    again = service.revoke_api_key(session, key_id=key_id, actor="cli:admin")

    assert first_time is not None and again.revoked_at == first_time
    [record] = key_records(session, "api_key.revoked")
    assert (record.subject_id, record.actor, record.tenant_id) == (
        key_id,
        "cli:admin",
        caller.auth.tenant.id,
    )
    assert record.payload == {"prefix": caller.key[:8], "name": "default"}
    assert client.get(JOBS, headers=caller.headers).status_code == 401
    with pytest.raises(NotFound):
        service.revoke_api_key(session, key_id="key-missing", actor="cli:admin")


def flush(client: TestClient, session_factory: SessionFactory) -> int:
    """Write the refused keys counted so far (the app's thread does it once a minute ends)."""
    refused: RefusedKeyLog = client.app.state.refused_keys  # type: ignore[attr-defined]
    return refused.flush(session_factory, everything=True)


def test_an_unknown_well_formed_key_is_audited_without_the_key(
    client: TestClient, session: Session, session_factory: SessionFactory
) -> None:
    secret = "sp-" + "Q" * 48
    response = client.get(JOBS, headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 401
    assert flush(client, session_factory) == 1
    [record] = key_records(session, "api_key.authentication_failed")
    assert (record.subject_type, record.subject_id) == ("api_key", "sp-QQQQQ")
    assert (record.actor, record.tenant_id) == ("anonymous", None)
    minute = record.payload.pop("minute")
    assert record.payload == {
        "reason": "unknown_key",
        "prefix": "sp-QQQQQ",
        "count": 1,
        "clients": ["testclient"],
    }
    assert datetime.fromisoformat(minute).second == 0
    assert secret not in str(record.payload) and hash_key(secret) not in str(record.payload)


def test_a_flood_of_unknown_keys_writes_no_chain_record_per_attempt(
    client: TestClient, session: Session, session_factory: SessionFactory
) -> None:
    """Each refused key only adds to a count: the chain gets one record per prefix and minute,
    written by the flush, not one per attempt from whoever sends them."""
    before = session.scalar(select(func.count()).select_from(AuditRecord))
    for i in range(30):
        key = "sp-" + ("A" if i % 2 else "B") * 5 + f"{i:02d}" + "x" * 41
        assert client.get(JOBS, headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert session.scalar(select(func.count()).select_from(AuditRecord)) == before

    assert flush(client, session_factory) == 2
    records = key_records(session, "api_key.authentication_failed")
    assert sorted((r.subject_id, r.payload["count"]) for r in records) == [
        ("sp-AAAAA", 15),
        ("sp-BBBBB", 15),
    ]


def test_a_revoked_key_in_use_is_audited_for_its_tenant(
    client: TestClient, caller: Caller, session: Session, session_factory: SessionFactory
) -> None:
    _, other_key = service.create_api_key(session, tenant=caller.auth.tenant, actor="test")
    service.revoke_api_key(session, key_id=caller.auth.api_key.id, actor="test")
    session.commit()

    for _ in range(3):
        assert client.get(JOBS, headers=caller.headers).status_code == 401
    assert flush(client, session_factory) == 1
    [record] = key_records(session, "api_key.authentication_failed")
    assert (record.subject_id, record.tenant_id) == (caller.auth.api_key.id, caller.auth.tenant.id)
    assert (record.payload["reason"], record.payload["count"]) == ("revoked_key", 3)
    # The tenant reads it in its own trail, with a key that still works.
    trail = client.get(
        "/v1/audit",
        params={"action": "api_key.authentication_failed"},
        headers={"Authorization": f"Bearer {other_key}"},
    ).json()
    assert [item["subject"]["id"] for item in trail["data"]] == [caller.auth.api_key.id]


@pytest.mark.parametrize(
    "token",
    ["sp-not-a-real-key", "sp-" + "Q" * 47, "sp-" + "Q" * 49, "sk-" + "Q" * 48, "sp-" + "-" * 48],
)
def test_tokens_of_another_shape_are_refused_without_a_record(
    client: TestClient, session: Session, token: str
) -> None:
    assert client.get(JOBS, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.app.state.refused_keys.pending() == 0  # type: ignore[attr-defined]


def test_a_successful_call_writes_no_key_record(
    client: TestClient, caller: Caller, session: Session
) -> None:
    assert client.get(JOBS, headers=caller.headers).status_code == 200
    assert key_records(session, "api_key.authentication_failed") == []
