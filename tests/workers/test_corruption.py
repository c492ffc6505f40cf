"""A model file that no longer matches its manifest fails the job with ``checkpoint_corrupted``,
naming the file, before any weight is used (both backends)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.models import File, FineTuningJob
from app.jobs.states import JobStatus
from tests.factories import Caller, create_base_model, create_job
from tests.tiny_models import TINY_SAFE
from workers import data, job_pipeline
from workers.execution import execute_job


@pytest.fixture
def base_copy(settings: Settings, tiny_safe_model: Path) -> Path:
    """A copy of the tiny base model in the worker's models directory, to damage."""
    settings.ensure_dirs()
    return Path(shutil.copytree(tiny_safe_model, settings.models_dir / TINY_SAFE))


def run(session: Session, caller: Caller, settings: Settings, factory: SessionFactory) -> dict:
    create_base_model(session, TINY_SAFE)
    job = create_job(session, caller, model=TINY_SAFE)
    training = session.get(File, job.training_file)
    assert training is not None
    training.storage_path = str(data.DEMO_TRAIN)
    session.commit()
    execute_job(
        job.id,
        pipeline=job_pipeline.run_job_pipeline,
        owner="worker-a",
        settings=settings,
        session_factory=factory,
    )
    session.expire_all()
    done = session.get(FineTuningJob, job.id)
    assert done is not None and done.status == JobStatus.FAILED and done.error is not None
    return dict(done.error)


def test_a_corrupted_base_model_fails_the_job_saying_which_file(
    session: Session,
    caller: Caller,
    settings: Settings,
    session_factory: SessionFactory,
    base_copy: Path,
) -> None:
    weights = base_copy / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))

    error = run(session, caller, settings, session_factory)

    assert error["code"] == "checkpoint_corrupted"
    # The file is named relative to the data directory: the server's own paths stay in its logs.
    relative = weights.relative_to(settings.data_dir)
    assert error["message"].startswith(f"{relative}: ")
    assert str(settings.data_dir) not in error["message"]
    assert "sha256 does not match the manifest" in error["message"]


def test_a_pickle_beside_the_weights_fails_the_job(
    session: Session,
    caller: Caller,
    settings: Settings,
    session_factory: SessionFactory,
    base_copy: Path,
) -> None:
    (base_copy / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")

    error = run(session, caller, settings, session_factory)

    assert error["code"] == "checkpoint_corrupted"
    assert "pickle files present (pytorch_model.bin)" in error["message"]
