"""What a worker does with one job: the safety pipeline, told to the database as it goes.

    prepare (files, base model, resolved hyperparameters)
    -> run_pipeline (workers/ml/pipeline.py), its events becoming job stages and job events,
       each end-of-epoch checkpoint a model version (workers/job_events.py)
    -> record the outcome in one transaction: model versions, evaluations, the safety block,
       audit records and the job's final state.

A fine-tuned model that drifted is never released: the patched model replaces it when it passes
the acceptance rule, and otherwise both are quarantined and the job fails saying why. The rules
for model versions (quarantine, reasons, audit records) are ``app.models.versions``'.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import FineTuningJob, ModelVersion
from app.files import repository as files_repository
from app.jobs import service as jobs
from app.jobs.states import JobStage, JobStatus
from app.models import versions
from contracts.jsonl import DatasetError
from contracts.manifest import CorruptCheckpointError, verify
from contracts.stages import EvalStage
from workers import data
from workers.job_events import JobEventSink, patch_status
from workers.job_spec import AUTO_HYPERPARAMETERS, JobSpec
from workers.ml.base_models import BaseModelError, model_path
from workers.ml.pipeline import PipelineResult, records_path, run_pipeline
from workers.ml.report import PatchReport, PipelineReport
from workers.runtime import JobFailure, JobRun


def run_job_pipeline(run: JobRun) -> None:
    """The ``Pipeline`` a Celery worker runs (``workers.tasks.run_job``)."""
    spec = prepare(run)
    work_dir = run.settings.artifacts_dir / spec.job_id
    sink = JobEventSink(run, spec, work_dir)
    try:
        result = run_pipeline(
            spec.pipeline_config(
                judge=run.settings.judge, extra_judges=tuple(run.settings.extra_judges)
            ),
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


def record_outcome(run: JobRun, spec: JobSpec, result: PipelineResult) -> None:
    """Model versions, evaluations, safety block, audit records and final state: all or none."""
    report = result.report
    drifted = report.drift.detected
    patch = report.patch
    accepted = bool(patch and patch.accepted)
    drift = versions.Drift(report.base.asr, report.fine_tuned.asr, report.drift.threshold)
    fine_tuned_numbers = report.fine_tuned.as_dict() | {"trained_tokens": report.trained_tokens}
    with run.transaction() as (session, job):
        finetuned = versions.record_fine_tuned(
            session,
            job,
            name=spec.finetuned_name,
            stored=_stored(result.finetuned_path),
            metrics=fine_tuned_numbers | {"base_model": spec.base},
            drift=drift if drifted else None,
            patched=accepted,
            actor=run.actor,
        )
        _record_evaluation(session, run, job, finetuned, EvalStage.FINE_TUNED, report)
        patched = None
        if result.patched_path is not None and patch is not None and report.patched is not None:
            patched = versions.record_patched(
                session,
                job,
                name=spec.patched_name,
                stored=_stored(result.patched_path),
                parent=finetuned,
                metrics=report.patched.as_dict()
                | {"base_model": spec.base, "patch": patch_summary(patch)},
                accepted=accepted,
                miss_reasons=list(patch.reasons),
                actor=run.actor,
            )
            _record_evaluation(session, run, job, patched, EvalStage.PATCHED, report)
        versions.record_baseline(
            session, spec.base, report.base.as_dict(), suite_version=data.SUITE_VERSION
        )

        status = patch_status(drifted, spec.auto_patch, accepted=accepted)
        job.safety_settings = spec.safety | {
            "baseline": report.base.as_dict(),
            "fine_tuned": fine_tuned_numbers,
            "patched": report.patched.as_dict() if report.patched else None,
            "drift": asdict(report.drift),
            "patch_status": status,
            "patch": patch_summary(patch) if patch else None,
        }
        job.trained_tokens = report.trained_tokens
        versions.record_drift_decision(
            session, job, asdict(report.drift), model=finetuned.name, actor=run.actor
        )
        if patch is not None:
            versions.record_patch_verdict(
                session, job, patch_summary(patch), accepted=accepted,
                model=spec.patched_name, actor=run.actor,
            )  # fmt: skip

        released = patched if accepted else (None if drifted else finetuned)
        _finish(session, run, job, released, status, drift, patch)


def _finish(
    session: Session,
    run: JobRun,
    job: FineTuningJob,
    released: ModelVersion | None,
    status: str,
    drift: versions.Drift,
    patch: PatchReport | None,
) -> None:
    if released is not None:
        # Success is allowed from `evaluating` (nothing to patch) or `verifying` (patched).
        if status == "patched" and job.stage != JobStage.VERIFYING:
            _walk_to_verifying(session, run, job)
        job.fine_tuned_model = released.name
        how = "patched" if status == "patched" else "no safety drift"
        jobs.change_state(
            session,
            job,
            JobStatus.SUCCEEDED,
            actor=run.actor,
            message=f"Job succeeded: {released.name} ({how})",
            data={"fine_tuned_model": released.name, "patch_status": status},
        )
        return
    if status == "skipped":
        code = "model_quarantined"
        message = (
            f"{drift.reason(patched=False)}; auto_patch is off, so the fine-tuned "
            "model is quarantined"
        )
    else:
        code = "safety_patch_failed"
        reasons = list(patch.reasons) if patch is not None else None
        message = f"{drift.reason(patched=False)}; {versions.patch_miss_reason(reasons)}"
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


def patch_summary(patch: PatchReport) -> dict[str, Any]:
    """The patch as the job's safety block, its patched model and the audit trail show it."""
    return {
        "strategy": patch.strategy,
        "example": asdict(patch.example),
        "epochs": patch.epochs,
        "seconds": patch.seconds,
        "cer": asdict(patch.cer) if patch.cer else None,
        "accepted": patch.accepted,
        "reasons": list(patch.reasons),
        "attempts": [asdict(attempt) for attempt in patch.attempts],
    }


def _stored(path: Path) -> versions.StoredModel:
    saved = verify(path)
    return versions.StoredModel(str(path), saved.sha256, saved.size_bytes)


def _record_evaluation(
    session: Session,
    run: JobRun,
    job: FineTuningJob,
    version: ModelVersion,
    stage: EvalStage,
    report: PipelineReport,
) -> None:
    summary = report.stage(stage)
    assert summary is not None
    path = records_path(run.settings.artifacts_dir / job.id, stage)
    records = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.is_file()
        else []
    )
    versions.record_evaluation(
        session, job, version, stage=stage, summary=summary.as_dict(), records=records,
        suite_version=data.SUITE_VERSION, actor=run.actor,
    )  # fmt: skip
