"""The job state machine: the only code that changes a job's ``status`` or ``stage``.

    validating_files -> queued -> running -> succeeded | failed | cancelled

While ``running`` the job also has a ``stage`` (and only then):

    fine_tuning -> evaluating -> (patching -> verifying)+

A job may succeed only from ``evaluating`` (the fine-tune was found safe, nothing to patch) or
``verifying`` (the patched model passed): no model is released without a safety evaluation.
``verifying -> patching`` allows another patch round when verification still finds it unsafe.
Any non-terminal state may fail or be cancelled. The API (cancel) and the worker share this module.
"""

from __future__ import annotations

from enum import StrEnum

from app.core.errors import Conflict
from app.db.base import utcnow
from app.db.models import FineTuningJob


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStage(StrEnum):
    FINE_TUNING = "fine_tuning"
    EVALUATING = "evaluating"
    PATCHING = "patching"
    VERIFYING = "verifying"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# A state is (status, stage); stage is None outside `running`.
State = tuple[JobStatus, JobStage | None]

_RUNNING_STAGE_MOVES: dict[JobStage, frozenset[JobStage]] = {
    JobStage.FINE_TUNING: frozenset({JobStage.EVALUATING}),
    JobStage.EVALUATING: frozenset({JobStage.PATCHING}),
    JobStage.PATCHING: frozenset({JobStage.VERIFYING}),
    JobStage.VERIFYING: frozenset({JobStage.PATCHING}),
}
_CAN_SUCCEED_FROM = frozenset({JobStage.EVALUATING, JobStage.VERIFYING})


class IllegalTransition(Conflict):
    """A move the state machine forbids; a 409 when it reaches the API."""

    code = "invalid_job_state"


def is_allowed(current: State, new: State) -> bool:
    """Whether the state machine allows ``current -> new``."""
    status, stage = current
    new_status, new_stage = new
    if (status == JobStatus.RUNNING) != (stage is not None):
        return False  # `current` is not a valid state at all
    if (new_status == JobStatus.RUNNING) != (new_stage is not None):
        return False
    if status in TERMINAL:
        return False
    if new_status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return True
    if status == JobStatus.VALIDATING_FILES:
        return new_status == JobStatus.QUEUED
    if status == JobStatus.QUEUED:
        return new_status == JobStatus.RUNNING and new_stage == JobStage.FINE_TUNING
    # running
    assert stage is not None
    if new_status == JobStatus.SUCCEEDED:
        return stage in _CAN_SUCCEED_FROM
    if new_status == JobStatus.RUNNING:
        assert new_stage is not None
        return new_stage in _RUNNING_STAGE_MOVES[stage]
    return False


def state_of(job: FineTuningJob) -> State:
    return JobStatus(job.status), JobStage(job.stage) if job.stage is not None else None


def transition(job: FineTuningJob, new_status: JobStatus, stage: JobStage | None = None) -> State:
    """Move ``job`` to ``(new_status, stage)`` or raise ``IllegalTransition``; return the old one.

    Also stamps ``started_at`` on entering ``running`` and ``finished_at`` on a terminal state
    (where the lease is cleared). ``estimated_finish`` is the fine-tune's, so it is cleared as
    soon as the job leaves ``fine_tuning``: later stages have no estimate.
    The caller persists the row (and writes the event and audit record, see ``jobs.service``).
    """
    current = state_of(job)
    new_status = JobStatus(new_status)
    stage = JobStage(stage) if stage is not None else None
    if not is_allowed(current, (new_status, stage)):
        raise IllegalTransition(
            f"Job {job.id} cannot go from {_describe(current)} to {_describe((new_status, stage))}."
        )
    job.status = new_status
    job.stage = stage
    if stage != JobStage.FINE_TUNING:
        job.estimated_finish = None
    if new_status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = utcnow()
    if new_status in TERMINAL:
        job.finished_at = utcnow()
        job.lease_owner = None
        job.lease_expires_at = None
    return current


def _describe(state: State) -> str:
    status, stage = state
    return f"{status.value} ({stage.value})" if stage else status.value
