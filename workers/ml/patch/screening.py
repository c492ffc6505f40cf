"""Screening: order the shortlisted safety examples by what a short patch with each one does.

The published method picks its one example by a bi-level objective: the example whose patch
leaves the model safest (upper level) after training on it (lower level). The gradient proxy in
selection.py estimates that without training; screening measures it with the lower level cut
short: each of the proxy's top candidates patches a copy of the fine-tuned model for a few epochs,
the probe (pool prompts and held-out benign prompts, disjoint from the evaluation suites) reads
ASR and over-refusal once, and the candidates are tried in the order of that reading. On a small
model the proxy's top candidates patch very differently, and the proxy's order does not predict
which one patches well (docs/results.md). The first attempt goes on from the winner's screened run
rather than starting over.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.safety import PatchStrategy
from workers.ml.config import PatchConfig
from workers.ml.device import Placement, seeded
from workers.ml.events import CandidateScreened, EventSink
from workers.ml.patch.anchors import Anchor
from workers.ml.patch.example import SafetyExample
from workers.ml.patch.training import SftRun, apply_patch, probe_violation
from workers.ml.probe import Probe, ProbeResult
from workers.ml.report import ProbeEpoch, ScreenReading


@dataclass(frozen=True)
class Screen:
    example: SafetyExample
    probe: ProbeResult
    violation: float  # how far the short patch misses the probe targets (0: meets them)
    epochs: int
    loss: float  # the example's loss at the last screening step (nan for projection)

    @property
    def reading(self) -> ScreenReading:
        return ScreenReading(
            example_id=self.example.id,
            probe_asr=self.probe.asr,
            probe_over_refusal=self.probe.over_refusal,
            violation=self.violation,
        )

    @property
    def probe_epoch(self) -> ProbeEpoch:
        return ProbeEpoch(self.epochs, self.probe.asr, self.probe.over_refusal, self.loss)


@dataclass
class Screening:
    screens: list[Screen]  # best first
    # The best screen's sft run, to go on with instead of training its first epochs again
    # (None for the projection strategy, whose steps keep no state).
    winner: SftRun | None


def screen_examples(
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SafetyExample],
    config: PatchConfig,
    *,
    epochs: int,
    probe: Probe,
    anchors: Sequence[Anchor] = (),
    placement: Placement | None = None,
    on_event: EventSink | None = None,
) -> Screening:
    """Patch a copy per example for ``epochs`` epochs and probe it; best first.

    Ordered by violation, then by probe ASR + over-refusal (which separates candidates that all
    meet, or all miss, the targets by the same amount), then by the given order (the proxy's).
    Only the best run so far is kept alive, so screening holds at most two patched copies.
    """
    short = replace(config, max_epochs=epochs, cer_k=0)  # CER is reported for the real attempt
    screens: list[Screen] = []
    winner: tuple[Screen, SftRun] | None = None
    for example in examples:
        run: SftRun | None = None
        if config.strategy == PatchStrategy.PROJECTION:
            model, _ = apply_patch(
                copy.deepcopy(finetuned), tokenizer, example, short, placement=placement
            )
            loss = float("nan")
        else:
            with seeded(config.seed):
                run = SftRun(
                    copy.deepcopy(finetuned), tokenizer, example, short,
                    anchors=anchors, placement=placement,
                )  # fmt: skip
                for _ in range(epochs):
                    loss = run.step()
            model = run.model
        result = probe(model)
        screen = Screen(example, result, probe_violation(config, result), epochs, loss)
        screens.append(screen)
        if run is not None and (winner is None or _rank(screen) < _rank(winner[0])):
            winner = (screen, run)
        del model, run
        if on_event is not None:
            on_event(CandidateScreened(reading=screen.reading, epochs=epochs))
    order = sorted(range(len(screens)), key=lambda i: (*_rank(screens[i]), i))
    ranked = [screens[i] for i in order]
    if winner is None:
        return Screening(ranked, None)
    best_run = winner[1]
    best_run.config = config  # it goes on under the attempt's own settings
    return Screening(ranked, best_run)


def _rank(screen: Screen) -> tuple[float, float]:
    return (screen.violation, screen.probe.asr + screen.probe.over_refusal)
