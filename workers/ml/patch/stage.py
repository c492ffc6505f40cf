"""The patch stage of the pipeline: choose, patch, verify, and try the next candidate on a miss.

Each attempt patches a fresh copy of the fine-tuned model with one candidate, evaluates it on the
acceptance gate's suites and judges it by the acceptance rule (each number against its right
reference). The report set is read once, on the model finally kept, after every choice is made. At
most ``max_patch_attempts`` candidates are tried; when none passes, the attempt that missed the
rule by the least is reported as not accepted, with the reasons, never dressed up as a pass.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation
from contracts.prompts import load_prompts
from contracts.safety import PatchStrategy
from workers import data
from workers.ml.acceptance import Verdict, excess, judge_patch
from workers.ml.chat import ChatMessage
from workers.ml.config import AcceptanceRule, PatchConfig, PatchStageConfig, PipelineConfig
from workers.ml.device import Placement
from workers.ml.evaluate import EvalSuite, StageMetrics, evaluate, with_report
from workers.ml.events import (
    CandidatesRanked,
    EventSink,
    Notice,
    PatchAttemptStarted,
    PatchEpochEnded,
    PatchVerified,
    PipelineStage,
    StageEntered,
)
from workers.ml.judges import Judge
from workers.ml.patch.anchors import Anchor, benign_anchor, benign_conversations, task_anchor
from workers.ml.patch.example import SafetyExample, safety_example
from workers.ml.patch.screening import Screening, screen_examples
from workers.ml.patch.selection import Candidate, Selection, select_examples
from workers.ml.patch.training import (
    OnEpoch,
    PatchResult,
    apply_patch,
    example_cer,
    sft_patch,
    with_reference_targets,
)
from workers.ml.probe import GenerationProbe, sample_probe_prompts, split_by_kind
from workers.ml.report import (
    AttemptSummary,
    ExampleText,
    PatchReport,
    ProbeEpoch,
    RankedCandidate,
    SelectionReport,
    StageSummary,
)
from workers.ml.suites import user_prompts

SELECTION_RULE = (
    "shortlist by score = w_pool·cos(g,g_pool) - w_task·|cos(g,g_task)| - "
    "w_over·cos(g,g_over) - w_nll·nll_ref (workers/ml/patch/selection.py), then "
    "order by the probe after a short patch (workers/ml/patch/screening.py)"
)


@dataclass
class PatchOutcome:
    model: PreTrainedModel | None
    metrics: StageMetrics | None
    report: PatchReport


@dataclass
class _Attempt:
    model: PreTrainedModel
    result: PatchResult
    metrics: StageMetrics
    verdict: Verdict
    verify_seconds: float = 0.0

    def miss(self, base: StageMetrics, finetuned: StageMetrics, rule: AcceptanceRule) -> float:
        """How far the attempt is past the rule's limits, slacks included (0 when accepted)."""
        return excess(base, finetuned, self.metrics, rule).total

    def summary(self) -> AttemptSummary:
        return AttemptSummary(
            example_id=self.result.example.id,
            accepted=self.verdict.accepted,
            reasons=tuple(self.verdict.reasons),
            epochs=self.result.epochs,
            seconds=self.result.seconds,
            asr=self.metrics.asr,
            over_refusal=self.metrics.over_refusal,
            utility=self.metrics.utility,
            verify_seconds=self.verify_seconds,
        )


@dataclass
class PatchSetup:
    """What every attempt shares, built once per patch stage (bench/patch_sweep.py builds it too,
    so the sweep measures the product's own setup)."""

    selection: Selection
    candidates: list[Candidate]  # the proxy's top candidates, screened before any attempt
    probe: GenerationProbe
    config: PatchConfig  # its probe targets are the aligned model's own probe reading
    anchors: list[Anchor]


def prepare_patch(
    settings: PatchStageConfig,
    *,
    base_model: PreTrainedModel,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Conversation],
    strategy: PatchStrategy,
    seed: int,
    n_candidates: int,
    judge: Judge,
    placement: Placement,
    on_event: EventSink,
) -> PatchSetup:
    """Rank the pool, build the probe and the anchors (benign; task, for sft), set the probe
    targets."""
    pool = [Candidate.from_record(p) for p in load_prompts(data.SAFETY_POOL)]
    customer = sorted(user_prompts(train))
    # The patch's own benign prompts (never trained on by alignment, disjoint from evaluation),
    # halved: the anchor is fitted on one half, over-refusal is probed on the other.
    anchor_prompts, benign_probe_pool = split_by_kind(load_prompts(data.PATCH_BENIGN), seed=seed)

    on_event(Notice(f"ranking {len(pool)} safety candidates"))
    conversations: list[list[ChatMessage]] = [[m.as_dict() for m in c] for c in train]
    task = benign_conversations(base_model, tokenizer, conversations, judge, placement=placement)
    selection = select_examples(
        finetuned, tokenizer, pool,
        customer_prompts=customer,
        task_conversations=task,
        benign_prompts=anchor_prompts,
        config=settings.selection,
        reference_model=base_model,
        placement=placement,
    )  # fmt: skip
    on_event(
        CandidatesRanked(
            seconds=selection.seconds,
            excluded=len(selection.excluded),
            top=tuple(RankedCandidate(s.candidate.id, s.score) for s in selection.ranked[:5]),
        )
    )

    # The probe: pool prompts (minus the candidates that may be trained on) and the held-out half
    # of the patch's benign prompts, both disjoint from the evaluation suites, so neither
    # screening nor stopping ever peeks at the numbers the patch is judged on.
    candidates = [scored.candidate for scored in selection.ranked[:n_candidates]]
    harmful_probe, benign_probe = sample_probe_prompts(
        [c.prompt for c in pool],
        benign_probe_pool,
        exclude=[*customer, *(c.prompt for c in candidates)],
        n_harmful=settings.probe_harmful,
        n_benign=len(benign_probe_pool),
        seed=seed,
    )
    probe = GenerationProbe(tokenizer, harmful_probe, benign_probe, judge, placement=placement)
    config = with_reference_targets(
        replace(settings.training, strategy=strategy, seed=seed),
        probe(base_model),
        asr_margin=settings.probe_asr_margin,
        over_refusal_margin=settings.probe_over_refusal_margin,
    )
    anchors: list[Anchor] = []
    if strategy == PatchStrategy.SFT:  # one-shot and projection train on the example alone
        anchors.append(
            benign_anchor(
                base_model, tokenizer, anchor_prompts, weight=settings.benign_anchor_weight,
                placement=placement,
            )
        )  # fmt: skip
        if task and settings.task_anchor_weight > 0:
            anchors.append(
                task_anchor(
                    finetuned, tokenizer, task, weight=settings.task_anchor_weight,
                    placement=placement,
                )
            )  # fmt: skip
    return PatchSetup(selection, candidates, probe, config, anchors)


def patch_until_accepted(
    *,
    base_model: PreTrainedModel,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Conversation],
    eval_suite: EvalSuite,
    base_metrics: StageMetrics,
    finetuned_metrics: StageMetrics,
    config: PipelineConfig,
    judge: Judge,
    placement: Placement,
    on_event: EventSink,
) -> PatchOutcome:
    started = time.perf_counter()
    settings = config.patch
    setup = prepare_patch(
        settings,
        base_model=base_model, finetuned=finetuned, tokenizer=tokenizer, train=train,
        strategy=config.strategy, seed=config.seed,
        n_candidates=max(settings.screen_candidates, config.max_patch_attempts),
        judge=judge, placement=placement, on_event=on_event,
    )  # fmt: skip
    examples = [
        safety_example(
            candidate, base_model=base_model, tokenizer=tokenizer, judge=judge, placement=placement
        )
        for candidate in setup.candidates
    ]
    screening = screen_examples(
        finetuned, tokenizer, examples, setup.config,
        epochs=settings.screen_epochs, probe=setup.probe, anchors=setup.anchors,
        placement=placement, on_event=on_event,
    )  # fmt: skip
    shortlist = [screen.example for screen in screening.screens[: config.max_patch_attempts]]

    attempts: list[_Attempt] = []
    for number, example in enumerate(shortlist, start=1):
        on_event(
            PatchAttemptStarted(number, example.id, ExampleText(example.prompt, example.reply))
        )

        def on_epoch(reading: ProbeEpoch, attempt: int = number) -> None:
            on_event(PatchEpochEnded(attempt, reading))

        patched, result = _attempt(
            number, example, screening, finetuned, tokenizer, setup, placement, on_epoch
        )
        on_event(
            StageEntered(
                PipelineStage.VERIFYING, f"verifying attempt {number} on the full suites", number
            )
        )
        verify_started = time.perf_counter()
        metrics = evaluate(patched, tokenizer, eval_suite.gate_only(), judge, placement=placement)
        verify_seconds = time.perf_counter() - verify_started
        verdict = judge_patch(base_metrics, finetuned_metrics, metrics, config.rule)
        on_event(
            PatchVerified(
                attempt=number,
                metrics=StageSummary.from_dict(metrics.summary()),
                accepted=verdict.accepted,
                reasons=tuple(verdict.reasons),
            )
        )
        attempts.append(_Attempt(patched, result, metrics, verdict, verify_seconds))
        choice_seconds = time.perf_counter() - started - verify_seconds
        if verdict.accepted:
            break

    best = best_attempt(attempts, base_metrics, finetuned_metrics, config.rule)
    if eval_suite.report_harmful or eval_suite.report_benign:
        # Only now, with the choice made on the gate, is the kept model read on the report set.
        on_event(StageEntered(PipelineStage.VERIFYING, "measuring the patch on the report set"))
        report_metrics = evaluate(best.model, tokenizer, eval_suite.report_only(), judge,
                                  placement=placement)  # fmt: skip
        best.metrics = with_report(best.metrics, report_metrics)
    on_report = _on_report_set(base_metrics, finetuned_metrics, best.metrics, config.rule)
    result = best.result
    report = PatchReport(
        strategy=result.strategy,
        example=ExampleText(result.example.prompt, result.example.reply),
        example_id=result.example.id,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        seconds=result.seconds,
        cer=result.cer,
        probe_history=tuple(result.probe_history),
        stopped_early=result.stopped_early,
        accepted=best.verdict.accepted,
        reasons=tuple(best.verdict.reasons),
        selection=SelectionReport(
            rule=SELECTION_RULE,
            seconds=setup.selection.seconds,
            excluded_customer_prompts=tuple(setup.selection.excluded),
            chosen=_ranked(setup.selection, result.example.id),
            screening=tuple(screen.reading for screen in screening.screens),
        ),
        attempts=tuple(attempt.summary() for attempt in attempts),
        total_seconds=time.perf_counter() - started,
        choice_seconds=choice_seconds,
        report_accepted=on_report.accepted if on_report else None,
        report_reasons=on_report.reasons if on_report else (),
    )
    return PatchOutcome(model=best.model, metrics=best.metrics, report=report)


def _attempt(
    number: int,
    example: SafetyExample,
    screening: Screening,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    setup: PatchSetup,
    placement: Placement,
    on_epoch: OnEpoch,
) -> tuple[PreTrainedModel, PatchResult]:
    """Patch with ``example``: the first attempt goes on from its screened run, later ones (and
    the projection strategy) start from a fresh copy of the fine-tuned model."""
    winner = screening.winner
    if number > 1 or winner is None or winner.example.id != example.id:
        return apply_patch(
            copy.deepcopy(finetuned), tokenizer, example, setup.config,
            probe=setup.probe, anchors=setup.anchors, placement=placement, on_epoch=on_epoch,
        )  # fmt: skip
    screening.winner = None  # the attempt owns the run now
    patched, result = sft_patch(
        winner.model, tokenizer, example, setup.config,
        probe=setup.probe, placement=placement, on_epoch=on_epoch,
        resume=winner, resume_reading=screening.screens[0].probe_epoch,
    )  # fmt: skip
    if setup.config.cer_k:  # at the fine-tuned weights, as a fresh attempt reports it
        result.cer = example_cer(finetuned, tokenizer, example, setup.config.cer_k, placement)
    return patched, result


def best_attempt(
    attempts: Sequence[_Attempt],
    base: StageMetrics,
    finetuned: StageMetrics,
    rule: AcceptanceRule,
) -> _Attempt:
    """The attempt to report and keep: the one past the rule's limits by the least, the earliest
    of equal ones. An accepted attempt is past none (0) and a rejected one past at least one, by
    more than the rule's tolerance, so an accepted attempt is always the one chosen."""
    return min(attempts, key=lambda attempt: attempt.miss(base, finetuned, rule))


def _on_report_set(
    base: StageMetrics, finetuned: StageMetrics, patched: StageMetrics, rule: AcceptanceRule
) -> Verdict | None:
    """The acceptance rule read on the report set (None where a model lacks it)."""
    sets = (base.on_report_set(), finetuned.on_report_set(), patched.on_report_set())
    if sets[0] is None or sets[1] is None or sets[2] is None:
        return None
    return judge_patch(sets[0], sets[1], sets[2], rule)


def _ranked(selection: Selection, example_id: str) -> RankedCandidate:
    """The chosen example's place in the proxy's ranking: its score and the score's terms."""
    [scored] = [s for s in selection.ranked if s.candidate.id == example_id]
    return RankedCandidate(scored.candidate.id, scored.score, dict(scored.components))
