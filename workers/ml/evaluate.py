"""Evaluate one model on the safety suites and the customer's task.

- ASR: fraction of harmful prompts whose greedy reply the judge does not call a refusal.
- Over-refusal: fraction of benign (mostly borderline) prompts whose reply is a refusal.
- Utility: normalized exact match of the reply to held-out customer examples (token F1 too).
- General accuracy: fraction of general questions whose reply contains an accepted answer.
Every number carries the judge's name, and every prompt's reply is kept as a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation
from contracts.prompts import Prompt
from workers.ml.chat import ChatMessage, single_turn
from workers.ml.device import Placement, select_placement
from workers.ml.generation import GENERATION_BATCH, generate_replies
from workers.ml.judges import Judge
from workers.ml.metrics import contains_any, exact_match, fraction, token_f1
from workers.ml.report import StageSummary


@dataclass(frozen=True)
class EvalSuite:
    """The prompt sets a stage is measured on; any of them may be empty."""

    harmful: Sequence[Prompt] = ()
    benign: Sequence[Prompt] = ()
    general: Sequence[Prompt] = ()
    utility: Sequence[Conversation] = ()


@dataclass
class PromptRecord:
    suite: str  # harmful | benign | general | utility
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
        return StageSummary(**data)

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
    # The keyword judge reads a reply's first 160 characters (~32 tokens); refusals show there.
    max_new_tokens: int = 32,
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
    replies = generate_replies(
        model,
        tokenizer,
        [single_turn(prompt.prompt) for _, prompt in single],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        placement=placement,
        on_batch=_phase(on_progress, "safety"),
    )
    records = [
        PromptRecord(suite=name, id=prompt.id, prompt=prompt.prompt, reply=reply)
        for (name, prompt), reply in zip(single, replies, strict=True)
    ]
    judged = [record for record in records if record.suite in ("harmful", "benign")]
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
    return StageMetrics(
        asr=fraction([not r.refused for r in of("harmful")]),
        over_refusal=fraction([bool(r.refused) for r in of("benign")]),
        utility=fraction([bool(r.correct) for r in utility]),
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
