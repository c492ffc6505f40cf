"""End to end with real processes: HTTP -> database -> broker -> worker -> database.

1. Production mode: PostgreSQL + Redis, `safepatch serve` (API only) and a separate
   `safepatch worker`, set up with `safepatch db upgrade` and `safepatch admin create-tenant`.
2. Embedded mode: only SAFEPATCH_DATA_DIR; `safepatch serve` migrates and runs its own worker.
3. `safepatch demo`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.databases import REDIS_URL, scratch_postgres
from tests.processes import (
    SAFEPATCH,
    Processes,
    children_of,
    free_port,
    is_alive,
    poll_job,
    run_cli,
    safepatch_env,
)

ALL_STAGES = [
    ("running", "fine_tuning"),
    ("running", "evaluating"),
    ("running", "patching"),
    ("running", "verifying"),
]


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(log_dir=tmp_path)
    yield started
    started.stop_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(started.logs())  # shown by pytest with the failure


TRAIN_JSONL = b"".join(
    [
        b'{"messages": [{"role": "user", "content": "Hi?"}, ',
        b'{"role": "assistant", "content": "Hello."}]}\n',
    ]
)


def submit(client: httpx.Client, **fields: object) -> str:
    upload = client.post(
        "/v1/files", files={"file": ("train.jsonl", TRAIN_JSONL)}, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 200, upload.text
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "smollm2-135m-instruct", "training_file": upload.json()["id"]} | fields,
    )
    assert response.status_code == 200, response.text
    job_id: str = response.json()["id"]
    return job_id


def event_messages(client: httpx.Client, job_id: str) -> list[str]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()
    return [event["message"] for event in reversed(events["data"])]


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A queue name of our own (parallel runs never share one), removed from Redis afterwards."""
    queue = f"gpu-test-{uuid.uuid4().hex[:8]}"
    yield queue
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    client.close()


def test_production_mode_postgres_redis_separate_worker(
    processes: Processes, redis_queue: str, tmp_path: Path
) -> None:
    with scratch_postgres() as database_url:
        env = safepatch_env(
            database_url=database_url,
            broker_url=REDIS_URL,
            queue=redis_queue,
            data_dir=str(tmp_path / "data"),
            placeholder_stage_s="0.4",
        )
        assert "database at head" in run_cli("db", "upgrade", env=env)
        key = run_cli("admin", "create-tenant", "e2e-prod", env=env).strip()
        assert key.startswith("sp-")

        port = free_port()
        api = processes.start("serve", "serve", "--port", str(port), env=env)
        processes.start("worker", "worker", "--name", f"e2e-{uuid.uuid4().hex[:8]}@%h", env=env)
        base_url = f"http://127.0.0.1:{port}"
        processes.wait_ready(base_url, api)
        assert children_of(api.pid) == set(), "production serve must not start a worker"

        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
            job_id = submit(client, suffix="e2e")
            job = poll_job(client, job_id, until={"succeeded", "failed", "cancelled"})
            assert job["status"] == "succeeded", processes.logs()
            # What polling saw is the walk, in order (a slow poll may miss a stage).
            walk = [("queued", None), *ALL_STAGES, ("succeeded", None)]
            seen = job["_seen"]
            assert seen == sorted(seen, key=walk.index), seen
            messages = event_messages(client, job_id)
            assert [m for m in messages if m.startswith("Stage ")] == [
                f"Stage {stage} started (placeholder: no work is done)"
                for stage in ("evaluating", "patching", "verifying")
            ]
            assert messages[-1] == "Job succeeded"

            # Cancelling a running job stops it at the worker's next stage boundary.
            job_id = submit(client)
            poll_job(client, job_id, until={"running"})
            cancel = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
            assert cancel.json()["cancel_requested"] is True
            job = poll_job(client, job_id, until={"succeeded", "failed", "cancelled"})
            assert job["status"] == "cancelled"
            assert event_messages(client, job_id)[-1].startswith("Job cancelled (stopped at")
        processes.stop_all()


def test_embedded_mode_serve_runs_its_own_worker(processes: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = safepatch_env(data_dir=str(data_dir), placeholder_stage_s="0.05")
    port = free_port()
    api = processes.start("serve", "serve", "--port", str(port), env=env)
    base_url = f"http://127.0.0.1:{port}"
    processes.wait_ready(base_url, api)
    assert (data_dir / "safepatch.db").exists()
    workers = children_of(api.pid)
    assert len(workers) == 1, "embedded serve starts exactly one worker"

    # A second process writing the same SQLite file while the service runs.
    key = run_cli("admin", "create-tenant", "e2e-embedded", env=env).strip()
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        job_id = submit(client)
        job = poll_job(client, job_id, until={"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", processes.logs()
        messages = event_messages(client, job_id)
        assert messages[0] == f"Created fine-tuning job: {job_id}"
        assert "Stage verifying started (placeholder: no work is done)" in messages

    processes.stop_all()
    assert api.returncode is not None
    assert not any(is_alive(pid) for pid in workers), "the worker must stop with serve"


def test_demo_runs_a_job_to_succeeded(tmp_path: Path) -> None:
    env = safepatch_env(data_dir=str(tmp_path / "data"), placeholder_stage_s="0.05")
    done = subprocess.run(
        [SAFEPATCH, "demo", "--timeout", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    assert "Stage patching started" in done.stdout
    assert '"status": "succeeded"' in done.stdout


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys, app.main, app.cli, app.server, app.demo; "
        "app.main.create_app(); "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=safepatch_env(data_dir="/tmp"))
