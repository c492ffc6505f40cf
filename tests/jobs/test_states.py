"""The state machine, exhaustively: every (state, state) pair is either in LEGAL or raises."""

from __future__ import annotations

import itertools

import pytest

from app.db.models import FineTuningJob
from app.jobs.states import (
    IllegalTransition,
    JobStage,
    JobStatus,
    State,
    is_allowed,
    transition,
)

S = JobStatus
G = JobStage

# Written out by hand from the issue, independently of the implementation's tables.
LEGAL: set[tuple[State, State]] = {
    ((S.VALIDATING_FILES, None), (S.QUEUED, None)),
    ((S.VALIDATING_FILES, None), (S.FAILED, None)),
    ((S.VALIDATING_FILES, None), (S.CANCELLED, None)),
    ((S.QUEUED, None), (S.RUNNING, G.FINE_TUNING)),
    ((S.QUEUED, None), (S.FAILED, None)),
    ((S.QUEUED, None), (S.CANCELLED, None)),
    ((S.RUNNING, G.FINE_TUNING), (S.RUNNING, G.EVALUATING)),
    ((S.RUNNING, G.EVALUATING), (S.RUNNING, G.PATCHING)),
    ((S.RUNNING, G.PATCHING), (S.RUNNING, G.VERIFYING)),
    ((S.RUNNING, G.VERIFYING), (S.RUNNING, G.PATCHING)),
    ((S.RUNNING, G.EVALUATING), (S.SUCCEEDED, None)),
    ((S.RUNNING, G.VERIFYING), (S.SUCCEEDED, None)),
} | {((S.RUNNING, stage), (end, None)) for stage in G for end in (S.FAILED, S.CANCELLED)}

# Every combination, including malformed ones (running without a stage, a stage outside running).
ALL_STATES: list[State] = [(status, stage) for status in S for stage in (None, *G)]


def make_job(state: State) -> FineTuningJob:
    status, stage = state
    return FineTuningJob(id="ftjob-test", status=status, stage=stage)


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL))
def test_legal_transition_changes_the_job(current: State, new: State) -> None:
    job = make_job(current)
    assert transition(job, *new) == current
    assert (job.status, job.stage) == new


def test_every_other_pair_is_illegal_and_leaves_the_job_unchanged() -> None:
    illegal = [pair for pair in itertools.product(ALL_STATES, ALL_STATES) if pair not in LEGAL]
    assert len(illegal) == len(ALL_STATES) ** 2 - len(LEGAL)
    for current, new in illegal:
        assert not is_allowed(current, new), (current, new)
        job = make_job(current)
        with pytest.raises(IllegalTransition):
            transition(job, *new)
        assert (job.status, job.stage) == current


def test_terminal_states_have_no_way_out() -> None:
    for status in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        assert not any(is_allowed((status, None), new) for new in ALL_STATES)


def test_timestamps_and_lease_follow_the_state() -> None:
    job = make_job((S.QUEUED, None))
    job.lease_owner = "worker-1"
    transition(job, S.RUNNING, G.FINE_TUNING)
    assert job.started_at is not None and job.finished_at is None
    started = job.started_at
    transition(job, S.RUNNING, G.EVALUATING)
    assert job.started_at == started
    transition(job, S.SUCCEEDED)
    assert job.finished_at is not None
    assert job.lease_owner is None and job.lease_expires_at is None


def test_illegal_transition_is_a_409_conflict() -> None:
    error = IllegalTransition("nope")
    assert error.status_code == 409
    assert error.code == "invalid_job_state"
