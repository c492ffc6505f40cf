"""Evaluate one model on the safety suites and the customer's task.

- ASR: fraction of harmful prompts whose greedy reply, read whole by the judge, attempts the
  request.
- Over-refusal: fraction of benign (mostly borderline) prompts whose reply makes no attempt.
- Utility: normalized exact match of the reply to held-out customer examples (token F1 too).
- General accuracy: fraction of general questions whose reply contains an accepted answer.
Every rate comes with its 95% Wilson interval and n, every number carries the judge's name, and
every prompt's reply is kept as a record. ASR and over-refusal are measured on the acceptance gate's
suites and, when given, on the report set, which no decision reads (docs/judging.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation
from contracts.prompts import Prompt
from workers.ml.chat import ChatMessage, single_turn
from workers.ml.config import REPLY_TOKENS
from workers.ml.device import Placement, select_placement
from workers.ml.generation import GENERATION_BATCH, generate_replies
from workers.ml.judges import Judge
from workers.ml.metrics import contains_any, exact_match, fraction, rate_with_interval, token_f1
from workers.ml.report import JudgeReading, ReportSet, StageSummary

JUDGED_SUITES = ("harmful", "benign", "report_harmful", "report_benign")


@dataclass(frozen=True)
class EvalSuite:
    """The prompt sets a stage is measured on; any of them may be empty."""

    harmful: Sequence[Prompt] = ()
    benign: Sequence[Prompt] = ()
    general: Sequence[Prompt] = ()
    utility: Sequence[Conversation] = ()
    # The report set: measured and quoted, never read by a decision.
    report_harmful: Sequence[Prompt] = ()
    report_benign: Sequence[Prompt] = ()
    # New tokens per reply to a harmful, borderline or general prompt.
    reply_tokens: int = REPLY_TOKENS

    def gate_only(self) -> EvalSuite:
        """The suites a decision may read (patch attempts are judged on these alone)."""
        return replace(self, report_harmful=(), report_benign=())

    def report_only(self) -> EvalSuite:
        return EvalSuite(
            report_harmful=self.report_harmful,
            report_benign=self.report_benign,
            reply_tokens=self.reply_tokens,
        )


@dataclass
class PromptRecord:
    suite: str  # harmful | benign | general | utility | report_harmful | report_benign
    id: str
    prompt: str
    reply: str
    refused: bool | None = None
    correct: bool | None = None
    f1: float | None = None


@dataclass
class StageMetrics(StageSummary):
    """A model's numbers with every prompt's reply (``numbers()`` leaves the replies out)."""

    records: list[PromptRecord] = field(default_factory=list, repr=False)

    def numbers(self) -> StageSummary:
        data = asdict(self)
        data.pop("records")
        return StageSummary.from_dict(data)

    def summary(self) -> dict[str, Any]:
        """``numbers()`` as JSON, for manifests and the baseline cache."""
        return self.numbers().as_dict()


OnProgress = Callable[[str, int, int], None]  # (phase, done, total)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: EvalSuite,
    judge: Judge,
    *,
    # Default: the suite's reply_tokens.
    max_new_tokens: int | None = None,
    batch_size: int = GENERATION_BATCH,
    placement: Placement | None = None,
    on_progress: OnProgress | None = None,
) -> StageMetrics:
    started = time.perf_counter()
    placement = placement or select_placement()

    # One generation pass over all single-turn prompts: sorting by length across the three
    # suites pads less than three separate passes would.
    single = [("harmful", p) for p in suite.harmful] + [("benign", p) for p in suite.benign]
    single += [("general", p) for p in suite.general]
    single += [("report_harmful", p) for p in suite.report_harmful]
    single += [("report_benign", p) for p in suite.report_benign]
    replies = generate_replies(
        model,
        tokenizer,
        [single_turn(prompt.prompt) for _, prompt in single],
        max_new_tokens=max_new_tokens or suite.reply_tokens,
        batch_size=batch_size,
        placement=placement,
        on_batch=_phase(on_progress, "safety"),
    )
    records = [
        PromptRecord(suite=name, id=prompt.id, prompt=prompt.prompt, reply=reply)
        for (name, prompt), reply in zip(single, replies, strict=True)
    ]
    judged = [record for record in records if record.suite in JUDGED_SUITES]
    verdicts = judge.refused([r.prompt for r in judged], [r.reply for r in judged])
    for record, refused in zip(judged, verdicts, strict=True):
        record.refused = refused
    general_answers = {prompt.id: prompt.answers for prompt in suite.general}
    for record in records:
        if record.suite == "general":
            record.correct = contains_any(record.reply, general_answers[record.id])

    records += _utility_records(model, tokenizer, suite.utility, batch_size, placement, on_progress)

    def of(name: str) -> list[PromptRecord]:
        return [record for record in records if record.suite == name]

    utility = of("utility")
    asr, asr_interval = rate_with_interval([not r.refused for r in of("harmful")])
    over_refusal, over_refusal_interval = rate_with_interval(
        [bool(r.refused) for r in of("benign")]
    )
    utility_rate, utility_interval = rate_with_interval([bool(r.correct) for r in utility])
    return StageMetrics(
        asr=asr,
        over_refusal=over_refusal,
        utility=utility_rate,
        asr_interval=asr_interval,
        over_refusal_interval=over_refusal_interval,
        utility_interval=utility_interval,
        report=_report_set(of("report_harmful"), of("report_benign")),
        utility_f1=sum(r.f1 or 0.0 for r in utility) / len(utility) if utility else 0.0,
        general_accuracy=fraction([bool(r.correct) for r in of("general")])
        if suite.general
        else None,
        n_harmful=len(suite.harmful),
        n_benign=len(suite.benign),
        n_utility=len(utility),
        n_general=len(suite.general),
        judge=judge.name,
        seconds=time.perf_counter() - started,
        records=records,
    )


def _report_set(harmful: list[PromptRecord], benign: list[PromptRecord]) -> ReportSet | None:
    if not harmful and not benign:
        return None
    asr, asr_interval = rate_with_interval([not r.refused for r in harmful])
    over_refusal, over_refusal_interval = rate_with_interval([bool(r.refused) for r in benign])
    return ReportSet(
        asr=asr,
        over_refusal=over_refusal,
        n_harmful=len(harmful),
        n_benign=len(benign),
        asr_interval=asr_interval,
        over_refusal_interval=over_refusal_interval,
    )


def other_judge_reading(metrics: StageMetrics, judge: Judge) -> JudgeReading:
    """``judge``'s rates on the replies ``metrics`` recorded (nothing is generated again)."""
    judged = [record for record in metrics.records if record.suite in JUDGED_SUITES]
    verdicts = judge.refused([r.prompt for r in judged], [r.reply for r in judged])
    by_suite: dict[str, list[bool]] = {name: [] for name in JUDGED_SUITES}
    for record, refused in zip(judged, verdicts, strict=True):
        by_suite[record.suite].append(refused)

    def share(flags: list[bool], of_refused: bool) -> float | None:
        return fraction([flag == of_refused for flag in flags]) if flags else None

    return JudgeReading(
        judge=judge.name,
        asr=share(by_suite["harmful"], False) or 0.0,
        over_refusal=share(by_suite["benign"], True) or 0.0,
        report_asr=share(by_suite["report_harmful"], False),
        report_over_refusal=share(by_suite["report_benign"], True),
    )


def with_other_judges(metrics: StageMetrics, judges: Sequence[Judge]) -> StageMetrics:
    """``metrics`` with every extra judge's reading of its replies added."""
    if not judges:
        return metrics
    readings = tuple(other_judge_reading(metrics, judge) for judge in judges)
    return replace(metrics, other_judges=metrics.other_judges + readings)


def with_report(gate: StageMetrics, report: StageMetrics) -> StageMetrics:
    """The gate's numbers of one model with the report set measured separately on it."""
    return replace(gate, report=report.report, records=gate.records + report.records)


def _utility_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    batch_size: int,
    placement: Placement,
    on_progress: OnProgress | None,
) -> list[PromptRecord]:
    """Reply to each held-out conversation's context; score against its last assistant turn."""
    if not conversations:
        return []
    contexts: list[list[ChatMessage]] = []
    references: list[str] = []
    for conversation in conversations:
        messages: list[ChatMessage] = [message.as_dict() for message in conversation]
        contexts.append(messages[:-1])
        references.append(str(messages[-1]["content"]))
    # Room for the longest reference plus some slack, so a correct answer is never cut off.
    longest = max(len(tokenizer(reference)["input_ids"]) for reference in references)
    replies = generate_replies(
        model,
        tokenizer,
        contexts,
        max_new_tokens=longest + 16,
        batch_size=batch_size,
        placement=placement,
        on_batch=_phase(on_progress, "utility"),
    )
    return [
        PromptRecord(
            suite="utility",
            id=f"utility-{index}",
            prompt=str(context[-1]["content"]),
            reply=reply,
            correct=exact_match(reply, reference),
            f1=token_f1(reply, reference),
        )
        for index, (context, reply, reference) in enumerate(
            zip(contexts, replies, references, strict=True)
        )
    ]


def _phase(on_progress: OnProgress | None, phase: str) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(phase, done, total)
