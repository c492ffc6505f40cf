"""A small, cheap safety probe run between patch epochs: is safety back, and at what cost?

The probe is a handful of harmful and benign prompts (disjoint from the evaluation suites), greedy
replies of a few tokens, and the refusal judge. It exists because safety and over-refusal move
together epoch by epoch under a one-example patch (docs/method.md), so *when to stop* has to be
measured, not fixed in advance.

Replies are short (24 tokens by default): the keyword judge only reads a reply's opening, and that
is where a refusal shows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.prompts import Prompt
from contracts.text import normalize_prompt
from workers.ml.device import Placement, select_placement
from workers.ml.generation import GENERATION_BATCH, generate_for_prompts
from workers.ml.judges import Judge
from workers.ml.metrics import fraction


@dataclass(frozen=True)
class ProbeResult:
    asr: float  # fraction of probe harmful prompts not refused
    over_refusal: float  # fraction of probe benign prompts refused
    seconds: float = 0.0
    n_harmful: int = 0
    n_benign: int = 0

    def violation(self, asr_target: float, over_refusal_limit: float) -> float:
        """How far the reading misses the targets: ASR over its target plus over-refusal over
        its limit (0 when both are met)."""
        return max(0.0, self.asr - asr_target) + max(0.0, self.over_refusal - over_refusal_limit)


# Anything that measures a model: the generation probe below, or a scripted fake in tests.
Probe = Callable[[PreTrainedModel], ProbeResult]


class GenerationProbe:
    """Greedy short replies to the probe prompts, judged for refusal."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        harmful: Sequence[str],
        benign: Sequence[str],
        judge: Judge,
        *,
        max_new_tokens: int = 24,
        batch_size: int = GENERATION_BATCH,
        placement: Placement | None = None,
    ) -> None:
        if not harmful or not benign:
            raise ValueError("a probe needs at least one harmful and one benign prompt")
        self.tokenizer = tokenizer
        self.harmful = list(harmful)
        self.benign = list(benign)
        self.judge = judge
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.placement = placement or select_placement()

    def __call__(self, model: PreTrainedModel) -> ProbeResult:
        started = time.perf_counter()
        prompts = self.harmful + self.benign
        replies = generate_for_prompts(
            model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            placement=self.placement,
        )
        refused = self.judge.refused(prompts, replies)
        n_harmful = len(self.harmful)
        return ProbeResult(
            asr=fraction([not flag for flag in refused[:n_harmful]]),
            over_refusal=fraction(refused[n_harmful:]),
            seconds=time.perf_counter() - started,
            n_harmful=n_harmful,
            n_benign=len(self.benign),
        )


def sample_probe_prompts(
    harmful_pool: Sequence[str],
    benign_pool: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    n_harmful: int = 16,
    n_benign: int = 16,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """A seeded sample of probe prompts, minus ``exclude`` (compared as normalized text: the
    customer's prompts, the candidates being tried).

    The caller keeps these pools disjoint from the evaluation suites (the safety candidate pool and
    the patch's benign prompts are both disjoint from them by construction).
    """
    excluded = {normalize_prompt(prompt) for prompt in exclude}
    rng = random.Random(seed)
    harmful = [prompt for prompt in harmful_pool if normalize_prompt(prompt) not in excluded]
    benign = [prompt for prompt in benign_pool if normalize_prompt(prompt) not in excluded]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    return harmful[:n_harmful], benign[:n_benign]


def split_by_kind(prompts: Sequence[Prompt], *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint halves of ``prompts`` with the same mix of kinds (seeded).

    The patch trains its benign anchor on one half and probes over-refusal on the other: a probe
    on prompts the anchor was fitted to reads low, as one on the aligned model's own training
    prompts did (docs/results.md).
    """
    by_kind: dict[str, list[str]] = {}
    for prompt in prompts:
        by_kind.setdefault(prompt.kind or "", []).append(prompt.prompt)
    rng = random.Random(seed)
    first: list[str] = []
    second: list[str] = []
    for kind in sorted(by_kind):
        group = by_kind[kind]
        rng.shuffle(group)
        # Alternate which half gets a kind's odd prompt, so the halves stay the same size.
        take = (len(group) + (len(first) <= len(second))) // 2
        first.extend(group[:take])
        second.extend(group[take:])
    return first, second
