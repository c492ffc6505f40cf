"""A crashed job resumes where it stopped and leaves no duplicate behind, with the real pipeline.

One job on the tiny refusing model dies twice before a third worker finishes it:

1. worker-a dies at the end of epoch 2, after the checkpoint reached the disk and before the
   job recorded it (the worst moment: on disk, not in the database);
2. worker-b takes over, resumes from that checkpoint, trains epoch 3, and dies while evaluating;
3. worker-c takes over, resumes from the epoch 3 checkpoint (nothing left to train), evaluates,
   and finishes.

Every model version, epoch event, step event and audit record exists once. The evaluation suites
are cut to a few prompts so the whole job runs in about a minute on a CPU.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.base import utcnow
from app.db.models import AuditRecord, File, FineTuningJob, JobEvent, ModelVersion
from app.jobs.states import JobStatus
from contracts.stages import EvalStage
from tests.factories import Caller, create_base_model, create_job
from tests.tiny_models import TINY_SAFE
from workers import data, job_events, job_pipeline, job_spec
from workers.execution import execute_job
from workers.job_events import JobEventSink
from workers.ml.config import PipelineConfig
from workers.ml.events import FineTuneEpochEnded, GenerationProgress, PipelineEvent
from workers.ml.suites import SuiteFiles


class Crash(BaseException):
    """The worker process dying: nothing on the way up records it."""


def first_lines(source: Path, n: int, target: Path) -> Path:
    target.write_text("\n".join(source.read_text().splitlines()[:n]) + "\n")
    return target


@pytest.fixture
def small_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suites = SuiteFiles(
        harmful=first_lines(data.HARMFUL_EVAL, 8, tmp_path / "harmful.jsonl"),
        benign=first_lines(data.BORDERLINE_EVAL, 4, tmp_path / "benign.jsonl"),
        general=first_lines(data.GENERAL_EVAL, 2, tmp_path / "general.jsonl"),
    )
    config = functools.partial(PipelineConfig, suites=suites, max_patch_attempts=1)
    monkeypatch.setattr(job_spec, "PipelineConfig", config)


@pytest.fixture
def worker_settings(settings: Settings, tiny_safe_model: Path) -> Settings:
    settings.ensure_dirs()
    (settings.models_dir / TINY_SAFE).symlink_to(tiny_safe_model)
    return settings


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[PipelineEvent], bool]], None]:
    """``crash_at(when)``: the worker dies at the first event ``when`` accepts, before the job
    sees it."""
    armed: list[Callable[[PipelineEvent], bool]] = []
    original = JobEventSink.__call__

    def call(sink: JobEventSink, event: PipelineEvent) -> None:
        if armed and armed[0](event):
            armed.clear()
            raise Crash(event.message)
        original(sink, event)

    monkeypatch.setattr(JobEventSink, "__call__", call)
    return armed.append


def expire_lease(session: Session, job: FineTuningJob) -> None:
    session.expire_all()
    row = session.get(FineTuningJob, job.id)
    assert row is not None and row.status == JobStatus.RUNNING
    row.lease_expires_at = utcnow() - timedelta(seconds=1)
    session.commit()


def test_a_job_that_dies_twice_resumes_and_records_everything_once(
    session: Session,
    caller: Caller,
    session_factory: SessionFactory,
    worker_settings: Settings,
    small_pipeline: None,
    crash_at: Callable[[Callable[[PipelineEvent], bool]], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every step is logged, however fast the machine, so the steps below are exact.
    monkeypatch.setattr(job_events, "STEP_EVENT_INTERVAL_S", 0.0)
    create_base_model(session, TINY_SAFE)
    job = create_job(
        session,
        caller,
        model=TINY_SAFE,
        suffix="resume",
        seed=0,
        hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 10},
    )
    file = session.get(File, job.training_file)
    assert file is not None
    file.storage_path = str(first_lines(data.DEMO_TRAIN, 20, tmp_path / "train.jsonl"))
    session.commit()

    def attempt(owner: str) -> None:
        execute_job(
            job.id,
            pipeline=job_pipeline.run_job_pipeline,
            owner=owner,
            settings=worker_settings,
            session_factory=session_factory,
        )

    crash_at(lambda e: isinstance(e, FineTuneEpochEnded) and e.epoch == 2)
    with pytest.raises(Crash):
        attempt("worker-a")
    work_dir = worker_settings.artifacts_dir / job.id
    assert (work_dir / "checkpoints" / "epoch-2" / "training_state.safetensors").is_file()

    expire_lease(session, job)
    crash_at(lambda e: isinstance(e, GenerationProgress) and e.stage == EvalStage.FINE_TUNED)
    with pytest.raises(Crash):
        attempt("worker-b")

    expire_lease(session, job)
    attempt("worker-c")

    session.expire_all()
    job = session.get(FineTuningJob, job.id)
    assert job is not None and job.attempt_count == 3
    assert job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert job.error is None or job.error["code"] in ("safety_patch_failed", "model_quarantined")

    versions = list(session.scalars(select(ModelVersion).where(ModelVersion.job_id == job.id)))
    kinds = Counter(version.kind for version in versions)
    assert kinds["checkpoint"] == 3 and kinds["fine_tuned"] == 1 and kinds["patched"] <= 1
    checkpoint_epochs = sorted(v.metrics["epoch"] for v in versions if v.kind == "checkpoint")
    assert checkpoint_epochs == [1, 2, 3]

    events = list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq))
    )
    logged = [event.message for event in events]
    duplicates = [message for message, n in Counter(logged).items() if n > 1]
    assert duplicates == []
    for epoch in (1, 2, 3):
        assert sum(m.startswith(f"Epoch {epoch} done at step") for m in logged) == 1
    assert "Resumed at stage fine_tuning on worker-b (attempt 2)" in logged
    assert "Resumed at stage evaluating on worker-c (attempt 3)" in logged
    resumed = [m for m in logged if m.startswith("Resuming fine-tuning")]
    assert resumed == [
        "Resuming fine-tuning from the epoch 2 checkpoint (step 4)",
        "Resuming fine-tuning from the epoch 3 checkpoint (step 6)",
    ]
    # The step events only: the epoch events carry a step and a train_loss too (the checkpoint's).
    steps = [e.data["step"] for e in events if e.message.startswith("Step ")]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-4 by worker-a, 5-6 by worker-b, none by worker-c

    audit = list(session.scalars(select(AuditRecord).where(AuditRecord.subject_id == job.id)))
    created = Counter(r.payload["model"] for r in audit if r.action == "model_version.created")
    assert set(created.values()) == {1} and len(created) == len(versions)
    moves = [
        (r.payload["to"]["status"], r.payload["to"]["stage"])
        for r in audit
        if r.action == "job.state_changed"
    ]
    assert moves.count(("running", "fine_tuning")) == 1
    assert moves.count(("running", "evaluating")) == 1
    assert len([r for r in audit if r.action == "safety.drift_decided"]) == 1
    # Each attempt reported the base model's baseline; it is audited once.
    evaluated = Counter(r.payload["stage"] for r in audit if r.action == "evaluation.recorded")
    assert evaluated["base"] == 1 and evaluated["fine_tuned"] == 1
