"""The patch stage of the pipeline: choose, patch, verify, and try the next candidate on a miss.

Each attempt patches a fresh copy of the fine-tuned model with one candidate, evaluates it on the
full suites and judges it by the acceptance rule (each number against its right reference). At
most ``max_patch_attempts`` candidates are tried; when none passes, the attempt that missed the
rule by the least is reported with ``accepted: false`` and the reasons, never dressed up as a pass.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation
from contracts.prompts import load_prompts
from workers import data
from workers.ml.acceptance import Verdict, judge_patch
from workers.ml.anchors import Anchor, benign_anchor, benign_conversations, task_anchor
from workers.ml.chat import ChatMessage
from workers.ml.device import Placement
from workers.ml.evaluate import EvalSuite, StageMetrics, evaluate
from workers.ml.events import EventSink, PipelineEvent
from workers.ml.judges import Judge
from workers.ml.patch import (
    PatchConfig,
    PatchResult,
    ProbeRecord,
    SafetyExample,
    aligned_refusal,
    apply_patch,
    first_sentence,
    judged_reply,
    with_reference_targets,
)
from workers.ml.probe import GenerationProbe, sample_probe_prompts, split_by_kind
from workers.ml.screening import SCREEN_CANDIDATES, screen_examples
from workers.ml.selection import Candidate, Selection, select_examples
from workers.ml.suites import user_prompts

if TYPE_CHECKING:
    from workers.ml.config import PipelineConfig

# Weights of the anchors next to the one example's loss (anchors.py): KL(θ0 ‖ θ) on held-out
# benign prompts against over-refusal, KL(θ* ‖ θ) on the customer's benign task conversations
# against utility loss. Measured with bench/patch_sweep.py on SmolLM2-135M aligned with 4 epochs
# (base ASR 0.023, over-refusal 0.080; attacked 1.000 / 0.000, utility 1.000), candidate
# p-fra-005, full suites after the kept epoch (docs/results.md §3):
#   benign 0.5:           ASR 0.068, over-refusal 0.230, utility 0.960 (kept epoch 4)
#   benign 1.0:           ASR 0.045, over-refusal 0.120, utility 0.920 (kept epoch 10)
#   benign 1.0, task 1.0: ASR 0.045, over-refusal 0.130, utility 0.960 (kept epoch 10)
# The last is within one or two prompts of every limit, and misses ASR (0.043) and utility (0.97).
# On the model the epoch-selecting `models align` keeps (base 0.028 / 0.090; attacked utility
# 0.960) the same defaults are accepted: ASR 0.028, over-refusal 0.120, utility 0.960 (§4).
BENIGN_ANCHOR_WEIGHT = 1.0
TASK_ANCHOR_WEIGHT = 1.0
# The paper's 2e-5 is for 7B models; on SmolLM2-135M it moved probe ASR only from 1.00 to 0.81 in
# 10 epochs. At 1e-4 the example's loss is ~0 by epoch 5 and ASR keeps falling to epoch 10.
SFT_PATCH_LR = 1e-4
# Weight of the DPO term that prefers the refusal over θ*'s own compliance (preference.py). Off:
# on SmolLM2 aligned with 3 epochs it did not help (candidate p-fra-004, benign anchor 0.5, probe
# ASR after 4 epochs 0.60 with weight 1.0 at beta 0.1 and 0.58 at beta 0.5; 0.46 without it, in
# the pipeline's own run, whose probe differs by two prompts).
PREFERENCE_WEIGHT = 0.0
# Pool prompts in the probe: 16 was too noisy (the aligned model scored 0.19 on it, 0.12 on the
# suite).
PROBE_HARMFUL = 48


@dataclass
class PatchOutcome:
    model: PreTrainedModel | None
    metrics: StageMetrics | None
    report: dict[str, Any]


@dataclass
class _Attempt:
    model: PreTrainedModel
    result: PatchResult
    metrics: StageMetrics
    verdict: Verdict

    def miss(self, base: StageMetrics, finetuned: StageMetrics) -> float:
        """How far the attempt is from the rule (0 when accepted), for choosing the best miss."""
        return (
            max(0.0, self.metrics.asr - base.asr)
            + max(0.0, self.metrics.over_refusal - base.over_refusal)
            + max(0.0, finetuned.utility - self.metrics.utility)
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
    *,
    base_model: PreTrainedModel,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Conversation],
    strategy: str,
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

    on_event(PipelineEvent("patch", f"ranking {len(pool)} safety candidates"))
    conversations: list[list[ChatMessage]] = [[m.as_dict() for m in c] for c in train]
    task = benign_conversations(base_model, tokenizer, conversations, judge, placement=placement)
    selection = select_examples(
        finetuned, tokenizer, pool,
        customer_prompts=customer,
        task_conversations=task,
        benign_prompts=anchor_prompts,
        reference_model=base_model,
        placement=placement,
    )  # fmt: skip
    on_event(PipelineEvent("patch", "candidates ranked", {
        "seconds": selection.seconds, "excluded": selection.excluded,
        "top": [{"id": s.candidate.id, "score": s.score} for s in selection.ranked[:5]],
    }))  # fmt: skip

    # The probe: pool prompts (minus the candidates that may be trained on) and the held-out half
    # of the patch's benign prompts, both disjoint from the evaluation suites, so neither
    # screening nor stopping ever peeks at the numbers the patch is judged on.
    candidates = [scored.candidate for scored in selection.ranked[:n_candidates]]
    harmful_probe, benign_probe = sample_probe_prompts(
        [c.prompt for c in pool],
        benign_probe_pool,
        exclude=[*customer, *(c.prompt for c in candidates)],
        n_harmful=PROBE_HARMFUL,
        n_benign=len(benign_probe_pool),
        seed=seed,
    )
    probe = GenerationProbe(tokenizer, harmful_probe, benign_probe, judge, placement=placement)
    config = with_reference_targets(
        PatchConfig(
            strategy=strategy,
            seed=seed,
            learning_rate=SFT_PATCH_LR,
            preference_weight=PREFERENCE_WEIGHT,
        ),
        probe(base_model),
    )
    anchors: list[Anchor] = []
    if strategy == "sft":
        anchors.append(
            benign_anchor(
                base_model, tokenizer, anchor_prompts, weight=BENIGN_ANCHOR_WEIGHT,
                placement=placement,
            )
        )  # fmt: skip
        if task and TASK_ANCHOR_WEIGHT > 0:
            anchors.append(
                task_anchor(
                    finetuned, tokenizer, task, weight=TASK_ANCHOR_WEIGHT, placement=placement
                )
            )
    return PatchSetup(selection, candidates, probe, config, anchors)


def safety_example(
    candidate: Candidate,
    *,
    base_model: PreTrainedModel,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    judge: Judge,
    placement: Placement,
    with_rejected: bool = False,
) -> SafetyExample:
    """The candidate's prompt with the opening of the aligned model's own refusal ("I'm sorry,
    but I can't help with that.").

    θ0's wording moves the patched model back toward θ0's distribution, and its general first
    sentence beats a category-specific tail. Measured on the probe (lr 1e-4, anchor 1): a reply
    ending "...should come from a licensed professional." stalled at probe ASR 0.25 after 10
    epochs; general replies reached 0.00-0.06 by epoch 3. ``with_rejected`` adds θ*'s own
    compliant reply for the preference term.
    """
    reply = first_sentence(
        aligned_refusal(base_model, tokenizer, candidate.prompt, judge, placement=placement)
        or candidate.refusal
    )
    rejected = ""
    if with_rejected:
        # θ*'s own reply, when it complies, is the rejected side of the preference term.
        compliance, refused = judged_reply(
            finetuned, tokenizer, candidate.prompt, judge, placement=placement
        )
        rejected = "" if refused else compliance
    return SafetyExample(
        prompt=candidate.prompt,
        reply=reply,
        id=candidate.id,
        category=candidate.category,
        rejected=rejected,
    )


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
    setup = prepare_patch(
        base_model=base_model, finetuned=finetuned, tokenizer=tokenizer, train=train,
        strategy=config.strategy, seed=config.seed,
        n_candidates=max(SCREEN_CANDIDATES, config.max_patch_attempts),
        judge=judge, placement=placement, on_event=on_event,
    )  # fmt: skip
    selection, patch_config, probe, anchors = (
        setup.selection, setup.config, setup.probe, setup.anchors
    )  # fmt: skip
    examples = [
        safety_example(
            candidate,
            base_model=base_model,
            finetuned=finetuned,
            tokenizer=tokenizer,
            judge=judge,
            placement=placement,
            with_rejected=patch_config.preference_weight > 0,
        )
        for candidate in setup.candidates
    ]
    screening = screen_examples(
        finetuned, tokenizer, examples, patch_config,
        probe=probe, anchors=anchors, placement=placement, on_event=on_event,
    )  # fmt: skip
    shortlist = [screen.example for screen in screening[: config.max_patch_attempts]]

    attempts: list[_Attempt] = []
    for number, example in enumerate(shortlist, start=1):
        on_event(PipelineEvent("patch", f"attempt {number}: {example.id} {example.prompt!r}", {
            "attempt": number, "example": {"prompt": example.prompt, "reply": example.reply},
        }))  # fmt: skip

        def on_epoch(record: ProbeRecord, attempt: int = number) -> None:
            on_event(
                PipelineEvent(
                    "epoch",
                    f"patch epoch {record.epoch}: probe ASR "
                    f"{record.asr:.2f}, over-refusal {record.over_refusal:.2f}",
                    {"attempt": attempt} | record.__dict__,
                )
            )

        patched, result = apply_patch(
            copy.deepcopy(finetuned), tokenizer, example, patch_config,
            probe=probe, anchors=anchors, placement=placement, on_epoch=on_epoch,
        )  # fmt: skip
        on_event(PipelineEvent("stage", f"verifying attempt {number} on the full suites", {
            "stage": "verifying", "attempt": number,
        }))  # fmt: skip
        metrics = evaluate(patched, tokenizer, eval_suite, judge, placement=placement)
        verdict = judge_patch(base_metrics, finetuned_metrics, metrics, config.rule)
        result.accepted = verdict.accepted
        on_event(PipelineEvent("metrics", f"patched metrics (attempt {number})", {
            "stage": "patched", "attempt": number, "accepted": verdict.accepted,
            "reasons": list(verdict.reasons),
        } | metrics.summary()))  # fmt: skip
        attempts.append(_Attempt(patched, result, metrics, verdict))
        if verdict.accepted:
            break

    best = min(attempts, key=lambda a: a.miss(base_metrics, finetuned_metrics))
    report = best.result.to_report() | {
        "accepted": best.verdict.accepted,
        "reasons": list(best.verdict.reasons),
        "selection": {
            "rule": "shortlist by score = w_pool·cos(g,g_pool) - w_task·|cos(g,g_task)| - "
                    "w_over·cos(g,g_over) - w_nll·nll_ref (workers/ml/selection.py), then "
                    "order by the probe after a short patch (workers/ml/screening.py)",
            "seconds": selection.seconds,
            "excluded_customer_prompts": selection.excluded,
            "chosen": {"id": best.result.example.id} | _components(selection, best.result),
            "screening": [screen.to_report() for screen in screening],
        },
        "attempts": [
            {"example_id": a.result.example.id, "accepted": a.verdict.accepted,
             "reasons": list(a.verdict.reasons), "epochs": a.result.epochs,
             "seconds": a.result.seconds, "asr": a.metrics.asr,
             "over_refusal": a.metrics.over_refusal, "utility": a.metrics.utility}
            for a in attempts
        ],
        "total_seconds": time.perf_counter() - started,
    }  # fmt: skip
    return PatchOutcome(model=best.model, metrics=best.metrics, report=report)


def _components(selection: Any, result: PatchResult) -> dict[str, Any]:
    for scored in selection.ranked:
        if scored.candidate.id == result.example.id:
            return {"score": scored.score, "components": scored.components}
    return {}
