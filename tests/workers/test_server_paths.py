"""Tenants read job events, job errors and the audit trail: a server path in them (a checkpoint
that does not verify, a file that went missing) is named relative to the data directory."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.models import AuditRecord, FineTuningJob, JobEvent
from contracts.manifest import CorruptCheckpointError, verify
from tests.factories import Caller, create_job
from workers.execution import execute_job
from workers.ml.events import CheckpointSkipped
from workers.runtime import JobFailure, JobRun


def tenant_visible(session: Session, job: FineTuningJob) -> str:
    session.expire_all()
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id))
    audit = session.scalars(select(AuditRecord).where(AuditRecord.subject_id == job.id))
    fresh = session.get(FineTuningJob, job.id)
    assert fresh is not None
    return json.dumps(
        {
            "events": [(event.message, event.data) for event in events],
            "audit": [record.payload for record in audit],
            "error": fresh.error,
        }
    )


def test_events_and_errors_name_paths_relative_to_the_data_directory(
    session: Session, caller: Caller, settings: Settings, session_factory: SessionFactory
) -> None:
    job = create_job(session, caller)
    session.commit()
    checkpoint = settings.artifacts_dir / job.id / "checkpoints" / "epoch-1"
    checkpoint.mkdir(parents=True)  # no manifest: it does not verify

    def pipeline(run: JobRun) -> None:
        # As resume_point and run_job_pipeline report a checkpoint that does not verify.
        with pytest.raises(CorruptCheckpointError) as raised:
            verify(checkpoint)
        skipped = CheckpointSkipped(epoch=1, problem=str(raised.value))
        run.event(skipped.message, data=asdict(skipped))
        raise JobFailure("checkpoint_corrupted", str(raised.value))

    execute_job(
        job.id, pipeline=pipeline, owner="w", settings=settings, session_factory=session_factory
    )

    shown = tenant_visible(session, job)
    assert str(settings.data_dir) not in shown
    relative = (
        f"artifacts/{job.id}/checkpoints/epoch-1: no manifest.json; not a safepatch model directory"
    )
    assert f"not resuming from the epoch 1 checkpoint: {relative}" in shown  # the event
    assert json.dumps({"epoch": 1, "problem": relative}) in shown  # its data
    assert f"Job failed: {relative}" in shown
    assert json.loads(shown)["error"]["message"] == relative
