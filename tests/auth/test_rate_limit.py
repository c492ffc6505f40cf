"""The per-tenant rate limit over HTTP: 429, ``Retry-After`` and OpenAI's error body, in memory
(embedded mode) and in the real Redis shared by two app instances (production's API processes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service
from app.core.db import SessionFactory
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.databases import RATE_LIMIT_REDIS_URL
from tests.factories import Caller, create_caller, make_settings

JOBS = "/v1/fine_tuning/jobs"
LIMIT = 3


@pytest.fixture
def key_prefix() -> Iterator[str]:
    prefix = f"safepatch-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(RATE_LIMIT_REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def limited(
    tmp_path: Path, redis_url: str | None, key_prefix: str, client_limit: int = 0
) -> Settings:
    return make_settings(
        tmp_path,
        rate_limit_requests=LIMIT,
        client_rate_limit_requests=client_limit,
        rate_limit_window_s=60,
        rate_limit_redis_url=redis_url,
        rate_limit_key_prefix=key_prefix,
    )


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str) -> Settings:
    redis_url = RATE_LIMIT_REDIS_URL if request.param == "redis" else None
    return limited(tmp_path, redis_url, key_prefix)


def test_past_the_limit_a_tenant_gets_429_with_retry_after(
    client: TestClient, caller: Caller, session: Session
) -> None:
    for _ in range(LIMIT):
        assert client.get(JOBS, headers=caller.headers).status_code == 200

    response = client.get(JOBS, headers=caller.headers)
    assert response.status_code == 429
    # 60 s / 3 requests: the next one fits 20 s after the first.
    assert 1 <= int(response.headers["retry-after"]) <= 20
    assert response.json() == {
        "error": {
            "message": f"Rate limit reached for requests: {LIMIT} per 60 s for your "
            f"organization. Please try again in {response.headers['retry-after']} s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    # Every endpoint counts, and a second key of the same tenant shares the budget.
    _, second_key = service.create_api_key(session, tenant=caller.auth.tenant, actor="test")
    session.commit()
    for path in ("/v1/files", "/v1/models", "/v1/audit"):
        refused = client.get(path, headers={"Authorization": f"Bearer {second_key}"})
        assert refused.status_code == 429, path


def test_one_tenant_at_its_limit_leaves_the_others_theirs(
    client: TestClient, caller: Caller, session: Session
) -> None:
    other = create_caller(session)
    for _ in range(LIMIT + 2):
        client.get(JOBS, headers=caller.headers)
    assert client.get(JOBS, headers=caller.headers).status_code == 429
    assert [client.get(JOBS, headers=other.headers).status_code for _ in range(LIMIT)] == [
        200
    ] * LIMIT


def test_refused_keys_and_health_checks_cost_nothing(client: TestClient, caller: Caller) -> None:
    for _ in range(LIMIT * 2):
        assert client.get(JOBS, headers={"Authorization": "Bearer sp-wrong"}).status_code == 401
        assert client.get("/healthz").status_code == 200
    assert [client.get(JOBS, headers=caller.headers).status_code for _ in range(LIMIT)] == [
        200
    ] * LIMIT


def test_two_api_processes_share_the_budget_through_redis(
    tmp_path: Path, key_prefix: str, session_factory: SessionFactory, caller: Caller
) -> None:
    settings = limited(tmp_path, RATE_LIMIT_REDIS_URL, key_prefix)
    apps = [
        create_app(settings, session_factory=session_factory, task_queue=RecordingQueue())
        for _ in range(2)
    ]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        statuses = [
            (first if i % 2 else second).get(JOBS, headers=caller.headers).status_code
            for i in range(LIMIT + 1)
        ]
    assert statuses == [200] * LIMIT + [429]


CLIENT_LIMIT = 5


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_client_flooding_bad_keys_is_refused_before_they_are_looked_up(
    tmp_path: Path, key_prefix: str, session_factory: SessionFactory, caller: Caller, kind: str
) -> None:
    """Past its address's limit a client gets the tenant limit's 429 (Retry-After, the same
    body), before authentication: its keys are no longer looked up or counted as refused. A
    tenant calling from another address keeps its whole budget."""
    redis_url = RATE_LIMIT_REDIS_URL if kind == "redis" else None
    settings = limited(tmp_path, redis_url, key_prefix, client_limit=CLIENT_LIMIT)
    app = create_app(settings, session_factory=session_factory, task_queue=RecordingQueue())
    bad = {"Authorization": "Bearer sp-" + "Z" * 48}
    with (
        TestClient(app, client=("203.0.113.9", 1000)) as attacker,
        TestClient(app, client=("198.51.100.7", 1000)) as tenant,
    ):
        statuses = [attacker.get(JOBS, headers=bad).status_code for _ in range(CLIENT_LIMIT + 3)]
        refused = attacker.get(JOBS, headers=bad)
        tenant_statuses = [tenant.get(JOBS, headers=caller.headers).status_code for _ in range(3)]
        counted = app.state.refused_keys.pending()

    assert statuses == [401] * CLIENT_LIMIT + [429] * 3
    assert counted == CLIENT_LIMIT  # the refused ones never reached the key lookup
    assert 1 <= int(refused.headers["retry-after"]) <= 60 / CLIENT_LIMIT
    assert refused.json() == {
        "error": {
            "message": f"Rate limit reached for requests: {CLIENT_LIMIT} per 60 s for your "
            "address (203.0.113.9) before authentication. Please try again in "
            f"{refused.headers['retry-after']} s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert tenant_statuses == [200] * LIMIT


def test_the_admin_key_is_limited_per_address_too(
    tmp_path: Path, key_prefix: str, session_factory: SessionFactory
) -> None:
    settings = limited(tmp_path, None, key_prefix, client_limit=2)
    app = create_app(settings, session_factory=session_factory, task_queue=RecordingQueue())
    guess = {"Authorization": "Bearer spa-" + "Z" * 48}
    with TestClient(app) as client:
        statuses = [client.get("/v1/audit/verify", headers=guess).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
