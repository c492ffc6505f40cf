"""What the pipeline reports: typed, torch-free, and written as JSON by ``to_json``.

The job runner, the CLI, the benches and the tests read these fields; a renamed field is a type
error, not a key that silently goes missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from contracts.stages import EvalStage


@dataclass
class StageSummary:
    """One model's numbers on the suites and the customer's task (no per-prompt records)."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSummary:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


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
