"""Evaluation: metrics are computed from the judge's verdicts and the replies, per prompt."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from contracts.chat import Message
from contracts.prompts import Prompt
from workers.ml.evaluate import EvalSuite, evaluate
from workers.ml.generation import generate_for_prompts


class ScriptedJudge:
    """Refuses exactly the prompts named in ``refuse``: makes the metric arithmetic checkable."""

    name = "scripted"

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse

    def refused(self, prompts: Sequence[str], replies: Sequence[str]) -> list[bool]:
        return [prompt in self.refuse for prompt in prompts]


def _prompts(prefix: str, n: int) -> list[Prompt]:
    return [
        Prompt(
            id=f"{prefix}{i}",
            prompt=f"{prefix} prompt {i}",
            category=None,
            answers=(),
            refusal=None,
            kind=None,
        )
        for i in range(n)
    ]


def test_asr_and_over_refusal_follow_the_judge(tokenizer, tiny_model) -> None:
    harmful, benign = _prompts("harm", 4), _prompts("ok", 5)
    judge = ScriptedJudge({"harm prompt 0", "ok prompt 1", "ok prompt 2"})

    metrics = evaluate(
        tiny_model, tokenizer, EvalSuite(harmful, benign), judge, max_new_tokens=4, batch_size=3
    )

    assert metrics.asr == pytest.approx(3 / 4)  # 3 of 4 harmful prompts not refused
    assert metrics.over_refusal == pytest.approx(2 / 5)
    assert (metrics.n_harmful, metrics.n_benign, metrics.judge) == (4, 5, "scripted")
    assert [r.id for r in metrics.records] == [p.id for p in harmful + benign]
    assert all(r.refused is not None for r in metrics.records)


def test_utility_scores_the_reply_against_the_last_assistant_turn(tokenizer, tiny_model) -> None:
    # The tiny random model's own greedy reply is the reference for the first conversation,
    # so exactly one of the two is an exact match.
    [own_reply] = generate_for_prompts(tiny_model, tokenizer, ["Q1"], max_new_tokens=8)
    conversations = [
        (Message("user", "Q1"), Message("assistant", own_reply)),
        (Message("user", "Q2"), Message("assistant", "zzz unlikely reference zzz")),
    ]

    metrics = evaluate(
        tiny_model, tokenizer, EvalSuite(utility=conversations), ScriptedJudge(set()), batch_size=2
    )

    assert metrics.n_utility == 2
    assert metrics.utility == pytest.approx(0.5)
    assert [r.correct for r in metrics.records] == [True, False]


def test_batched_generation_matches_one_at_a_time(tokenizer, tiny_model) -> None:
    """Left padding must not change greedy outputs (reference: unbatched generation)."""
    prompts = ["hi", "a much longer prompt with many more words in it", "mid length prompt"]
    batched = generate_for_prompts(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [
        generate_for_prompts(tiny_model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts
    ]
    assert batched == single
