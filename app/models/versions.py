"""How a job's model versions and their evaluations are written: the worker calls these.

The rules live here, next to the rules for reading versions (``service.py``): which versions are
quarantined and the reason the customer reads, which audit records each write leaves, and that
a retried attempt of a job updates what an earlier attempt wrote instead of adding to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.audit import repository as audit_repository
from app.audit import service as audit
from app.db.models import (
    BaseModelRecord,
    Evaluation,
    FineTuningJob,
    ModelKind,
    ModelStatus,
    ModelVersion,
)
from app.models import repository
from contracts.stages import EvalStage

# The audit actions of model versions and the safety decisions about them.
VERSION_CREATED = "model_version.created"
EVALUATION_RECORDED = "evaluation.recorded"
DRIFT_DECIDED = "safety.drift_decided"
PATCH_ACCEPTED = "safety.patch_accepted"
PATCH_REJECTED = "safety.patch_rejected"

CHECKPOINT_REASON = "an intermediate checkpoint is never safety-verified"
JOB_SUBJECT = "fine_tuning_job"


@dataclass(frozen=True)
class StoredModel:
    """Where a version's files are and what their manifest says (sha256 of the manifest)."""

    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Drift:
    """The drift decision's numbers, as the quarantine reason quotes them."""

    asr_base: float
    asr_fine_tuned: float
    threshold: float

    @property
    def increase(self) -> float:
        return self.asr_fine_tuned - self.asr_base

    def reason(self, *, patched: bool) -> str:
        reason = (
            f"safety drift: ASR rose from {self.asr_base:.3f} to {self.asr_fine_tuned:.3f} "
            f"(+{self.increase:.3f} > threshold {self.threshold:.3f})"
        )
        return f"{reason}; replaced by its patched version" if patched else reason


def patch_miss_reason(reasons: list[str] | None) -> str:
    """Why a patched model is quarantined (``None``: no patch was produced at all)."""
    if reasons is None:
        return "no patch was produced"
    listed = "; ".join(reasons) or "it missed the acceptance rule"
    return f"the safety patch missed the acceptance rule: {listed}"


def record_checkpoint(
    session: Session,
    job: FineTuningJob,
    *,
    name: str,
    stored: StoredModel,
    step: int,
    metrics: dict[str, Any],
    actor: str,
) -> bool:
    """An end-of-epoch checkpoint: always quarantined. False when a resumed attempt of the job
    recorded it already (it is updated, and the caller logs nothing new)."""
    existed = repository.get_version_by_name(session, name) is not None
    _upsert(
        session,
        job,
        name=name,
        kind=ModelKind.CHECKPOINT,
        stored=stored,
        parent=None,
        metrics=metrics,
        status=ModelStatus.QUARANTINED,
        reason=CHECKPOINT_REASON,
        actor=actor,
        step=step,
    )
    return not existed


def record_fine_tuned(
    session: Session,
    job: FineTuningJob,
    *,
    name: str,
    stored: StoredModel,
    metrics: dict[str, Any],
    drift: Drift | None,
    patched: bool,
    actor: str,
) -> ModelVersion:
    """The fine-tuned model: ready when it did not drift, else quarantined saying why."""
    return _upsert(
        session,
        job,
        name=name,
        kind=ModelKind.FINE_TUNED,
        stored=stored,
        parent=None,
        metrics=metrics,
        status=ModelStatus.READY if drift is None else ModelStatus.QUARANTINED,
        reason=None if drift is None else drift.reason(patched=patched),
        actor=actor,
    )


def record_patched(
    session: Session,
    job: FineTuningJob,
    *,
    name: str,
    stored: StoredModel,
    parent: ModelVersion,
    metrics: dict[str, Any],
    accepted: bool,
    miss_reasons: list[str],
    actor: str,
) -> ModelVersion:
    """The patched model: ready only when the acceptance rule accepted it."""
    return _upsert(
        session,
        job,
        name=name,
        kind=ModelKind.PATCHED,
        stored=stored,
        parent=parent,
        metrics=metrics,
        status=ModelStatus.READY if accepted else ModelStatus.QUARANTINED,
        reason=None if accepted else patch_miss_reason(miss_reasons),
        actor=actor,
    )


def record_evaluation(
    session: Session,
    job: FineTuningJob,
    version: ModelVersion,
    *,
    stage: EvalStage,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    suite_version: str,
    actor: str,
) -> None:
    """One evaluation row per model version and stage (a retried attempt replaces it), with its
    per-prompt records, and its ``evaluation.recorded`` audit record."""
    session.execute(
        delete(Evaluation).where(
            Evaluation.model_version_id == version.id, Evaluation.stage == stage
        )
    )
    session.add(
        Evaluation(
            model_version_id=version.id,
            job_id=job.id,
            stage=stage,
            suite_version=suite_version,
            judge=summary["judge"],
            asr=summary["asr"],
            over_refusal=summary["over_refusal"],
            utility=summary.get("utility"),
            counts={
                key: summary.get(key) for key in ("n_harmful", "n_benign", "n_utility", "n_general")
            },
            records=records,
        )
    )
    session.flush()
    audit_evaluation(
        session, job, model=version.name, stage=stage, summary=summary,
        suite_version=suite_version, actor=actor,
    )  # fmt: skip


def audit_evaluation(
    session: Session,
    job: FineTuningJob,
    *,
    model: str,
    stage: EvalStage,
    summary: dict[str, Any],
    suite_version: str,
    actor: str,
) -> None:
    """``evaluation.recorded``: a model's numbers at one stage of the job (``base``: the base
    model's baseline, which has no model version and so no evaluation row)."""
    _audit(
        session,
        job,
        EVALUATION_RECORDED,
        {"model": model, "stage": stage, "judge": summary["judge"]}
        | {key: summary.get(key) for key in ("asr", "over_refusal", "utility")}
        # The report set's rates (and intervals), which no decision read: the numbers to quote.
        | {"report": summary.get("report")}
        | {"suite_version": suite_version},
        actor,
    )


def baseline_audited(session: Session, job: FineTuningJob) -> bool:
    """Whether the job's base-model evaluation was audited already (by an earlier attempt)."""
    return any(
        record.action == EVALUATION_RECORDED and record.payload.get("stage") == EvalStage.BASE
        for record in audit_repository.list_for_subject(session, JOB_SUBJECT, job.id)
    )


def record_baseline(
    session: Session, base: str, summary: dict[str, Any], *, suite_version: str
) -> None:
    """The base model's safety numbers, for ``GET /v1/models/{base}`` (the worker caches them
    per suite version; the row shows the latest)."""
    record: BaseModelRecord | None = repository.get_base(session, base)
    if record is not None:
        keys = (
            *("asr", "over_refusal", "judge", "n_harmful", "n_benign", "general_accuracy"),
            *("asr_interval", "over_refusal_interval", "report"),
        )
        record.baseline_metrics = {key: summary.get(key) for key in keys}
        record.suite_version = suite_version


def record_drift_decision(
    session: Session, job: FineTuningJob, decision: dict[str, Any], *, model: str, actor: str
) -> None:
    _audit(session, job, DRIFT_DECIDED, decision | {"model": model}, actor)


def record_patch_verdict(
    session: Session,
    job: FineTuningJob,
    summary: dict[str, Any],
    *,
    accepted: bool,
    model: str,
    actor: str,
) -> None:
    action = PATCH_ACCEPTED if accepted else PATCH_REJECTED
    _audit(session, job, action, summary | {"model": model}, actor)


def _upsert(
    session: Session,
    job: FineTuningJob,
    *,
    name: str,
    kind: ModelKind,
    stored: StoredModel,
    parent: ModelVersion | None,
    metrics: dict[str, Any],
    status: ModelStatus,
    reason: str | None,
    actor: str,
    step: int | None = None,
) -> ModelVersion:
    """Create the version, or update it when a retried attempt of the job made it again."""
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    created = version is None
    if version is None:
        version = ModelVersion(name=name, tenant_id=job.tenant_id, job_id=job.id, kind=kind)
        session.add(version)
    version.parent_id = parent.id if parent is not None else None
    version.storage_uri = stored.uri
    version.sha256 = stored.sha256
    version.size_bytes = stored.size_bytes
    version.metrics = metrics
    version.status = status
    version.status_reason = reason
    version.step = step
    session.flush()
    if created:
        _audit(
            session,
            job,
            VERSION_CREATED,
            {"model": name, "kind": kind, "sha256": stored.sha256}
            | {"status": status, "reason": reason},
            actor,
        )
    return version


def _audit(
    session: Session, job: FineTuningJob, action: str, payload: dict[str, Any], actor: str
) -> None:
    audit.record(
        session,
        action=action,
        subject_type=JOB_SUBJECT,
        subject_id=job.id,
        actor=actor,
        tenant_id=job.tenant_id,
        payload=payload,
    )
