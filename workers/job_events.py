"""The job's side of the pipeline's events: job stages, job events, the safety block filling in
while the job runs, and each end-of-epoch checkpoint as a model version."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from app.db.base import utcnow
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs
from app.jobs.states import JobStage, JobStatus, is_allowed
from app.models import versions
from contracts.manifest import describe
from contracts.stages import EvalStage
from workers import data
from workers.job_spec import JobSpec
from workers.ml.events import (
    DriftDecided,
    FineTuneEpochEnded,
    FineTuningStarted,
    GenerationProgress,
    PatchAttemptStarted,
    PatchEpochEnded,
    PatchVerified,
    PipelineEvent,
    PipelineStage,
    StageEntered,
    StageEvaluated,
    TrainingStep,
)
from workers.runtime import JobRun

STEP_EVENT_INTERVAL_S = 1.0  # training-loss events are thinned to about one per second

# The pipeline's stages are the job's running stages, one for one.
JOB_STAGES = {
    PipelineStage.FINE_TUNING: JobStage.FINE_TUNING,
    PipelineStage.EVALUATING: JobStage.EVALUATING,
    PipelineStage.PATCHING: JobStage.PATCHING,
    PipelineStage.VERIFYING: JobStage.VERIFYING,
}


class JobEventSink:
    """Turns pipeline events into job stages, job events and checkpoint model versions."""

    def __init__(
        self,
        run: JobRun,
        spec: JobSpec,
        work_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run = run
        self.spec = spec
        self.work_dir = work_dir
        self.clock = clock
        # How often an event renews the lease and notices a cancellation (besides LeaseKeeper's
        # thread, which renews it whatever the pipeline is doing).
        self.heartbeat_s = run.settings.job_heartbeat_s
        self.step = 0
        self.total_steps: int | None = None  # known once the fine-tuning stage starts
        self.train_loss: float | None = None  # the latest step's, for the next checkpoint
        self._last_beat = clock()
        self._last_step_event = 0.0
        # The last step an earlier attempt logged, read at this attempt's first step event. A
        # resumed attempt retrains the steps after its checkpoint, and the dead one may have
        # logged some of them (with a loss that need not match to the last digit on a GPU).
        self._logged_through: int | None = None
        # Clock and step count the pace is measured from.
        self._training_started: float | None = None
        self._timed_from_step = 0

    def __call__(self, event: PipelineEvent) -> None:
        match event:
            case FineTuningStarted():
                self._on_fine_tuning_started(event)
            case StageEntered():
                self._on_stage_entered(event)
            case TrainingStep():
                self._on_step(event)
            case FineTuneEpochEnded():
                self._on_epoch(event)
            case GenerationProgress():
                pass  # per-batch progress only keeps the lease alive (below); not worth a row
            case StageEvaluated():
                self._on_evaluated(event)
            case DriftDecided():
                self._on_drift(event)
            case PatchAttemptStarted():
                self._on_attempt(event)
            case PatchEpochEnded():
                self._log(event.message, type="metrics", data=asdict(event))
                self._update_safety(patch={"epochs": event.reading.epoch})
            case PatchVerified():
                self._on_verified(event)
            case _:
                self._log(event.message, data=asdict(event) or None)
        if self.clock() - self._last_beat >= self.heartbeat_s:
            self.run.heartbeat()  # raises JobCancelled once the customer cancels
            self._last_beat = self.clock()

    def _on_fine_tuning_started(self, event: FineTuningStarted) -> None:
        self.total_steps = self.spec.total_steps(event.examples)
        self._training_started = self.clock()
        self._log(event.message, data=asdict(event))

    def _on_stage_entered(self, event: StageEntered) -> None:
        stage = JOB_STAGES[event.stage]
        data = {"stage": stage} | ({"attempt": event.attempt} if event.attempt else {})
        if self._can_enter(stage):
            self.run.enter_stage(stage, _capitalized(event.message), data)
        else:
            self._log(event.message, data=data)
        if stage == JobStage.PATCHING:
            self._update_safety(patch_status="running", patch={"strategy": self.spec.strategy})

    def _on_attempt(self, event: PatchAttemptStarted) -> None:
        # A new attempt after a failed verification goes back to patching.
        data = {"attempt": event.attempt, "example": asdict(event.example)}
        if self._can_enter(JobStage.PATCHING):
            self.run.enter_stage(JobStage.PATCHING, _capitalized(event.message), data)
        else:
            self._log(event.message, data=data)
        attempt = data | {"epochs": 0, "accepted": None, "reasons": []}
        self._update_safety(patch=attempt)

    def _on_step(self, event: TrainingStep) -> None:
        self.step = event.step
        self.train_loss = event.loss
        now = self.clock()
        if self._training_started is None:  # no stage event said so: time from this step
            self._training_started, self._timed_from_step = now, self.step
        if self.step > 1 and now - self._last_step_event < STEP_EVENT_INTERVAL_S:
            return
        self._last_step_event = now
        with self.run.transaction() as (session, job):
            job.estimated_finish = self._estimated_finish(now)
            if self._logged_through is None:
                last = jobs_repository.last_logged_step(session, job.id) if self.run.resumed else 0
                self._logged_through = last
            if self.step <= self._logged_through:  # retrained after a resume: logged already
                return
            jobs.add_event(
                session,
                job,
                f"Step {self.step}: training loss={self.train_loss:.4f}",
                type="metrics",
                data={"step": self.step, "epoch": event.epoch, "train_loss": self.train_loss}
                | {"learning_rate": event.learning_rate, "total_steps": self.total_steps},
            )

    def _estimated_finish(self, now: float) -> datetime | None:
        """When the fine-tune ends at the pace measured so far (seconds per step, end-of-epoch
        probes included, times the steps left)."""
        timed_steps = self.step - self._timed_from_step
        if self.total_steps is None or self._training_started is None or timed_steps < 1:
            return None
        seconds_per_step = (now - self._training_started) / timed_steps
        remaining = max(self.total_steps - self.step, 0)
        return utcnow() + timedelta(seconds=seconds_per_step * remaining)

    def _on_epoch(self, event: FineTuneEpochEnded) -> None:
        self.step = event.step  # a resumed run's first event
        path = self.work_dir / "checkpoints" / f"epoch-{event.epoch}"
        saved = describe(path)
        metrics = (
            {"epoch": event.epoch}
            | asdict(event.probe)
            | {
                "step": self.step,
                "train_loss": self.train_loss,
                "base_model": self.spec.base,
            }
        )
        with self.run.transaction() as (session, job):
            # A resumed run reports its checkpoint's epoch again: recorded once.
            first_time = versions.record_checkpoint(
                session,
                job,
                name=self.spec.checkpoint_name(self.step),
                stored=versions.StoredModel(str(path), saved.sha256, saved.size_bytes),
                step=self.step,
                metrics=metrics,
                actor=self.run.actor,
            )
            if first_time:
                jobs.add_event(
                    session,
                    job,
                    f"Epoch {event.epoch} done at step {self.step}: checkpoint saved, "
                    f"probe ASR {event.probe.probe_asr:.2f} ({event.probe.n_probe} prompts)",
                    type="metrics",
                    data=metrics,
                )

    def _on_evaluated(self, event: StageEvaluated) -> None:
        metrics = event.metrics.as_dict()
        self._log(event.message, type="metrics", data={"stage": event.stage} | metrics)
        if event.stage == EvalStage.BASE:
            self._update_safety(baseline=metrics, audit_baseline=True)
        else:
            self._update_safety(fine_tuned=metrics)

    def _on_drift(self, event: DriftDecided) -> None:
        self._log(event.message, type="metrics", data=asdict(event))
        status = patch_status(event.decision.detected, self.spec.auto_patch, accepted=None)
        self._update_safety(drift=asdict(event.decision), patch_status=status)

    def _on_verified(self, event: PatchVerified) -> None:
        """One attempt verified: its numbers and the rule's verdict."""
        metrics = event.metrics.as_dict()
        verdict: dict[str, Any] = {"attempt": event.attempt, "accepted": event.accepted}
        verdict["reasons"] = list(event.reasons)
        data = {"stage": EvalStage.PATCHED} | verdict | metrics
        self._log(event.message, type="metrics", data=data)
        self._update_safety(patched=metrics, patch=verdict)

    def _update_safety(
        self, *, patch: dict[str, Any] | None = None, audit_baseline: bool = False, **changes: Any
    ) -> None:
        """Fill in the job's safety block as its numbers come, so that a customer reads the
        baseline, the fine-tuned numbers, the drift decision and the patch while the job runs
        (``record_outcome`` writes the final block). ``patch`` is merged into the block's
        ``patch``. ``audit_baseline``: the base model's evaluation is also an audit record,
        once per job (a resumed attempt reports the baseline again)."""
        with self.run.transaction() as (session, job):
            block = dict(job.safety_settings or {}) | changes
            if patch is not None:
                block["patch"] = (block.get("patch") or {}) | patch
            job.safety_settings = block
            if audit_baseline and not versions.baseline_audited(session, job):
                versions.audit_evaluation(
                    session, job, model=self.spec.base, stage=EvalStage.BASE,
                    summary=changes["baseline"], suite_version=data.SUITE_VERSION,
                    actor=self.run.actor,
                )  # fmt: skip

    def _log(self, message: str, *, type: str = "message", data: dict[str, Any] | None) -> None:
        self.run.event(_capitalized(message), type=type, data=data)

    def _can_enter(self, stage: JobStage) -> bool:
        current = self.run.stage
        return current is not None and is_allowed(
            (JobStatus.RUNNING, current), (JobStatus.RUNNING, stage)
        )


def patch_status(drifted: bool, auto_patch: bool, *, accepted: bool | None) -> str:
    """``accepted`` is None until the patch stage has its verdict (``pending`` till then)."""
    if not drifted:
        return "not_needed"
    if not auto_patch:
        return "skipped"
    if accepted is None:
        return "pending"
    return "patched" if accepted else "failed"


def _capitalized(message: str) -> str:
    return message[:1].upper() + message[1:]
