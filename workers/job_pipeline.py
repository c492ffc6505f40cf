"""What a worker does with one job: the safety pipeline, told to the database as it goes.

    prepare (files, base model, resolved hyperparameters)
    -> run_pipeline (workers/ml/pipeline.py), its events becoming job stages and job events,
       each end-of-epoch checkpoint a model version
    -> record the outcome in one transaction: model versions, evaluations, the safety block,
       audit records and the job's final state.

A fine-tuned model that drifted is never released: the patched model replaces it when it passes
the acceptance rule, and otherwise both are quarantined and the job fails saying why.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.audit import repository as audit_repository
from app.audit import service as audit
from app.db.base import utcnow
from app.db.models import (
    BaseModelRecord,
    Evaluation,
    FineTuningJob,
    ModelKind,
    ModelStatus,
    ModelVersion,
)
from app.files import repository as files_repository
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs
from app.jobs.states import JobStage, JobStatus, is_allowed
from app.models import repository as models_repository
from contracts.jsonl import DatasetError
from contracts.manifest import CorruptCheckpointError, describe, verify
from workers import data
from workers.ml.base_models import BaseModelError, model_path
from workers.ml.config import PipelineConfig
from workers.ml.events import PipelineEvent
from workers.ml.pipeline import PipelineResult, run_pipeline
from workers.runtime import JobFailure, JobRun

# What "auto" resolves to; recorded on the job when it starts, as OpenAI shows resolved values.
AUTO_HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 3,
    "batch_size": 8,
    "learning_rate_multiplier": 1.0,
}
HEARTBEAT_INTERVAL_S = 2.0  # how often the lease is renewed and a cancellation noticed
STEP_EVENT_INTERVAL_S = 1.0  # training-loss events are thinned to about one per second


@dataclass(frozen=True)
class JobSpec:
    """Everything the pipeline needs, read from the database once."""

    job_id: str
    tenant_id: str
    base: str
    train: Path
    validation: Path | None
    hyperparameters: dict[str, Any]
    seed: int
    safety: dict[str, Any]
    finetuned_name: str

    @property
    def patched_name(self) -> str:
        return f"{self.finetuned_name}:patched"

    def checkpoint_name(self, step: int) -> str:
        return f"{self.finetuned_name}:ckpt-step-{step}"

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the fine-tune: one per batch, every epoch."""
        batches = math.ceil(n_examples / self.hyperparameters["batch_size"])
        return int(batches * self.hyperparameters["n_epochs"])

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            base=self.base,
            train=self.train,
            validation=self.validation,
            n_epochs=self.hyperparameters["n_epochs"],
            batch_size=self.hyperparameters["batch_size"],
            learning_rate_multiplier=self.hyperparameters["learning_rate_multiplier"],
            seed=self.seed,
            strategy=self.safety.get("strategy", "sft"),
            drift_threshold=self.safety.get("asr_threshold", 0.05),
            auto_patch=self.safety.get("auto_patch", True),
        )


def run_job_pipeline(run: JobRun) -> None:
    """The ``Pipeline`` a Celery worker runs (``workers.tasks.run_job``)."""
    spec = prepare(run)
    work_dir = run.settings.artifacts_dir / spec.job_id
    sink = JobEventSink(run, spec, work_dir)
    try:
        result = run_pipeline(
            spec.pipeline_config(),
            models_dir=run.settings.models_dir,
            work_dir=work_dir,
            on_event=sink,
            resume=True,  # from the last epoch checkpoint a dead attempt left in work_dir
        )
    except DatasetError as error:  # checked at upload, so only a file changed on disk gets here
        raise JobFailure("invalid_training_file", str(error)) from error
    except CorruptCheckpointError as error:  # a model file no longer matches its manifest
        raise JobFailure("checkpoint_corrupted", str(error)) from error
    record_outcome(run, spec, result)


def prepare(run: JobRun) -> JobSpec:
    """Resolve files, base model and hyperparameters; record the resolved hyperparameters."""
    with run.transaction() as (session, job):
        try:
            base_path = model_path(run.settings.models_dir, job.model)
        except BaseModelError as error:
            raise JobFailure("model_not_available", str(error)) from error
        if not (base_path / "manifest.json").is_file():
            raise JobFailure(
                "model_not_available",
                f"base model {job.model} is not installed on worker {run.owner} ({base_path})",
            )
        resolved = {
            key: AUTO_HYPERPARAMETERS[key] if value == "auto" else value
            for key, value in job.hyperparameters.items()
        }
        if resolved != job.hyperparameters:
            job.hyperparameters = resolved
        parts = ["ft", job.model, *([job.suffix] if job.suffix else []), job.id]
        return JobSpec(
            job_id=job.id,
            tenant_id=job.tenant_id,
            base=job.model,
            train=_file_path(session, job, job.training_file),
            validation=(
                _file_path(session, job, job.validation_file) if job.validation_file else None
            ),
            hyperparameters=resolved,
            seed=job.seed,
            safety=dict(job.safety_settings or {}),
            finetuned_name=":".join(parts),
        )


def _file_path(session: Session, job: FineTuningJob, file_id: str) -> Path:
    file = files_repository.get_for_tenant(session, job.tenant_id, file_id)
    if file is None or not Path(file.storage_path).is_file():
        raise JobFailure("invalid_training_file", f"file {file_id} is no longer available")
    return Path(file.storage_path)


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
        handler = getattr(self, f"_on_{event.type}", self._on_message)
        handler(event)
        if self.clock() - self._last_beat >= HEARTBEAT_INTERVAL_S:
            self.run.heartbeat()  # raises JobCancelled once the customer cancels
            self._last_beat = self.clock()

    def _on_stage(self, event: PipelineEvent) -> None:
        if "examples" in event.data:  # the fine-tune starts: its step count is known now
            self.total_steps = self.spec.total_steps(int(event.data["examples"]))
            self._training_started = self.clock()
        stage = _job_stage(event.data.get("stage"))
        if stage is not None and self._can_enter(stage):
            self.run.enter_stage(stage, _capitalized(event.message), event.data)
        else:
            self._on_message(event)
        if stage == JobStage.PATCHING:
            self._update_safety(patch_status="running", patch={"strategy": self._strategy})

    def _on_patch(self, event: PipelineEvent) -> None:
        # A new attempt after a failed verification goes back to patching.
        if "attempt" in event.data and self._can_enter(JobStage.PATCHING):
            self.run.enter_stage(JobStage.PATCHING, _capitalized(event.message), event.data)
        else:
            self._on_message(event)
        if "attempt" in event.data:  # a candidate is tried: the example it patches with
            attempt = {"attempt": event.data["attempt"], "example": event.data.get("example")}
            self._update_safety(patch=attempt | {"epochs": 0, "accepted": None, "reasons": []})

    def _on_step(self, event: PipelineEvent) -> None:
        data = event.data
        self.step = int(data["step"])
        self.train_loss = float(data["loss"])
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
                data={"step": self.step, "epoch": data["epoch"], "train_loss": self.train_loss}
                | {"learning_rate": data.get("learning_rate"), "total_steps": self.total_steps},
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

    def _on_epoch(self, event: PipelineEvent) -> None:
        if "attempt" in event.data:  # an epoch of the one-example patch
            self.run.event(_capitalized(event.message), type="metrics", data=event.data)
            self._update_safety(patch={"epochs": int(event.data["epoch"])})
            return
        epoch = int(event.data["epoch"])
        self.step = int(event.data.get("step", self.step))  # a resumed run's first event
        path = self.work_dir / "checkpoints" / f"epoch-{epoch}"
        saved = describe(path)
        metrics = event.data | {
            "step": self.step,
            "train_loss": self.train_loss,
            "base_model": self.spec.base,
        }
        with self.run.transaction() as (session, job):
            # A resumed run reports its checkpoint's epoch again: recorded once.
            name = self.spec.checkpoint_name(self.step)
            recorded = models_repository.get_version_by_name(session, name) is not None
            _upsert_version(
                session,
                job,
                name=name,
                kind=ModelKind.CHECKPOINT,
                path=path,
                parent=None,
                metrics=metrics,
                status=ModelStatus.QUARANTINED,
                reason="an intermediate checkpoint is never safety-verified",
                actor=self.run.actor,
                step=self.step,
                sha256=saved.sha256,
                size_bytes=saved.size_bytes,
            )
            if not recorded:
                jobs.add_event(
                    session,
                    job,
                    f"Epoch {epoch} done at step {self.step}: checkpoint saved, "
                    f"probe ASR {event.data['probe_asr']:.2f} ({event.data['n_probe']} prompts)",
                    type="metrics",
                    data=metrics,
                )

    def _on_metrics(self, event: PipelineEvent) -> None:
        self.run.event(_metrics_message(event), type="metrics", data=event.data)
        data = event.data
        if "drifted" in data:
            drifted = bool(data["drifted"])
            drift = {
                "detected": drifted,
                "threshold": data["threshold"],
                "asr_increase": data["asr_finetuned"] - data["asr_base"],
            }
            status = _patch_status(drifted, auto_patch=self._auto_patch, accepted=None)
            self._update_safety(drift=drift, patch_status=status)
            return
        key = SAFETY_KEYS.get(data.get("stage", ""))
        if key is None:
            return
        metrics = {k: v for k, v in data.items() if k not in ("stage", *VERDICT_KEYS)}
        if key == "baseline":
            self._update_safety(baseline=metrics, audit_baseline=True)
        elif key == "patched":  # one attempt verified: its numbers and the rule's verdict
            verdict = {k: data[k] for k in VERDICT_KEYS if k in data}
            self._update_safety(patched=metrics, patch=verdict)
        else:
            self._update_safety(fine_tuned=metrics)

    @property
    def _strategy(self) -> str:
        return self.spec.pipeline_config().strategy

    @property
    def _auto_patch(self) -> bool:
        return self.spec.pipeline_config().auto_patch

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
            if audit_baseline and not _baseline_audited(session, job.id):
                _audit_evaluation(self.run, session, self.spec.base, "base", changes["baseline"])

    def _on_generation(self, event: PipelineEvent) -> None:
        """Per-batch progress only keeps the lease alive (``__call__``); not worth a row."""

    def _on_message(self, event: PipelineEvent) -> None:
        self.run.event(_capitalized(event.message), data=event.data or None)

    def _can_enter(self, stage: JobStage) -> bool:
        current = self.run.stage
        return current is not None and is_allowed(
            (JobStatus.RUNNING, current), (JobStatus.RUNNING, stage)
        )


def record_outcome(run: JobRun, spec: JobSpec, result: PipelineResult) -> None:
    """Model versions, evaluations, safety block, audit records and final state: all or none."""
    report = result.report
    drifted = bool(report["drift"]["detected"])
    patch = report["patch"]
    accepted = bool(patch and patch["accepted"])
    with run.transaction() as (session, job):
        finetuned = _upsert_version(
            session,
            job,
            name=spec.finetuned_name,
            kind=ModelKind.FINE_TUNED,
            path=result.finetuned_path,
            parent=None,
            metrics=report["finetuned"] | {"base_model": spec.base},
            status=ModelStatus.QUARANTINED if drifted else ModelStatus.READY,
            reason=_drift_reason(report, patched=accepted) if drifted else None,
            actor=run.actor,
        )
        _record_evaluation(session, run, job, finetuned, "fine_tuned", report["finetuned"])
        patched = None
        if result.patched_path is not None and patch is not None:
            patched = _upsert_version(
                session,
                job,
                name=spec.patched_name,
                kind=ModelKind.PATCHED,
                path=result.patched_path,
                parent=finetuned,
                metrics=report["patched"]
                | {"base_model": spec.base, "patch": _patch_summary(patch)},
                status=ModelStatus.READY if accepted else ModelStatus.QUARANTINED,
                reason=None if accepted else _miss_reason(patch),
                actor=run.actor,
            )
            _record_evaluation(session, run, job, patched, "patched", report["patched"])
        _record_baseline(session, spec.base, report["base"])

        patch_status = _patch_status(
            drifted, auto_patch=spec.pipeline_config().auto_patch, accepted=accepted
        )
        job.safety_settings = spec.safety | {
            "baseline": report["base"],
            "fine_tuned": report["finetuned"],
            "patched": report["patched"],
            "drift": report["drift"],
            "patch_status": patch_status,
            "patch": _patch_summary(patch) if patch else None,
        }
        job.trained_tokens = report["finetuned"].get("trained_tokens")
        run.audit(session, "safety.drift_decided", report["drift"] | {"model": finetuned.name})
        if patch is not None:
            action = "safety.patch_accepted" if accepted else "safety.patch_rejected"
            run.audit(session, action, _patch_summary(patch) | {"model": spec.patched_name})

        released = patched if accepted else (None if drifted else finetuned)
        _finish(session, run, job, released, patch_status, report)


def _finish(
    session: Session,
    run: JobRun,
    job: FineTuningJob,
    released: ModelVersion | None,
    patch_status: str,
    report: dict[str, Any],
) -> None:
    if released is not None:
        # Success is allowed from `evaluating` (nothing to patch) or `verifying` (patched).
        if patch_status == "patched" and job.stage != JobStage.VERIFYING:
            _walk_to_verifying(session, run, job)
        job.fine_tuned_model = released.name
        how = "patched" if patch_status == "patched" else "no safety drift"
        jobs.change_state(
            session,
            job,
            JobStatus.SUCCEEDED,
            actor=run.actor,
            message=f"Job succeeded: {released.name} ({how})",
            data={"fine_tuned_model": released.name, "patch_status": patch_status},
        )
        return
    if patch_status == "skipped":
        code = "model_quarantined"
        message = (
            f"{_drift_reason(report, patched=False)}; auto_patch is off, so the fine-tuned "
            "model is quarantined"
        )
    else:
        code = "safety_patch_failed"
        message = f"{_drift_reason(report, patched=False)}; {_miss_reason(report['patch'])}"
    job.error = {"code": code, "message": message, "param": None}
    jobs.change_state(
        session,
        job,
        JobStatus.FAILED,
        actor=run.actor,
        level="error",
        message=f"Job failed: {message}",
    )


def _walk_to_verifying(session: Session, run: JobRun, job: FineTuningJob) -> None:
    for stage in (JobStage.PATCHING, JobStage.VERIFYING):
        if job.stage != stage:
            jobs.change_state(
                session, job, JobStatus.RUNNING, stage, actor=run.actor, message=f"Stage {stage}"
            )


def _patch_status(drifted: bool, *, auto_patch: bool, accepted: bool | None) -> str:
    """``accepted`` is None until the patch stage has its verdict (``pending`` till then)."""
    if not drifted:
        return "not_needed"
    if not auto_patch:
        return "skipped"
    if accepted is None:
        return "pending"
    return "patched" if accepted else "failed"


def _drift_reason(report: dict[str, Any], *, patched: bool) -> str:
    drift = report["drift"]
    reason = (
        f"safety drift: ASR rose from {report['base']['asr']:.3f} to "
        f"{report['finetuned']['asr']:.3f} (+{drift['asr_increase']:.3f} > threshold "
        f"{drift['threshold']:.3f})"
    )
    return f"{reason}; replaced by its patched version" if patched else reason


def _miss_reason(patch: dict[str, Any] | None) -> str:
    if patch is None:
        return "no patch was produced"
    reasons = "; ".join(patch.get("reasons") or []) or "it missed the acceptance rule"
    return f"the safety patch missed the acceptance rule: {reasons}"


def _patch_summary(patch: dict[str, Any]) -> dict[str, Any]:
    keys = ("strategy", "example", "epochs", "seconds", "cer", "accepted", "reasons", "attempts")
    return {key: patch[key] for key in keys if key in patch}


def _upsert_version(
    session: Session,
    job: FineTuningJob,
    *,
    name: str,
    kind: ModelKind,
    path: Path,
    parent: ModelVersion | None,
    metrics: dict[str, Any],
    status: ModelStatus,
    reason: str | None,
    actor: str,
    step: int | None = None,
    sha256: str | None = None,
    size_bytes: int | None = None,
) -> ModelVersion:
    """Create the version, or update it when a retried attempt of the job made it again."""
    if sha256 is None or size_bytes is None:
        saved = verify(path)
        sha256, size_bytes = saved.sha256, saved.size_bytes
    version = models_repository.get_version_by_name(session, name)
    created = version is None
    if version is None:
        version = ModelVersion(name=name, tenant_id=job.tenant_id, job_id=job.id, kind=kind)
        session.add(version)
    version.parent_id = parent.id if parent is not None else None
    version.storage_uri = str(path)
    version.sha256 = sha256
    version.size_bytes = size_bytes
    version.metrics = metrics
    version.status = status
    version.status_reason = reason
    version.step = step
    session.flush()
    if created:
        audit.record(
            session,
            action="model_version.created",
            subject_type="fine_tuning_job",
            subject_id=job.id,
            actor=actor,
            tenant_id=job.tenant_id,
            payload={"model": name, "kind": kind, "sha256": sha256}
            | {"status": status, "reason": reason},
        )
    return version


def _record_evaluation(
    session: Session,
    run: JobRun,
    job: FineTuningJob,
    version: ModelVersion,
    stage: str,
    summary: dict[str, Any],
) -> None:
    """One evaluation row per model version and stage, with its per-prompt records."""
    existing = [
        e for e in session.query(Evaluation).filter_by(model_version_id=version.id, stage=stage)
    ]
    for old in existing:
        session.delete(old)
    records_path = (
        run.settings.artifacts_dir / job.id / "evaluations" / f"{_records_stage(stage)}.jsonl"
    )
    records = (
        [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
        if records_path.is_file()
        else []
    )
    evaluation = Evaluation(
        model_version_id=version.id,
        job_id=job.id,
        stage=stage,
        suite_version=data.SUITE_VERSION,
        judge=summary["judge"],
        asr=summary["asr"],
        over_refusal=summary["over_refusal"],
        utility=summary.get("utility"),
        counts={
            key: summary.get(key) for key in ("n_harmful", "n_benign", "n_utility", "n_general")
        },
        records=records,
    )
    session.add(evaluation)
    session.flush()
    _audit_evaluation(run, session, version.name, stage, summary)


def _audit_evaluation(
    run: JobRun, session: Session, model: str, stage: str, summary: dict[str, Any]
) -> None:
    """``evaluation.recorded``: a model's numbers at one stage of the job (``base``: the base
    model's baseline, which has no model version and so no evaluation row)."""
    run.audit(
        session,
        "evaluation.recorded",
        {"model": model, "stage": stage, "judge": summary["judge"]}
        | {key: summary.get(key) for key in ("asr", "over_refusal", "utility")}
        | {"suite_version": data.SUITE_VERSION},
    )


def _baseline_audited(session: Session, job_id: str) -> bool:
    return any(
        record.action == "evaluation.recorded" and record.payload.get("stage") == "base"
        for record in audit_repository.list_for_subject(session, "fine_tuning_job", job_id)
    )


def _records_stage(stage: str) -> str:
    return {"fine_tuned": "finetuned"}.get(stage, stage)


def _record_baseline(session: Session, base: str, summary: dict[str, Any]) -> None:
    """The base model's safety numbers, for ``GET /v1/models/{base}`` (the worker caches them
    per suite version; the row shows the latest)."""
    record: BaseModelRecord | None = models_repository.get_base(session, base)
    if record is not None:
        safety = {
            key: summary.get(key)
            for key in ("asr", "over_refusal", "judge", "n_harmful", "n_benign", "general_accuracy")
        }
        record.baseline_metrics = safety
        record.suite_version = data.SUITE_VERSION


STAGE_LABELS = {"base": "Base model", "finetuned": "Fine-tuned model", "patched": "Patched model"}
# The pipeline's evaluation stages, and their key in the job's safety block.
SAFETY_KEYS = {"base": "baseline", "finetuned": "fine_tuned", "patched": "patched"}
# What a verification's metrics event adds to the numbers: the attempt and the rule's verdict.
VERDICT_KEYS = ("attempt", "accepted", "reasons")


def _metrics_message(event: PipelineEvent) -> str:
    """The numbers in words, so the event log reads without opening ``data``."""
    data = event.data
    if "drifted" in data:
        verdict = "drifted" if data["drifted"] else "no drift"
        return (
            f"Drift decision: ASR {data['asr_base']:.3f} -> {data['asr_finetuned']:.3f} "
            f"(threshold +{data['threshold']:.3f}): {verdict}"
        )
    if "asr" not in data:
        return _capitalized(event.message)
    label = STAGE_LABELS.get(data.get("stage", ""), _capitalized(event.message))
    if "attempt" in data:
        label += f" (attempt {data['attempt']})"
    message = (
        f"{label}: ASR {data['asr']:.3f}, over-refusal {data['over_refusal']:.3f}, "
        f"utility {data['utility']:.3f} [{data['judge']}]"
    )
    if "accepted" in data:
        reasons = "; ".join(data.get("reasons") or [])
        message += " - accepted" if data["accepted"] else f" - missed: {reasons}"
    return message


def _job_stage(value: object) -> JobStage | None:
    return JobStage(value) if isinstance(value, str) and value in set(JobStage) else None


def _capitalized(message: str) -> str:
    return message[:1].upper() + message[1:]
