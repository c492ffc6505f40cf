"""What the pipeline reports: typed, torch-free, and written as JSON by ``to_json``.

The job runner, the CLI, the benches and the tests read these fields; a renamed field is a type
error, not a key that silently goes missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

from contracts.stages import EvalStage

Interval = tuple[float, float]  # a 95% Wilson interval (low, high) around a rate


@dataclass(frozen=True)
class ReportSet:
    """A model's rates on the report set: prompts no decision ever reads (not screening, not
    stopping, not the acceptance gate), so they show how the patch holds on prompts nobody tuned
    to. The gate's numbers are the ``StageSummary`` fields themselves."""

    asr: float
    over_refusal: float
    n_harmful: int
    n_benign: int
    asr_interval: Interval
    over_refusal_interval: Interval

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportSet:
        return cls(
            asr=data["asr"],
            over_refusal=data["over_refusal"],
            n_harmful=data["n_harmful"],
            n_benign=data["n_benign"],
            asr_interval=_interval(data["asr_interval"]),
            over_refusal_interval=_interval(data["over_refusal_interval"]),
        )


@dataclass(frozen=True)
class JudgeReading:
    """Another configured judge's reading of the same replies (no decision reads it)."""

    judge: str
    asr: float
    over_refusal: float
    report_asr: float | None = None
    report_over_refusal: float | None = None


@dataclass
class StageSummary:
    """One model's numbers on the gate suites and the customer's task (no per-prompt records).

    ``asr`` and ``over_refusal`` are the acceptance gate's: drift and acceptance decide on them.
    ``report`` holds the report set's, which is what jobs, audit records and benches quote.
    """

    asr: float
    over_refusal: float
    utility: float
    n_harmful: int
    n_benign: int
    n_utility: int
    judge: str
    utility_f1: float = 0.0
    general_accuracy: float | None = None
    n_general: int = 0
    seconds: float = 0.0
    asr_interval: Interval = (0.0, 1.0)
    over_refusal_interval: Interval = (0.0, 1.0)
    utility_interval: Interval = (0.0, 1.0)
    report: ReportSet | None = None
    other_judges: tuple[JudgeReading, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-shaped: intervals and readings as lists, as they read back from storage."""
        return json.loads(json.dumps(asdict(self)))

    def on_report_set(self) -> StageSummary | None:
        """These numbers with the report set's ASR and over-refusal in the gate's place (for the
        acceptance rule read on the report set); None when the report set was not measured."""
        if self.report is None:
            return None
        return replace(
            self,
            asr=self.report.asr,
            over_refusal=self.report.over_refusal,
            n_harmful=self.report.n_harmful,
            n_benign=self.report.n_benign,
            asr_interval=self.report.asr_interval,
            over_refusal_interval=self.report.over_refusal_interval,
            report=None,
            other_judges=(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("asr_interval", "over_refusal_interval", "utility_interval"):
            if name in values:
                values[name] = _interval(values[name])
        if values.get("report") is not None:
            values["report"] = ReportSet.from_dict(values["report"])
        values["other_judges"] = tuple(
            JudgeReading(**reading) for reading in values.get("other_judges", ())
        )
        return cls(**values)


def _interval(value: Any) -> Interval:
    low, high = value
    return (float(low), float(high))


@dataclass(frozen=True)
class ExampleText:
    """The one (harmful request, refusal) pair a patch trains on."""

    prompt: str
    reply: str


@dataclass(frozen=True)
class ProbeEpoch:
    """The probe's reading after one epoch of a patch."""

    epoch: int
    asr: float
    over_refusal: float
    loss: float  # the safety example's CE loss at the step that produced this epoch


@dataclass(frozen=True)
class ProbeReading:
    """The quick ASR probe taken at the end of each fine-tuning epoch."""

    probe_asr: float
    n_probe: int
    judge: str


@dataclass(frozen=True)
class ScreenReading:
    """One candidate's probe after a short screening patch."""

    example_id: str
    probe_asr: float
    probe_over_refusal: float
    violation: float  # how far the short patch misses the probe targets (0: meets them)


@dataclass(frozen=True)
class AttemptSummary:
    """One verified patch attempt: its example, the rule's verdict and its numbers."""

    example_id: str
    accepted: bool
    reasons: tuple[str, ...]
    epochs: int
    seconds: float
    asr: float
    over_refusal: float
    utility: float
    verify_seconds: float = 0.0  # the attempt's evaluation on the gate


@dataclass(frozen=True)
class RankedCandidate:
    id: str
    score: float
    components: dict[str, float] = field(default_factory=dict)  # score term -> value


@dataclass(frozen=True)
class SelectionReport:
    """How the example was chosen: the proxy's ranking, then screening by short patches."""

    rule: str
    seconds: float
    excluded_customer_prompts: tuple[str, ...]  # ids of pool candidates in the customer's data
    chosen: RankedCandidate
    screening: tuple[ScreenReading, ...]


@dataclass(frozen=True)
class CerReport:
    """The safety gradient's cumulative energy ratio CER(k) over the patched matrices."""

    k: int
    mean: float
    min: float
    max: float
    n_matrices: int
    by_kind: dict[str, float]  # matrix kind (q_proj, ...) -> mean CER(k)


@dataclass(frozen=True)
class PatchReport:
    """The patch stage's result: the kept attempt, the rule's verdict and every attempt."""

    strategy: str
    example: ExampleText
    example_id: str
    epochs: int  # epochs (sft) or steps (projection) actually run
    best_epoch: int  # whose weights the patched model has
    seconds: float
    cer: CerReport | None
    probe_history: tuple[ProbeEpoch, ...]
    stopped_early: bool
    accepted: bool
    reasons: tuple[str, ...]  # why the kept attempt missed the rule; empty when accepted
    selection: SelectionReport | None
    attempts: tuple[AttemptSummary, ...]
    total_seconds: float
    # From the stage's start to the patched model it keeps, its final gate evaluation and the
    # report set excluded: what the patch itself costs.
    choice_seconds: float = 0.0
    # The same rule read on the report set, after every choice was made: measured, never acted
    # on (None when no report set was given).
    report_accepted: bool | None = None
    report_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftDecision:
    detected: bool
    threshold: float
    asr_increase: float  # fine-tuned ASR minus the base's


@dataclass(frozen=True)
class ModelPaths:
    base: str
    fine_tuned: str
    patched: str | None


@dataclass(frozen=True)
class PipelineReport:
    base: StageSummary
    fine_tuned: StageSummary
    trained_tokens: int
    patched: StageSummary | None
    patch: PatchReport | None
    drift: DriftDecision
    seconds: dict[str, float]  # pipeline phase -> wall seconds
    peak_memory_bytes: int | None
    device: str
    suite_version: str
    models: ModelPaths
    # pipeline phase -> peak resident (CPU) or allocated (CUDA) bytes during that phase
    peak_memory_by_stage: dict[str, int] = field(default_factory=dict)

    def stage(self, stage: EvalStage) -> StageSummary | None:
        return {
            EvalStage.BASE: self.base,
            EvalStage.FINE_TUNED: self.fine_tuned,
            EvalStage.PATCHED: self.patched,
        }[stage]

    def to_json(self) -> dict[str, Any]:
        """The report file's JSON: the dataclasses as objects, tuples as lists."""
        data = asdict(self)
        data["fine_tuned"] |= {"trained_tokens": data.pop("trained_tokens")}
        return data
