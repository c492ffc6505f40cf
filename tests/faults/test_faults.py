"""Faults with real processes: a worker SIGKILLed mid-fine-tune, Redis restarted, PostgreSQL
restarted, each during a running job on a private production stack (tests/faults/stack.py: its
own PostgreSQL cluster and Redis server, so the shared ones are never touched).

Each job must end ``succeeded`` with exactly one fine-tuned model version, at most one patched
one, one checkpoint per epoch, and no event or audit record twice. The lease is 10 s here
(SAFEPATCH_JOB_LEASE_S), so a dead worker's job is taken over in seconds.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.stack import (
    LEASE_S,
    TERMINAL,
    Stack,
    postgres_bin,
    private_servers,
    verdict,
)
from tests.processes import Processes

pytestmark = pytest.mark.faults

REDIS_DOWN_S = 3.0
POSTGRES_DOWN_S = 6.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A PostgreSQL cluster and a Redis server of our own, removed afterwards."""
    for binary in ("redis-server", "runuser" if os.geteuid() == 0 else "true"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    if not (postgres_bin() / "initdb").exists():
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    with private_servers(tmp_path_factory.mktemp("servers")) as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    servers: tuple, tmp_path_factory: pytest.TempPathFactory, tiny_safe_model: Path
) -> Iterator[Stack]:
    """One database, tenant and API for the module; each test starts its own workers."""
    postgres, broker = servers
    root = tmp_path_factory.mktemp("stack")
    built = Stack.build(root, postgres, broker, Processes(log_dir=root), tiny_safe_model)
    yield built
    built.close()


@pytest.fixture
def workers(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack; the workers a test starts are stopped after it (their logs shown on failure)."""
    api = list(stack.processes.started)
    yield stack
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(stack.processes.logs())
    ours = [entry for entry in stack.processes.started if entry not in api]
    stack.processes.started = ours
    stack.processes.stop_all()
    stack.processes.started = api


def assert_held(stack: Stack, job_id: str) -> None:
    found = verdict(stack, job_id)
    assert found.status == "succeeded", stack.messages(job_id)
    assert (found.fine_tuned, found.checkpoint_epochs) == (1, [1, 2, 3])
    assert found.patched <= 1
    assert found.duplicate_events == []
    assert found.duplicate_versions_created == []


def test_a_worker_killed_mid_fine_tune_is_resumed_by_another(workers: Stack) -> None:
    stack = workers
    first = stack.start_worker("faults-a")
    job_id = stack.submit()

    stack.wait_for_event(job_id, "Epoch 1 done")
    stack.processes.kill_group(first)  # the worker and its job process, at once
    killed = time.monotonic()
    assert stack.job(job_id)["status"] == "running"

    stack.start_worker("faults-b")
    resumed = stack.wait_for_event(job_id, "Resumed at stage fine_tuning on faults-b@")
    job = stack.wait_until(job_id, TERMINAL)

    assert job["status"] == "succeeded", stack.messages(job_id)
    assert_held(stack, job_id)
    found = verdict(stack, job_id)
    # From the epoch 1 checkpoint, or epoch 2 if it was written in the moment before the kill.
    assert len(found.resumed_from) == 1
    assert found.resumed_from[0].startswith(
        tuple(f"Resuming fine-tuning from the epoch {n} checkpoint" for n in (1, 2))
    )
    # Taken over once the lease ran out (10 s), by the new worker's startup recovery or by its
    # sweep (every third of a lease), plus the new worker's start.
    assert resumed - killed < LEASE_S + 60
    print(f"\nworker kill: resumed {resumed - killed:.1f}s after the kill; {found.resumed_from[0]}")


def test_a_redis_restart_during_a_job(workers: Stack) -> None:
    stack = workers
    stack.start_worker("faults-r")
    job_id = stack.submit()
    stack.wait_for_event(job_id, "Epoch 1 done")

    stack.broker.stop()
    with httpx.Client(timeout=10) as client:
        # /readyz reuses a broker check for SAFEPATCH_BROKER_CHECK_CACHE_S (5 s by default).
        deadline = time.monotonic() + 10
        while (ready := client.get(f"{stack.base_url}/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readyz still ready with Redis down"
            time.sleep(0.5)
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unavailable"
    time.sleep(REDIS_DOWN_S)
    stack.broker.start()  # empty: no persistence, every queued message is gone

    assert stack.wait_until(job_id, TERMINAL)["status"] == "succeeded", stack.messages(job_id)
    assert_held(stack, job_id)
    assert stack.job(job_id)["status"] == "succeeded"

    # The worker reconnected and takes new jobs.
    second = stack.submit()
    stack.wait_until(second, {"running", *TERMINAL}, timeout=120)
    with stack.client() as client:
        client.post(f"/v1/fine_tuning/jobs/{second}/cancel").raise_for_status()
    assert stack.wait_until(second, TERMINAL, timeout=60)["status"] == "cancelled"


def test_a_postgres_restart_during_a_job(workers: Stack) -> None:
    stack = workers
    worker = stack.start_worker("faults-p")
    job_id = stack.submit()
    stack.wait_for_event(job_id, "Epoch 1 done")

    stack.postgres.stop()
    try:
        with stack.client(timeout=10) as client:
            during = client.get(f"/v1/fine_tuning/jobs/{job_id}")
            ready = client.get("/readyz")
        time.sleep(POSTGRES_DOWN_S)
    finally:
        stack.postgres.start()

    assert during.status_code == 503
    assert during.headers["retry-after"] == "5"
    assert during.json()["error"] == {
        "message": "The service is temporarily unable to reach its database; retry shortly.",
        "type": "server_error",
        "param": None,
        "code": "database_unavailable",
    }
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
    with stack.client() as client:  # recovered: the pool's pre-ping replaces dead connections
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200

    job = stack.wait_until(job_id, TERMINAL)
    assert job["status"] == "succeeded", stack.messages(job_id)
    assert_held(stack, job_id)
    # The worker waited the outage out: same attempt, no takeover, no failure.
    logs = stack.processes.logs(lines=400)
    assert "database unavailable during" in logs
    assert not any(m.startswith(("Resumed at stage", "Job failed")) for m in stack.messages(job_id))
    assert worker.poll() is None
