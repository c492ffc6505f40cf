from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service
from app.core.errors import Conflict
from app.db.base import utcnow
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
