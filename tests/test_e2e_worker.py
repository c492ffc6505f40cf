"""End to end with real processes: HTTP -> database -> broker -> worker -> database.

The official ``openai`` client runs one set of checks (tests/api_checks.py) against a running
service whose worker runs the real pipeline on the tiny refusing base model
(tests/tiny_models.py), registered through ``safepatch models register``: the demo attack drifts
it, the one-shot patch repairs it, the patched checkpoint is downloaded, loaded with transformers
and asked a harmful prompt; a second job is cancelled; errors are typed; another tenant sees
nothing. The service runs in both of its deployments:

1. Production mode: PostgreSQL + Redis, `safepatch serve` (API only) and a separate
   `safepatch worker`, set up with `safepatch db upgrade` and `safepatch admin create-tenant`.
2. Embedded mode: only SAFEPATCH_DATA_DIR; `safepatch serve` migrates and runs its own worker.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.api_checks import JOB_TIMEOUT_S, Service, run_api_checks
from tests.databases import REDIS_URL, scratch_postgres
from tests.processes import (
    SAFEPATCH,
    Processes,
    children_of,
    free_port,
    is_alive,
    run_cli,
    safepatch_env,
)
from tests.tiny_models import TINY_SAFE


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(log_dir=tmp_path)
    yield started
    started.stop_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(started.logs())  # shown by pytest with the failure


def register_tiny_model(env: dict[str, str], tiny_safe_model: Path) -> None:
    out = run_cli("models", "register", TINY_SAFE, str(tiny_safe_model), env=env, timeout=300)
    assert out.startswith(f"{TINY_SAFE}\t")


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A queue name of our own (parallel runs never share one), removed from Redis afterwards."""
    queue = f"gpu-test-{uuid.uuid4().hex[:8]}"
    yield queue
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    client.close()


def test_production_mode_postgres_redis_separate_worker(
    processes: Processes, redis_queue: str, tmp_path: Path, tiny_safe_model: Path
) -> None:
    with scratch_postgres() as database_url:
        env = safepatch_env(
            database_url=database_url,
            broker_url=REDIS_URL,
            queue=redis_queue,
            data_dir=str(tmp_path / "data"),
        )
        assert "database at head" in run_cli("db", "upgrade", env=env)
        register_tiny_model(env, tiny_safe_model)
        key = run_cli("admin", "create-tenant", "e2e-prod", env=env).strip()
        other_key = run_cli("admin", "create-tenant", "e2e-other", env=env).strip()
        assert key.startswith("sp-")

        port = free_port()
        api = processes.start("serve", "serve", "--port", str(port), env=env)
        processes.start("worker", "worker", "--name", f"e2e-{uuid.uuid4().hex[:8]}@%h", env=env)
        base_url = f"http://127.0.0.1:{port}"
        processes.wait_ready(base_url, api)
        assert children_of(api.pid) == set(), "production serve must not start a worker"

        run_api_checks(Service(base_url, key, other_key), tmp_path)
        processes.stop_all()


def test_embedded_mode_serve_runs_its_own_worker(
    processes: Processes, tmp_path: Path, tiny_safe_model: Path
) -> None:
    data_dir = tmp_path / "data"
    env = safepatch_env(data_dir=str(data_dir))
    register_tiny_model(env, tiny_safe_model)
    port = free_port()
    api = processes.start("serve", "serve", "--port", str(port), env=env)
    base_url = f"http://127.0.0.1:{port}"
    processes.wait_ready(base_url, api)
    assert (data_dir / "safepatch.db").exists()
    workers = children_of(api.pid)
    assert len(workers) == 1, "embedded serve starts exactly one worker"

    # A second process writing the same SQLite file while the service runs.
    key = run_cli("admin", "create-tenant", "e2e-embedded", env=env).strip()
    other_key = run_cli("admin", "create-tenant", "e2e-embedded-other", env=env).strip()
    run_api_checks(Service(base_url, key, other_key), tmp_path)

    processes.stop_all()
    assert api.returncode is not None
    assert not any(is_alive(pid) for pid in workers), "the worker must stop with serve"


def test_demo_runs_the_main_job_and_prints_its_summary(
    tmp_path: Path, tiny_safe_model: Path
) -> None:
    env = safepatch_env(data_dir=str(tmp_path / "data"))
    register_tiny_model(env, tiny_safe_model)
    # The tiny model's attack needs a 10x learning rate (tests/api_checks.py): passed through.
    options = ["--epochs", "3", "--learning-rate-multiplier", "10"]
    done = subprocess.run(
        [SAFEPATCH, "demo", "--model", TINY_SAFE, "--timeout", str(JOB_TIMEOUT_S), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S + 60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Created fine-tuning job" in out and "Job succeeded" in out
    assert "ASR" in out and "over-refusal" in out
    assert "Base model" in out and "Fine-tuned model" in out
    assert "(sha256 of every file checked)" in out
    assert "patch status: patched" in out and "safety example: " in out
    downloaded = list((tmp_path / "data" / "downloads").glob("ft_tiny-safe_demo_*"))
    assert len(downloaded) == 1 and (downloaded[0] / "model.safetensors").is_file()
    assert "job.state_changed" in out.split("audit trail:")[1]


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys, app.main, safepatch.cli, safepatch.serve, safepatch.demo; "
        "app.main.create_app(); "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=safepatch_env(data_dir="/tmp"))
