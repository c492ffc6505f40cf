"""Races on the real database: two transactions on two connections, committing for real.

Every other database test shares one connection through savepoints, so row locks never
contend there. Here each racer has its own session on its own connection of a scratch
PostgreSQL database (dropped afterwards), and the two are made to meet at the point that
matters: right after each read the job's row, neither writes until the other has read it too,
or is waiting for a lock the first one holds (``Rendezvous``). With the row lock the second
reader waits and sees the first one's outcome; without it both act on the same stale row, which
these tests catch (checked once by removing ``with_for_update`` in app/jobs/repository.py: both
claim races and the cancel-versus-claim race fail; enqueueing before the commit fails the last).

SQLite is skipped: its writers take the whole database's lock at BEGIN (app/core/db.py), so two
transactions never both read the row before either writes, and there is no row lock to test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import signals
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import create_db_engine, create_session_factory, session_scope
from app.core.ids import random_token
from app.core.queue import RUN_JOB_TASK, CeleryTaskQueue, create_celery
from app.core.settings import Settings
from app.db import migrate
from app.db.models import AuditRecord, FineTuningJob, JobEvent
from app.jobs import repository
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.main import create_app
from tests.databases import REDIS_URL, scratch_postgres
from tests.factories import BASE_MODEL, Caller, create_caller, create_file, create_job
from tests.workers.test_runtime import start_running
from workers.runtime import JobCancelled, JobRun, JobStopped

WAIT_S = 20.0  # a racer still waiting after this is a failure, not a slow machine


@pytest.fixture(scope="module")
def pg_url(backend: str) -> Iterator[str]:
    if backend != "postgresql":
        pytest.skip(
            "row locks need PostgreSQL: SQLite serialises writers at BEGIN IMMEDIATE, "
            "so two transactions never both read a row before either writes"
        )
    with scratch_postgres() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_db_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(pg_engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(pg_engine)


@pytest.fixture
def caller(factory: sessionmaker[Session]) -> Caller:
    with factory() as session:
        return create_caller(session)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {WAIT_S} s")
        time.sleep(0.005)


@dataclass
class Racer:
    name: str
    run: Callable[[], Any]
    read: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Rendezvous:
    """Holds each racer right after its first read of the job row until ``go_when`` says so:
    its rival has read the row too, or finished, or waits for a row lock (then the racer holding
    it must go on, or neither would)."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine
        self.racers: dict[str, Racer] = {}
        self.go_when: dict[str, Callable[[Racer], bool]] = {}
        for name in ("get", "get_for_tenant"):
            monkeypatch.setattr(repository, name, self._holding(getattr(repository, name)))

    def rival_waits_for_a_lock(self) -> bool:
        # The scratch database has no other clients: the racers' and this one.
        with self.engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        return bool(waiting)

    def _holding(self, read: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            row = read(*args, **kwargs)
            racer = self.racers.get(threading.current_thread().name)
            if racer is not None and not racer.read.is_set():
                racer.read.set()
                [rival] = [r for r in self.racers.values() if r is not racer]
                go = self.go_when[racer.name]
                wait_until(
                    lambda: go(rival) or self.rival_waits_for_a_lock(),
                    f"{racer.name} to be let go",
                )
            return row

        return held

    def race(self, *entries: tuple[Racer, Callable[[Racer], bool]]) -> None:
        for racer, go_when in entries:
            self.racers[racer.name] = racer
            self.go_when[racer.name] = go_when

        def run(racer: Racer) -> None:
            try:
                racer.result = racer.run()
            except BaseException as error:
                racer.error = error
            finally:
                racer.done.set()

        threads = [
            threading.Thread(target=run, args=(racer,), name=racer.name)
            for racer in self.racers.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2 * WAIT_S)
            assert not thread.is_alive(), f"{thread.name} is stuck"
        self.racers.clear()


def has_read(rival: Racer) -> bool:
    return rival.read.is_set()


def has_finished(rival: Racer) -> bool:
    return rival.done.is_set()


def reload(factory: sessionmaker[Session], job_id: str) -> FineTuningJob:
    with factory() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        return job


def statuses(factory: sessionmaker[Session], job_id: str) -> list[str]:
    """The job's statuses in the order its audit trail recorded them."""
    with factory() as session:
        records = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.subject_id == job_id, AuditRecord.action == "job.state_changed")
            .order_by(AuditRecord.seq)
        )
        return [record.payload["to"]["status"] for record in records]


def new_job(factory: sessionmaker[Session], caller: Caller) -> str:
    with factory() as session:
        return create_job(session, caller).id


def test_two_workers_racing_to_claim_a_job_one_wins(
    pg_engine: Engine,
    factory: sessionmaker[Session],
    caller: Caller,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = new_job(factory, caller)
    rendezvous = Rendezvous(pg_engine, monkeypatch)
    workers = [
        Racer(owner, JobRun(job_id, owner, settings=settings, session_factory=factory).claim)
        for owner in ("worker-a", "worker-b")
    ]

    rendezvous.race(*((worker, has_read) for worker in workers))

    assert [w.error for w in workers] == [None, None]
    [winner] = [w.name for w in workers if w.result is True]
    assert [w.result for w in workers].count(False) == 1
    job = reload(factory, job_id)
    assert (job.status, job.lease_owner, job.attempt_count) == ("running", winner, 1)
    assert statuses(factory, job_id) == ["queued", "running"]
    with factory() as session:
        started = session.scalars(
            select(JobEvent.message).where(
                JobEvent.job_id == job_id, JobEvent.message.startswith("Fine-tuning started")
            )
        ).all()
    assert started == [f"Fine-tuning started on {winner}"]


def test_a_cancel_racing_a_claim_ends_cancelled(
    pg_engine: Engine,
    factory: sessionmaker[Session],
    caller: Caller,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both read the queued job; the cancel commits first. The worker must then see the
    cancelled job, not start it from the stale read (which would bring it back to running)."""
    job_id = new_job(factory, caller)
    run = JobRun(job_id, "worker-a", settings=settings, session_factory=factory)
    rendezvous = Rendezvous(pg_engine, monkeypatch)

    def cancel() -> str:
        with session_scope(factory) as session:
            return str(jobs.cancel(session, auth=caller.auth, job_id=job_id).status)

    api, worker = Racer("api", cancel), Racer("worker", run.claim)
    rendezvous.race((api, has_read), (worker, has_finished))

    assert (api.error, worker.error) == (None, None)
    if worker.result:  # it got the lock first: the cancel is a request its heartbeat answers
        assert api.result == "running"
        assert run.renew() is JobCancelled
    job = reload(factory, job_id)
    assert job.status == JobStatus.CANCELLED and job.lease_owner in (None, "worker-a")
    trail = statuses(factory, job_id)
    assert trail[-1] == "cancelled" and trail.count("cancelled") == 1


def test_a_cancel_racing_a_heartbeat_ends_cancelled_and_stays_so(
    pg_engine: Engine,
    factory: sessionmaker[Session],
    caller: Caller,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat reads the running job before the cancellation is requested and writes its
    lease after it committed: the request survives, the next heartbeat stops the job, and
    nothing the worker does afterwards brings it back. (This one holds without the row lock
    too: the heartbeat's UPDATE writes only the lease, so it cannot undo the request.)"""
    job_id = new_job(factory, caller)
    run = JobRun(job_id, "worker-a", settings=settings, session_factory=factory)
    assert run.claim()
    rendezvous = Rendezvous(pg_engine, monkeypatch)

    def cancel() -> bool:
        with session_scope(factory) as session:
            return jobs.cancel(session, auth=caller.auth, job_id=job_id).cancel_requested

    api, heartbeat = Racer("api", cancel), Racer("heartbeat", run.renew)
    rendezvous.race((api, has_read), (heartbeat, has_finished))

    assert (api.error, heartbeat.error, api.result) == (None, None, True)
    # This beat renewed the lease (or, had it waited for the cancel, stopped the job); the
    # request is not lost either way.
    assert heartbeat.result in (None, JobCancelled)
    assert reload(factory, job_id).cancel_requested
    assert run.renew() is JobCancelled
    with pytest.raises(JobStopped):  # a late beat of the worker stops it, changing nothing
        run.heartbeat()
    assert reload(factory, job_id).status == JobStatus.CANCELLED
    assert statuses(factory, job_id) == ["queued", "running", "cancelled"]


def test_two_workers_on_a_dead_lease_one_resumes(
    pg_engine: Engine,
    factory: sessionmaker[Session],
    caller: Caller,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A redelivered job whose worker died: two workers find the lease expired at once."""
    job_id = new_job(factory, caller)
    with factory() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        start_running(session, job, owner="worker-dead", expires_in_s=-1)
    rendezvous = Rendezvous(pg_engine, monkeypatch)
    workers = [
        Racer(owner, JobRun(job_id, owner, settings=settings, session_factory=factory).claim)
        for owner in ("worker-a", "worker-b")
    ]

    rendezvous.race(*((worker, has_read) for worker in workers))

    assert sorted([w.result for w in workers]) == [False, True]
    [winner] = [w.name for w in workers if w.result]
    job = reload(factory, job_id)
    assert (job.lease_owner, job.attempt_count) == (winner, 2)


@pytest.fixture
def broker_queue() -> Iterator[str]:
    """A queue of its own on the real Redis broker, emptied afterwards."""
    name = f"test-{random_token(8)}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(name, f"_kombu.binding.{name}")
    client.close()


def test_the_job_row_is_visible_to_another_connection_when_its_message_is_sent(
    factory: sessionmaker[Session],
    caller: Caller,
    tmp_path: Path,
    broker_queue: str,
) -> None:
    """The API commits the job, then sends the worker's message (app/core/db.py after_commit):
    a worker that takes the message at once must find the row."""
    settings = Settings(
        data_dir=tmp_path / "data", database_url=None, broker_url=REDIS_URL, queue=broker_queue
    )
    seen: list[tuple[str, str | None]] = []

    def on_publish(sender: str | None = None, body: Any = None, **_: Any) -> None:
        if sender != RUN_JOB_TASK:
            return
        (job_id,), _kwargs, _embed = body
        with factory() as other:  # another connection: sees only what is committed
            seen.append((job_id, other.scalar(select(FineTuningJob.status).filter_by(id=job_id))))

    with factory() as session:
        training_file = create_file(session, caller).id
    celery = create_celery(settings)
    app = create_app(
        settings,
        session_factory=factory,
        task_queue=CeleryTaskQueue(celery, broker_queue),
        broker_check=lambda: None,
    )
    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        with TestClient(app) as client:
            response = client.post(
                "/v1/fine_tuning/jobs",
                json={"model": BASE_MODEL, "training_file": training_file},
                headers=caller.headers,
            )
    finally:
        signals.before_task_publish.disconnect(on_publish)
        celery.close()

    assert response.status_code == 200, response.text
    assert seen == [(response.json()["id"], "queued")]
    messages = redis.Redis.from_url(REDIS_URL).llen(broker_queue)
    assert messages == 1
