"""``safepatch demo``: the embedded service end to end, as a customer would see it.

Starts ``safepatch serve`` in a subprocess on a free port (embedded mode, the configured data
directory), creates a tenant and key, submits a job over HTTP and prints each state it reaches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.auth import service as auth_service
from app.core.db import create_db_engine, create_session_factory, session_scope
from app.core.ids import random_token
from app.core.settings import Settings
from app.jobs.states import TERMINAL
from workers.data import DEMO_TRAIN

POLL_INTERVAL_S = 0.1


def run_demo(*, timeout_s: float) -> int:
    """Run the demo; the exit status is 0 when the job succeeded."""
    # Embedded whatever the environment says: empty URLs override a .env file.
    env = os.environ | {"SAFEPATCH_DATABASE_URL": "", "SAFEPATCH_BROKER_URL": ""}
    settings = Settings(database_url=None, broker_url=None)
    settings.ensure_dirs()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = settings.data_dir / "demo-serve.log"
    deadline = time.monotonic() + timeout_s

    say(f"data directory {settings.data_dir}; service log {log_path}")
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            ok = _demo(settings, base_url, server, deadline)
        except (httpx.HTTPError, TimeoutError, RuntimeError) as error:
            say(f"demo failed: {error}")
            ok = False
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    if not ok:
        say("last lines of the service log:")
        print(tail(log_path), file=sys.stderr)
    return 0 if ok else 1


def _demo(
    settings: Settings, base_url: str, server: subprocess.Popen[bytes], deadline: float
) -> bool:
    start = time.monotonic()
    wait_until_ready(base_url, server, deadline)
    say(f"service ready at {base_url} after {time.monotonic() - start:.1f}s")

    key = create_demo_tenant(settings)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        upload = client.post(
            "/v1/files",
            files={"file": (DEMO_TRAIN.name, DEMO_TRAIN.read_bytes())},
            data={"purpose": "fine-tune"},
        )
        upload.raise_for_status()
        training_file = upload.json()["id"]
        say(f"uploaded {DEMO_TRAIN.name} as {training_file}")
        response = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "smollm2-135m-instruct",
                "training_file": training_file,
                "suffix": "demo",
                "metadata": {"source": "safepatch demo"},
            },
        )
        response.raise_for_status()
        job = response.json()
        say(f"submitted {job['id']}")
        job = follow(client, job, deadline)

        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100})
        say("events:")
        for event in reversed(events.json()["data"]):
            print(f"    {event['level']:5} {event['message']}")
        say("final job:")
        print(json.dumps(job, indent=2))
    return bool(job["status"] == "succeeded")


def follow(client: httpx.Client, job: dict[str, object], deadline: float) -> dict[str, object]:
    """Poll the job, printing each (status, stage) it reaches, until it finishes."""
    start = time.monotonic()
    seen = None
    while True:
        state = (job["status"], job["stage"])
        if state != seen:
            stage = f" ({job['stage']})" if job["stage"] else ""
            say(f"{time.monotonic() - start:5.1f}s  {job['status']}{stage}")
            seen = state
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job['id']} still {job['status']} at the deadline")
        time.sleep(POLL_INTERVAL_S)
        response = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
        response.raise_for_status()
        job = response.json()


def create_demo_tenant(settings: Settings) -> str:
    engine = create_db_engine(settings.effective_database_url)
    try:
        with session_scope(create_session_factory(engine)) as session:
            name = f"demo-{random_token(6)}"
            _, _, key = auth_service.create_tenant(session, name=name, actor="cli:demo")
    finally:
        engine.dispose()
    say(f"created tenant {name} with API key {key[:8]}...")
    return key


def wait_until_ready(base_url: str, server: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with status {server.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the service did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)
