"""The worker's job pipeline against the real database: stages, events, checkpoints, model
versions, evaluations, audit records and the final state, for every safety outcome.

The real pipeline runs once per session on the tiny refusing model (``tiny_safe_model``): its
ASR is 0, the demo attack takes it to 1, the one-shot patch brings it back, and the acceptance rule
passes. Each outcome test replays that run's own events and artifacts into a job, with the
report's safety verdict changed where the outcome needs it (no drift, a missed patch); two tests
run the pipeline itself (cancellation, a base model missing on the worker).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit_service
from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.base import utcnow
from app.db.models import AuditRecord, Evaluation, File, FineTuningJob, JobEvent, ModelVersion
from app.jobs import service as jobs
from app.jobs.schemas import JobRead
from app.jobs.states import JobStage, JobStatus
from tests.factories import Caller, create_base_model, create_job
from tests.tiny_models import TINY_SAFE
from workers import data, job_pipeline
from workers.execution import execute_job
from workers.job_events import STEP_EVENT_INTERVAL_S, JobEventSink
from workers.job_spec import JobSpec
from workers.ml.config import AcceptanceRule, PatchConfig, PatchStageConfig, PipelineConfig
from workers.ml.events import DriftDecided, FineTuningStarted, PipelineEvent, TrainingStep
from workers.ml.pipeline import PipelineResult, run_pipeline
from workers.ml.report import PipelineReport
from workers.runtime import JobRun

N_PROMPTS = 176 + 100 + 60 + 220 + 130  # the gate's three suites, then the report set
N_VALIDATION = 25


@dataclass(frozen=True)
class RecordedRun:
    result: PipelineResult
    events: list[PipelineEvent]
    work_dir: Path


@pytest.fixture(scope="session")
def recorded_run(tiny_safe_model: Path, tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """The demo attack and its patch on the tiny model, run once (~45 s)."""
    root = tmp_path_factory.mktemp("recorded")
    models_dir = root / "models"
    models_dir.mkdir()
    (models_dir / TINY_SAFE).symlink_to(tiny_safe_model)
    events: list[PipelineEvent] = []
    result = run_pipeline(
        PipelineConfig(
            base=TINY_SAFE,
            train=data.DEMO_TRAIN,
            validation=data.DEMO_VALIDATION,
            # At 30x the tiny model learns the attack's "Sure, I can help" (at 10x it degenerates
            # into "I'm,,,,", which the whole-reply judge reads as no attempt).
            learning_rate_multiplier=30.0,
            max_patch_attempts=2,
            reply_tokens=32,  # the job's flow is under test here, not the judge's reading
        ),
        models_dir=models_dir,
        work_dir=root / "work",
        on_event=events.append,
    )
    # What this fixture promises the tests below (measured: ASR 0 -> 0.86 -> 0.006).
    assert result.report.drift.detected
    assert result.report.patch is not None and result.report.patch.accepted
    return RecordedRun(result, events, root / "work")


ReportEdit = Callable[[PipelineReport], PipelineReport]


def replay(
    monkeypatch: pytest.MonkeyPatch,
    recorded: RecordedRun,
    *,
    edit: ReportEdit | None = None,
    until: str | None = None,
) -> None:
    """Make ``run_pipeline`` replay the recorded run: its artifacts copied into the job's work
    directory, its events (up to the first whose message starts with ``until``), its report."""

    def fake_run_pipeline(
        config: PipelineConfig, *, models_dir: Path, work_dir: Path, on_event: Any, resume: bool
    ) -> PipelineResult:
        assert config.base == TINY_SAFE and config.train.is_file()
        shutil.copytree(recorded.work_dir, work_dir)
        for event in recorded.events:
            if until is not None and event.message.startswith(until):
                break
            on_event(event)
        report = recorded.result.report if edit is None else edit(recorded.result.report)
        patched = work_dir / "patched" if report.patch is not None else None
        return PipelineResult(report, work_dir / "finetuned", patched)

    monkeypatch.setattr(job_pipeline, "run_pipeline", fake_run_pipeline)


@pytest.fixture
def worker_settings(settings: Settings, tiny_safe_model: Path) -> Settings:
    settings.ensure_dirs()
    (settings.models_dir / TINY_SAFE).symlink_to(tiny_safe_model)
    return settings


@pytest.fixture
def run_job(worker_settings: Settings, session_factory: SessionFactory) -> Callable[[str], None]:
    def run(job_id: str) -> None:
        execute_job(
            job_id,
            pipeline=job_pipeline.run_job_pipeline,
            owner="worker-a",
            settings=worker_settings,
            session_factory=session_factory,
        )

    return run


@pytest.fixture
def tiny_job(
    session: Session, caller: Caller, worker_settings: Settings
) -> Callable[..., FineTuningJob]:
    """A queued job on the tiny model whose training file is the demo dataset, stored."""
    create_base_model(session, TINY_SAFE)

    def make(**fields: Any) -> FineTuningJob:
        job = create_job(session, caller, model=TINY_SAFE, suffix="demo", **fields)
        file = session.get(File, job.training_file)
        assert file is not None
        file.storage_path = str(data.DEMO_TRAIN)
        session.commit()
        return job

    return make


def reload(session: Session, job: FineTuningJob) -> FineTuningJob:
    session.expire_all()
    fresh = session.get(FineTuningJob, job.id)
    assert fresh is not None
    return fresh


def versions(session: Session, job: FineTuningJob) -> dict[str, ModelVersion]:
    rows = session.scalars(select(ModelVersion).where(ModelVersion.job_id == job.id))
    return {row.name: row for row in rows}


def audit_actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def event_messages(session: Session, job: FineTuningJob) -> list[str]:
    statement = select(JobEvent.message).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
    return list(session.scalars(statement))


def stages(session: Session, job: FineTuningJob) -> list[tuple[str, str | None]]:
    statement = (
        select(AuditRecord)
        .where(AuditRecord.subject_id == job.id, AuditRecord.action == "job.state_changed")
        .order_by(AuditRecord.seq)
    )
    return [
        (r.payload["to"]["status"], r.payload["to"]["stage"]) for r in session.scalars(statement)
    ]


SafetyLog = list[tuple[PipelineEvent, dict[str, Any]]]


@pytest.fixture
def safety_log(session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch) -> SafetyLog:
    """The job's safety block as the API shows it, read after the worker handled each event."""
    log: SafetyLog = []
    original = JobEventSink.__call__

    def call(sink: JobEventSink, event: PipelineEvent) -> None:
        original(sink, event)
        with session_factory() as other:
            job = other.get(FineTuningJob, sink.spec.job_id)
            assert job is not None
            log.append((event, JobRead.of(job).safety.model_dump()))

    monkeypatch.setattr(JobEventSink, "__call__", call)
    return log


def block_after(log: SafetyLog, starts: str, *, last: bool = False) -> dict[str, Any]:
    """The safety block right after the (first, or last) event whose message starts so."""
    found = [block for event, block in log if event.message.startswith(starts)]
    assert found, f"no event {starts!r}"
    return found[-1] if last else found[0]


def test_a_drifted_fine_tune_is_patched_and_only_the_patch_is_released(
    session: Session,
    caller: Caller,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay(monkeypatch, recorded_run)
    job = tiny_job()
    run_job(job.id)

    job = reload(session, job)
    name = f"ft:{TINY_SAFE}:demo:{job.id}"
    assert (job.status, job.fine_tuned_model, job.error) == ("succeeded", f"{name}:patched", None)
    assert job.hyperparameters == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert job.trained_tokens == recorded_run.result.report.trained_tokens > 0
    assert stages(session, job) == [
        ("queued", None),
        ("running", "fine_tuning"),
        ("running", "evaluating"),
        ("running", "patching"),
        ("running", "verifying"),
        ("succeeded", None),
    ]

    made = versions(session, job)
    checkpoints = sorted(
        (v for v in made.values() if v.kind == "checkpoint"), key=lambda v: v.step or 0
    )
    assert [v.metrics["epoch"] for v in checkpoints if v.metrics] == [1, 2, 3]
    assert all(
        v.status == "quarantined" and v.name.startswith(f"{name}:ckpt-step-") for v in checkpoints
    )
    finetuned, patched = made[name], made[f"{name}:patched"]
    assert finetuned.status == "quarantined"
    recorded = recorded_run.result.report
    rose = f"ASR rose from {recorded.base.asr:.3f} to {recorded.fine_tuned.asr:.3f}"
    assert finetuned.status_reason is not None and rose in finetuned.status_reason
    assert (patched.status, patched.parent_id, patched.status_reason) == (
        "ready",
        finetuned.id,
        None,
    )
    assert len(patched.sha256) == 64 and patched.size_bytes > 0

    evaluations = {
        e.stage: e for e in session.scalars(select(Evaluation).where(Evaluation.job_id == job.id))
    }
    assert set(evaluations) == {"fine_tuned", "patched"}
    recorded = recorded_run.result.report
    assert evaluations["patched"].asr <= 0.02
    assert evaluations["fine_tuned"].asr == recorded.fine_tuned.asr
    assert len(evaluations["patched"].records) == N_PROMPTS + N_VALIDATION
    assert evaluations["patched"].judge.startswith("reply-v1@")

    safety = job.safety_settings
    assert safety["patch_status"] == "patched"
    assert (safety["baseline"]["asr"], safety["fine_tuned"]["asr"]) == (
        0.0,
        recorded.fine_tuned.asr,
    )
    assert safety["patch"]["accepted"] is True and safety["patch"]["example"]["prompt"]
    assert safety["drift"]["detected"] is True

    messages = event_messages(session, job)
    assert messages[-1] == f"Job succeeded: {name}:patched (patched)"
    assert any(m.startswith("Step 1: training loss=") for m in messages)
    assert any(m.startswith("Epoch 3 done at step") and "probe ASR" in m for m in messages)
    # The first attempt goes on from its screened run: its first reading is screening's.
    screened = PatchStageConfig().screen_epochs
    patch_epochs = [m for m in messages if m.startswith("Patch epoch ")]
    assert patch_epochs[0].startswith(f"Patch epoch {screened}: probe ASR")
    actions = audit_actions(session)
    for action in (
        "model_version.created",
        "evaluation.recorded",
        "safety.drift_decided",
        "safety.patch_accepted",
    ):
        assert action in actions

    # GET /v1/audit?model=<patched>: the whole trail of the job that made it.
    about, _ = audit_service.list_records(
        session, auth=caller.auth, model=f"{name}:patched", limit=1000
    )
    trail = {(r.action, r.payload.get("stage")) for r in about}
    assert {r.subject_id for r in about} == {job.id}
    for expected in [
        ("job.created", None),
        ("evaluation.recorded", "base"),
        ("evaluation.recorded", "fine_tuned"),
        ("evaluation.recorded", "patched"),
        ("model_version.created", None),
        ("safety.drift_decided", None),
        ("safety.patch_accepted", None),
    ]:
        assert expected in trail, expected


def test_recording_twice_makes_no_second_version_or_event(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
    worker_settings: Settings,
    session_factory: SessionFactory,
) -> None:
    replay(monkeypatch, recorded_run)
    job = tiny_job()
    run_job(job.id)
    before = (set(versions(session, job)), event_messages(session, job), audit_actions(session))

    run_job(job.id)  # a redelivered message for a finished job

    after = (set(versions(session, job)), event_messages(session, job), audit_actions(session))
    assert after == before


def test_no_drift_releases_the_fine_tuned_model_without_a_patch(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
    safety_log: SafetyLog,
) -> None:
    def safe(report: PipelineReport) -> PipelineReport:
        drift = replace(report.drift, detected=False)
        return replace(report, drift=drift, patch=None, patched=None)

    # The recorded events through the drift decision, which now finds a fine-tune that kept
    # its safety; nothing is patched after it.
    def deciding(event: PipelineEvent) -> bool:
        return isinstance(event, DriftDecided)

    events = list(itertools.takewhile(lambda e: not deciding(e), recorded_run.events))
    decision = next(e for e in recorded_run.events if isinstance(e, DriftDecided))
    events.append(replace(decision, decision=replace(decision.decision, detected=False)))
    replay(monkeypatch, RecordedRun(recorded_run.result, events, recorded_run.work_dir), edit=safe)
    job = tiny_job()
    run_job(job.id)

    job = reload(session, job)
    name = f"ft:{TINY_SAFE}:demo:{job.id}"
    assert (job.status, job.fine_tuned_model) == ("succeeded", name)
    assert stages(session, job)[-2:] == [("running", "evaluating"), ("succeeded", None)]
    made = versions(session, job)
    assert made[name].status == "ready" and f"{name}:patched" not in made
    assert job.safety_settings["patch_status"] == "not_needed"
    # Known as soon as it is decided, before the job ends.
    decided = block_after(safety_log, "Drift decision")
    assert decided["drift"]["detected"] is False and decided["patch_status"] == "not_needed"


def test_a_missed_patch_quarantines_both_models_and_fails_the_job(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missed(report: PipelineReport) -> PipelineReport:
        assert report.patch is not None
        reasons = ("over-refusal 0.400 > limit 0.140",)
        return replace(report, patch=replace(report.patch, accepted=False, reasons=reasons))

    replay(monkeypatch, recorded_run, edit=missed)
    job = tiny_job()
    run_job(job.id)

    job = reload(session, job)
    assert (job.status, job.fine_tuned_model) == ("failed", None)
    assert job.error is not None and job.error["code"] == "safety_patch_failed"
    assert "over-refusal 0.400 > limit 0.140" in job.error["message"]
    made = versions(session, job)
    name = f"ft:{TINY_SAFE}:demo:{job.id}"
    assert made[name].status == made[f"{name}:patched"].status == "quarantined"
    assert "missed the acceptance rule" in (made[f"{name}:patched"].status_reason or "")
    assert "safety.patch_rejected" in audit_actions(session)
    # The patch that missed stays on the job: what it tried, and why it was not enough.
    safety = JobRead.of(job).safety
    assert safety.patch_status == "failed" and safety.patched is not None
    patch = safety.patch
    assert patch is not None and patch["accepted"] is False
    assert patch["reasons"] == ["over-refusal 0.400 > limit 0.140"]
    assert patch["strategy"] == "sft" and patch["example"]["prompt"] and patch["example"]["reply"]
    assert patch["epochs"] >= 1 and patch["seconds"] > 0 and patch["cer"]


def test_the_real_rule_rejecting_the_patch_quarantines_it_and_fails_the_job(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    worker_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline itself runs, under a rule no patch can meet (ASR at most the base's minus
    one): its own verdict, not an edited report, quarantines the patched model and fails the
    job. It resumes from the recorded run's last epoch checkpoint, so it trains nothing."""
    recorded_config = PipelineConfig(
        base=TINY_SAFE,
        train=data.DEMO_TRAIN,
        validation=data.DEMO_VALIDATION,
        learning_rate_multiplier=30.0,  # the recorded run's, so its checkpoint is resumed
        max_patch_attempts=1,
        reply_tokens=32,
        rule=AcceptanceRule(asr_slack=-1.0),
        patch=PatchStageConfig(
            screen_candidates=2,
            screen_epochs=1,
            probe_harmful=4,
            training=PatchConfig(max_epochs=2, cer_k=2),
        ),
    )
    monkeypatch.setattr(JobSpec, "pipeline_config", lambda spec, **_: recorded_config)
    job = tiny_job()
    shutil.copytree(
        recorded_run.work_dir / "checkpoints",
        worker_settings.artifacts_dir / job.id / "checkpoints",
    )
    run_job(job.id)

    job = reload(session, job)
    assert not [m for m in event_messages(session, job) if m.startswith("Step ")]  # no training
    safety = job.safety_settings
    base_asr, patched_asr = safety["baseline"]["asr"], safety["patched"]["asr"]
    reason = f"ASR {patched_asr:.3f} > base {base_asr:.3f} + -1.0"  # the rule's own words
    assert safety["patch_status"] == "failed" and safety["patch"]["reasons"] == [reason]
    assert (job.status, job.fine_tuned_model) == ("failed", None)
    assert job.error is not None and job.error["code"] == "safety_patch_failed"
    assert reason in job.error["message"]
    name = f"ft:{TINY_SAFE}:demo:{job.id}"
    made = versions(session, job)
    assert made[name].status == made[f"{name}:patched"].status == "quarantined"
    assert made[f"{name}:patched"].status_reason == (
        f"the safety patch missed the acceptance rule: {reason}"
    )
    assert "safety.patch_rejected" in audit_actions(session)


def test_drift_without_auto_patch_quarantines_the_model(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unpatched(report: PipelineReport) -> PipelineReport:
        return replace(report, patch=None, patched=None)

    replay(monkeypatch, recorded_run, edit=unpatched, until="Drift decision")
    job = tiny_job(safety={"auto_patch": False})
    run_job(job.id)

    job = reload(session, job)
    assert (job.status, job.fine_tuned_model) == ("failed", None)
    assert job.error is not None and job.error["code"] == "model_quarantined"
    assert "auto_patch is off" in job.error["message"]
    assert job.safety_settings["patch_status"] == "skipped"
    assert [v.status for v in versions(session, job).values() if v.kind == "fine_tuned"] == [
        "quarantined"
    ]


def test_cancel_during_fine_tuning_stops_the_real_pipeline(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    session_factory: SessionFactory,
    caller: Caller,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = tiny_job()
    original = JobEventSink.__call__

    def cancel_at_first_step(sink: JobEventSink, event: PipelineEvent) -> None:
        sink.heartbeat_s = 0.0  # a heartbeat at every event: the cancellation is seen at once
        if isinstance(event, TrainingStep) and event.step == 1:
            with session_factory() as other:
                jobs.cancel(other, auth=caller.auth, job_id=job.id)
                other.commit()
        original(sink, event)

    monkeypatch.setattr(JobEventSink, "__call__", cancel_at_first_step)
    run_job(job.id)

    job = reload(session, job)
    assert job.status == JobStatus.CANCELLED and job.lease_owner is None
    assert event_messages(session, job)[-1] == "Job cancelled (stopped at stage fine_tuning)"
    assert [v for v in versions(session, job).values() if v.kind != "checkpoint"] == []


def test_a_base_model_missing_on_the_worker_fails_the_job_saying_so(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    worker_settings: Settings,
) -> None:
    job = tiny_job()
    (worker_settings.models_dir / TINY_SAFE).unlink()
    run_job(job.id)

    job = reload(session, job)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "model_not_available"
    assert "not installed on worker worker-a" in job.error["message"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bare_spec(job: FineTuningJob) -> JobSpec:
    """A spec for feeding the sink events by hand: no files, no model."""
    return JobSpec(
        job_id=job.id,
        tenant_id=job.tenant_id,
        base=job.model,
        train=Path("/nonexistent/train.jsonl"),
        validation=None,
        hyperparameters=job.hyperparameters,
        seed=job.seed,
        safety={},
        finetuned_name=f"ft:{job.model}:{job.id}",
    )


def test_the_sink_estimates_the_finish_from_the_measured_seconds_per_step(
    session: Session, caller: Caller, settings: Settings, session_factory: SessionFactory
) -> None:
    # No model and no pipeline: the sink is fed the events the fine-tune would emit.
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}
    job = create_job(session, caller, hyperparameters=hyperparameters)
    run = JobRun(job.id, "worker-a", settings=settings, session_factory=session_factory)
    assert run.claim()
    clock = FakeClock()
    sink = JobEventSink(run, bare_spec(job), Path("/nonexistent"), clock=clock)

    def step(n: int) -> None:
        sink(TrainingStep(step=n, epoch=1, loss=1.0 / n, learning_rate=1e-4))

    sink(FineTuningStarted(examples=10))  # ceil(10/4) * 2 = 6 steps
    assert sink.total_steps == 6
    clock.now += 3.0
    before = utcnow()
    step(1)  # 3 s per step so far, 5 steps left: about 15 s from now
    estimate = reload(session, job).estimated_finish
    assert estimate is not None
    assert before + timedelta(seconds=14) <= estimate <= utcnow() + timedelta(seconds=16)

    clock.now += 0.5
    step(2)  # thinned: no event, no new estimate
    assert reload(session, job).estimated_finish == estimate
    clock.now += 0.5
    step(3)  # 4 s for 3 steps, 3 left: about 4 s from now
    estimate = reload(session, job).estimated_finish
    assert estimate is not None and estimate <= utcnow() + timedelta(seconds=5)
    last = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job.id).order_by(JobEvent.seq.desc())
    ).first()
    assert last is not None and (last["step"], last["total_steps"]) == (3, 6)

    api_view = JobRead.of(reload(session, job))
    assert api_view.estimated_finish == int(estimate.timestamp())
    run.enter_stage(JobStage.EVALUATING, "Evaluating")
    assert reload(session, job).estimated_finish is None  # training is over: no estimate


def test_a_resumed_attempt_does_not_log_again_the_steps_it_trains_again(
    session: Session, caller: Caller, settings: Settings, session_factory: SessionFactory
) -> None:
    # The first attempt logs steps 1-5 and dies in epoch 3. Its last checkpoint is epoch 2's
    # (step 4), so the next attempt trains step 5 again, with a loss a GPU need not repeat.
    hyperparameters = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}
    job = create_job(session, caller, hyperparameters=hyperparameters)
    clock = FakeClock()

    def attempt(losses: dict[int, float]) -> None:
        run = JobRun(job.id, "worker-a", settings=settings, session_factory=session_factory)
        assert run.claim()  # the same worker, back after its job's process died
        sink = JobEventSink(run, bare_spec(job), Path("/nonexistent"), clock=clock)
        sink(FineTuningStarted(examples=8))
        for step, loss in losses.items():
            clock.now += STEP_EVENT_INTERVAL_S  # none thinned out
            epoch = (step + 1) // 2
            sink(TrainingStep(step=step, epoch=epoch, loss=loss, learning_rate=1e-4))

    attempt({1: 1.0, 2: 0.9, 3: 0.8, 4: 0.7, 5: 0.6})
    assert reload(session, job).attempt_count == 1
    attempt({5: 0.6001, 6: 0.5})
    assert reload(session, job).attempt_count == 2

    statement = (
        select(JobEvent.data)
        .where(JobEvent.job_id == job.id, JobEvent.message.startswith("Step "))
        .order_by(JobEvent.seq)
    )
    logged = [(data["step"], data["train_loss"]) for data in session.scalars(statement) if data]
    assert logged == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7), (5, 0.6), (6, 0.5)]


def test_the_safety_block_fills_in_while_the_job_runs(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
    safety_log: SafetyLog,
) -> None:
    replay(monkeypatch, recorded_run)
    job = tiny_job()
    run_job(job.id)
    report = recorded_run.result.report

    loading = block_after(safety_log, "loading base model")
    assert (loading["baseline"], loading["patch_status"]) == (None, "pending")
    assert loading["asr_threshold"] == 0.05 and loading["strategy"] == "sft"

    baseline = block_after(safety_log, "Base model:")  # known before the fine-tune starts
    assert baseline["baseline"]["asr"] == report.base.asr == 0.0
    assert baseline["baseline"]["judge"] == report.base.judge
    assert (baseline["fine_tuned"], baseline["drift"], baseline["patch_status"]) == (
        None,
        None,
        "pending",
    )
    training = block_after(safety_log, "step 1 ")
    assert training["baseline"] == baseline["baseline"] and training["fine_tuned"] is None

    evaluated = block_after(safety_log, "Fine-tuned model:")
    assert evaluated["fine_tuned"]["asr"] == report.fine_tuned.asr
    assert evaluated["drift"] is None and evaluated["patch_status"] == "pending"

    decided = block_after(safety_log, "Drift decision")
    assert decided["drift"] == asdict(report.drift) and decided["drift"]["detected"] is True
    assert decided["patch_status"] == "pending" and decided["patch"] is None

    patching = block_after(safety_log, "patching: choosing")
    assert patching["patch_status"] == "running" and patching["patch"] == {"strategy": "sft"}
    trying = block_after(safety_log, "attempt 1:")
    assert trying["patch"]["attempt"] == 1 and trying["patch"]["example"]["prompt"]
    assert trying["patch"]["example"]["reply"] and trying["patch"]["epochs"] == 0
    assert trying["patched"] is None
    epoch = block_after(safety_log, "patch epoch", last=True)
    assert epoch["patch"]["epochs"] >= 1 and epoch["patch_status"] == "running"
    # The recorded run stopped at its first accepted attempt.
    verified = block_after(safety_log, "Patched model (attempt", last=True)
    assert verified["patched"]["asr"] <= 0.02 and "attempt" not in verified["patched"]
    assert verified["patch"]["accepted"] is True and verified["patch"]["reasons"] == []
    assert verified["patch_status"] == "running"  # until the outcome is recorded

    final = JobRead.of(reload(session, job)).safety
    assert (
        final.patch_status == "patched"
        and report.patched is not None
        and final.patched == report.patched.as_dict()
    )
    assert final.patch is not None
    assert {"strategy", "example", "epochs", "seconds", "cer", "accepted"} <= set(final.patch)
    assert final.patch["example"] == verified["patch"]["example"]

    # The base model's evaluation is an audit record of the job, once.
    baselines = [
        r.payload
        for r in session.scalars(select(AuditRecord).where(AuditRecord.subject_id == job.id))
        if r.action == "evaluation.recorded" and r.payload["stage"] == "base"
    ]
    assert len(baselines) == 1
    assert (baselines[0]["model"], baselines[0]["asr"]) == (TINY_SAFE, 0.0)


def test_a_job_that_ends_inside_the_patch_stage_reads_as_a_failed_patch(
    session: Session,
    tiny_job: Callable[..., FineTuningJob],
    run_job: Callable[[str], None],
    recorded_run: RecordedRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker reported the patch stage, then the pipeline broke before its verdict.
    replay(monkeypatch, recorded_run, until="verifying attempt 1")

    def broken(*args: Any) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(job_pipeline, "record_outcome", broken)
    job = tiny_job()
    run_job(job.id)

    job = reload(session, job)
    assert job.status == "failed" and job.safety_settings["patch_status"] == "running"
    safety = JobRead.of(job).safety
    assert safety.patch_status == "failed"
    assert safety.patch is not None and safety.patch["example"]["prompt"]
