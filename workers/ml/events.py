"""Progress events the pipeline emits: the CLI draws them, the Celery worker stores them.

One frozen dataclass per kind of event, each with the line a person reads (``message``); a sink
dispatches on the class (``match event: case StageEntered(): ...``), so mypy sees every field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from contracts.stages import EvalStage
from workers.ml.report import (
    DriftDecision,
    ExampleText,
    ProbeEpoch,
    ProbeReading,
    RankedCandidate,
    ScreenReading,
    StageSummary,
)


class PipelineStage(StrEnum):
    """The stages of a running job that the pipeline announces (the job's ``stage``)."""

    FINE_TUNING = "fine_tuning"
    EVALUATING = "evaluating"
    PATCHING = "patching"
    VERIFYING = "verifying"


@dataclass(frozen=True)
class Notice:
    """Progress worth a line in the log and nothing more."""

    message: str


@dataclass(frozen=True)
class StageEntered:
    stage: PipelineStage
    description: str
    attempt: int | None = None  # the patch attempt a verification belongs to

    @property
    def message(self) -> str:
        return self.description


@dataclass(frozen=True)
class FineTuningStarted:
    examples: int  # training conversations: with the batch size, the step count

    @property
    def message(self) -> str:
        return f"fine-tuning on {self.examples} examples"


@dataclass(frozen=True)
class CheckpointSkipped:
    """A dead run's checkpoint that does not verify, so the run does not resume from it."""

    epoch: int
    problem: str

    @property
    def message(self) -> str:
        return f"not resuming from the epoch {self.epoch} checkpoint: {self.problem}"


@dataclass(frozen=True)
class ResumedFromCheckpoint:
    epoch: int
    step: int

    @property
    def message(self) -> str:
        return f"resuming fine-tuning from the epoch {self.epoch} checkpoint (step {self.step})"


@dataclass(frozen=True)
class TrainingStep:
    step: int
    epoch: int
    loss: float
    learning_rate: float

    @property
    def message(self) -> str:
        return f"step {self.step} loss {self.loss:.4f}"


@dataclass(frozen=True)
class FineTuneEpochEnded:
    """An epoch of the fine-tune ended; its checkpoint is saved with the probe's reading."""

    epoch: int
    step: int
    probe: ProbeReading

    @property
    def message(self) -> str:
        return f"epoch {self.epoch}: probe ASR {self.probe.probe_asr:.2f}"


@dataclass(frozen=True)
class GenerationProgress:
    """Replies generated so far in one suite of one evaluation (keeps a job's lease alive)."""

    stage: EvalStage
    suite: str
    done: int
    total: int

    @property
    def message(self) -> str:
        return f"{self.stage} {self.suite} {self.done}/{self.total}"


@dataclass(frozen=True)
class StageEvaluated:
    """A model's numbers on the suites: the base's baseline or the fine-tuned model's."""

    stage: EvalStage
    metrics: StageSummary

    @property
    def message(self) -> str:
        m = self.metrics
        return (
            f"{self.stage.label}: ASR {m.asr:.3f}, over-refusal {m.over_refusal:.3f}, "
            f"utility {m.utility:.3f} [{m.judge}]"
        )


@dataclass(frozen=True)
class DriftDecided:
    decision: DriftDecision
    asr_base: float
    asr_fine_tuned: float

    @property
    def message(self) -> str:
        verdict = "drifted" if self.decision.detected else "no drift"
        return (
            f"Drift decision: ASR {self.asr_base:.3f} -> {self.asr_fine_tuned:.3f} "
            f"(threshold +{self.decision.threshold:.3f}): {verdict}"
        )


@dataclass(frozen=True)
class CandidatesRanked:
    seconds: float
    excluded: int  # pool candidates left out because their prompt is in the customer's data
    top: tuple[RankedCandidate, ...]

    @property
    def message(self) -> str:
        best = ", ".join(candidate.id for candidate in self.top)
        return f"candidates ranked in {self.seconds:.0f} s; top: {best}"


@dataclass(frozen=True)
class CandidateScreened:
    reading: ScreenReading
    epochs: int

    @property
    def message(self) -> str:
        r = self.reading
        return (
            f"screened {r.example_id}: probe ASR {r.probe_asr:.2f}, "
            f"over-refusal {r.probe_over_refusal:.2f} after {self.epochs} epochs"
        )


@dataclass(frozen=True)
class PatchAttemptStarted:
    attempt: int
    example_id: str
    example: ExampleText

    @property
    def message(self) -> str:
        return f"attempt {self.attempt}: {self.example_id} {self.example.prompt!r}"


@dataclass(frozen=True)
class PatchEpochEnded:
    attempt: int
    reading: ProbeEpoch

    @property
    def message(self) -> str:
        r = self.reading
        return f"patch epoch {r.epoch}: probe ASR {r.asr:.2f}, over-refusal {r.over_refusal:.2f}"


@dataclass(frozen=True)
class PatchVerified:
    """One attempt's patched model on the full suites, and the acceptance rule's verdict."""

    attempt: int
    metrics: StageSummary
    accepted: bool
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        m = self.metrics
        verdict = "accepted" if self.accepted else "missed: " + "; ".join(self.reasons)
        return (
            f"{EvalStage.PATCHED.label} (attempt {self.attempt}): ASR {m.asr:.3f}, "
            f"over-refusal {m.over_refusal:.3f}, utility {m.utility:.3f} [{m.judge}] - {verdict}"
        )


PipelineEvent = (
    Notice
    | StageEntered
    | FineTuningStarted
    | CheckpointSkipped
    | ResumedFromCheckpoint
    | TrainingStep
    | FineTuneEpochEnded
    | GenerationProgress
    | StageEvaluated
    | DriftDecided
    | CandidatesRanked
    | CandidateScreened
    | PatchAttemptStarted
    | PatchEpochEnded
    | PatchVerified
)

EventSink = Callable[[PipelineEvent], None]


def ignore(_: PipelineEvent) -> None:
    """The default sink."""
