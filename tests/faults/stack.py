"""A private production stack for fault injection: its own PostgreSQL cluster and Redis server
(restarting them disturbs nobody), `safepatch serve`, and `safepatch worker` processes that can be
killed. Used by tests/faults/test_faults.py and bench/worker_kill.py.

The job is the demo attack on the tiny refusing model (tests/tiny_models.py), cut down so a whole
job takes about a minute on a busy CPU: 16 training examples, 3 epochs of 8 steps, and
evaluation suites of a few prompts (tests/faults/small_worker.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

from tests.processes import Processes, free_port, run_cli, safepatch_env
from tests.tiny_models import TINY_SAFE
from workers import data

LEASE_S = 10  # a dead worker's job is taken over after this: seconds, not the default 15 min
HEARTBEAT_S = 1.0
SMALL_WORKER = (sys.executable, "-m", "tests.faults.small_worker")
TERMINAL = {"succeeded", "failed", "cancelled"}


def _first_lines(source: Path, n: int, target: Path) -> Path:
    target.write_text("\n".join(source.read_text().splitlines()[:n]) + "\n")
    return target


@dataclass
class PrivateRedis:
    """A redis-server of our own, without persistence: a restart loses every message."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def postgres_bin() -> Path:
    """Where initdb and pg_ctl are (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(found[-1]) if found else Path(str(shutil.which("pg_ctl"))).parent


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temporary directory, trust auth)."""

    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="safepatch-faults-pg-"))
    )

    @property
    def bin(self) -> Path:
        return postgres_bin()

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        # PostgreSQL refuses to run as root; our temporary directory then belongs to postgres.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l",
            str(self.directory / "postgres.log"), "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def private_servers(directory: Path) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    """Start both; stop and remove both whatever happens."""
    postgres, broker = PrivatePostgres(), PrivateRedis(directory)
    try:
        postgres.init()
        postgres.start()
        broker.start()
        yield postgres, broker
    finally:
        broker.stop()
        postgres.remove()


@dataclass
class Stack:
    """One database, data directory and tenant on the private servers, `safepatch serve`, and
    whatever workers a scenario starts."""

    root: Path
    postgres: PrivatePostgres
    broker: PrivateRedis
    processes: Processes
    env: dict[str, str] = field(default_factory=dict)
    key: str = ""
    base_url: str = ""
    database_url: str = ""
    engine: Engine | None = None
    training_file: str = ""
    validation_file: str = ""

    @classmethod
    def build(
        cls,
        root: Path,
        postgres: PrivatePostgres,
        broker: PrivateRedis,
        processes: Processes,
        tiny_safe_model: Path,
    ) -> Stack:
        stack = cls(root, postgres, broker, processes)
        suites = root / "suites"
        suites.mkdir(parents=True)
        _first_lines(data.HARMFUL_EVAL, 8, suites / "harmful.jsonl")
        _first_lines(data.BORDERLINE_EVAL, 4, suites / "benign.jsonl")
        _first_lines(data.GENERAL_EVAL, 2, suites / "general.jsonl")
        stack.database_url = postgres.create_database(f"faults_{uuid.uuid4().hex[:8]}")
        stack.env = safepatch_env(
            database_url=stack.database_url,
            broker_url=broker.url,
            queue=f"gpu-faults-{uuid.uuid4().hex[:8]}",
            data_dir=str(root / "data"),
            job_lease_s=str(LEASE_S),
            job_heartbeat_s=str(HEARTBEAT_S),
            test_suites_dir=str(suites),
        )
        run_cli("db", "upgrade", env=stack.env)
        run_cli("models", "register", TINY_SAFE, str(tiny_safe_model), env=stack.env, timeout=300)
        stack.key = run_cli("admin", "create-tenant", "faults", env=stack.env).strip()
        stack.engine = create_engine(stack.database_url, pool_pre_ping=True)
        stack.start_api()
        with stack.client() as client:
            stack.training_file = stack._upload(client, data.DEMO_TRAIN, 16, "train.jsonl")
            stack.validation_file = stack._upload(client, data.DEMO_VALIDATION, 10, "val.jsonl")
        return stack

    def start_api(self) -> None:
        port = free_port()
        api = self.processes.start("serve", "serve", "--port", str(port), env=self.env)
        self.base_url = f"http://127.0.0.1:{port}"
        self.processes.wait_ready(self.base_url, api, timeout=120)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """A worker in a process group of its own (``processes.kill_group`` kills it whole)."""
        return self.processes.start(
            name, "worker", "--name", f"{name}@%h", env=self.env, command=SMALL_WORKER,
            new_session=True,
        )  # fmt: skip

    def client(self, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def _upload(self, client: httpx.Client, source: Path, n: int, name: str) -> str:
        content = "\n".join(source.read_text().splitlines()[:n]) + "\n"
        response = client.post(
            "/v1/files",
            files={"file": (name, content.encode())},
            data={"purpose": "fine-tune"},
        )
        assert response.status_code == 200, response.text
        file_id: str = response.json()["id"]
        return file_id

    def submit(self, *, patch: bool = False) -> str:
        """The job: 3 epochs of 8 steps. ``patch=False`` sets the drift threshold out of reach,
        so it ends after the evaluation (no patch stage: a third of the time)."""
        with self.client() as client:
            response = client.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": TINY_SAFE,
                    "training_file": self.training_file,
                    "validation_file": self.validation_file,
                    "hyperparameters": {
                        "n_epochs": 3,
                        "batch_size": 2,
                        "learning_rate_multiplier": 10,
                    },
                    "seed": 0,
                    "suffix": "faults",
                    "safety": {"asr_threshold": 0.05 if patch else 1.0},
                },
            )
        assert response.status_code == 200, response.text
        job_id: str = response.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it; retried through a brief outage of the API's database."""
        with self.client() as client:
            for _ in range(100):
                response = client.get(f"/v1/fine_tuning/jobs/{job_id}")
                if response.status_code != 503:
                    break
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def messages(self, job_id: str) -> list[str]:
        """The job's event log, oldest first (straight from the database)."""
        assert self.engine is not None
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT message FROM job_events WHERE job_id = :id ORDER BY seq"),
                {"id": job_id},
            )
            return [row[0] for row in rows]

    def wait_for_event(self, job_id: str, prefix: str, timeout: float = 300) -> float:
        """Until the job has logged an event starting with ``prefix``; when (monotonic)."""
        deadline = time.monotonic() + timeout
        while not any(m.startswith(prefix) for m in self.messages(job_id)):
            assert time.monotonic() < deadline, (
                f"no event {prefix!r} after {timeout}s: {self.messages(job_id)}\n"
                f"{self.processes.logs()}"
            )
            time.sleep(0.1)
        return time.monotonic()

    def wait_until(self, job_id: str, statuses: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, (
                f"job {job_id} still {job['status']} after {timeout}s\n{self.processes.logs()}"
            )
            time.sleep(0.2)

    def versions(self, job_id: str) -> list[tuple[str, str, int | None]]:
        """(name, kind, epoch) of every model version the job made."""
        assert self.engine is not None
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT name, kind, metrics FROM model_versions WHERE job_id = :id"),
                {"id": job_id},
            )
            return [(name, kind, (metrics or {}).get("epoch")) for name, kind, metrics in rows]

    def audit(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        assert self.engine is not None
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT action, payload FROM audit_records WHERE subject_id = :id ORDER BY seq"
                ),
                {"id": job_id},
            )
            return [(action, payload) for action, payload in rows]

    def close(self) -> None:
        self.processes.stop_all()
        if self.engine is not None:
            self.engine.dispose()


@dataclass(frozen=True)
class Verdict:
    """What a fault scenario must leave behind, checked from the database."""

    status: str
    fine_tuned: int
    patched: int
    checkpoint_epochs: list[int]
    duplicate_events: list[str]
    duplicate_versions_created: list[str]
    resumed_from: list[str]

    @property
    def held(self) -> bool:
        return (
            self.status == "succeeded"
            and self.fine_tuned == 1
            and self.patched <= 1
            and self.checkpoint_epochs == [1, 2, 3]
            and not self.duplicate_events
            and not self.duplicate_versions_created
        )


def verdict(stack: Stack, job_id: str) -> Verdict:
    versions = stack.versions(job_id)
    messages = stack.messages(job_id)
    created = [
        payload["model"]
        for action, payload in stack.audit(job_id)
        if action == "model_version.created"
    ]
    return Verdict(
        status=stack.job(job_id)["status"],
        fine_tuned=sum(kind == "fine_tuned" for _, kind, _ in versions),
        patched=sum(kind == "patched" for _, kind, _ in versions),
        checkpoint_epochs=sorted(epoch or 0 for _, kind, epoch in versions if kind == "checkpoint"),
        duplicate_events=sorted({m for m in messages if messages.count(m) > 1}),
        duplicate_versions_created=sorted({m for m in created if created.count(m) > 1}),
        resumed_from=[m for m in messages if m.startswith("Resuming fine-tuning from")],
    )
