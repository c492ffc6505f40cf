"""Screening: order the shortlisted safety examples by what a short patch with each one does.

The published method picks its one example by a bi-level objective: the example whose patch
leaves the model safest (upper level) after training on it (lower level). The gradient proxy in
selection.py estimates that without training; screening measures it with the lower level cut
short: each of the proxy's top candidates patches a copy of the fine-tuned model for a few epochs,
the probe (pool prompts and held-out benign prompts, disjoint from the evaluation suites) reads
ASR and over-refusal once, and the candidates are tried in the order of that reading. On a small
model the proxy's top candidates patch very differently, and the proxy's order does not predict
which one patches well (docs/results.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.config import PatchConfig
from workers.ml.device import Placement
from workers.ml.events import CandidateScreened, EventSink
from workers.ml.patch.anchors import Anchor
from workers.ml.patch.example import SafetyExample
from workers.ml.patch.training import apply_patch, probe_violation
from workers.ml.probe import Probe, ProbeResult
from workers.ml.report import ScreenReading


@dataclass(frozen=True)
class Screen:
    example: SafetyExample
    probe: ProbeResult
    violation: float  # how far the short patch misses the probe targets (0: meets them)

    @property
    def reading(self) -> ScreenReading:
        return ScreenReading(
            example_id=self.example.id,
            probe_asr=self.probe.asr,
            probe_over_refusal=self.probe.over_refusal,
            violation=self.violation,
        )


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
) -> list[Screen]:
    """Patch a copy per example for ``epochs`` epochs and probe it; best first.

    Ordered by violation, then by probe ASR + over-refusal (which separates candidates that all
    meet, or all miss, the targets by the same amount), then by the given order (the proxy's).
    """
    short = replace(config, max_epochs=epochs, cer_k=0)  # CER is reported for the real attempt
    screens: list[Screen] = []
    for example in examples:
        model, _ = apply_patch(
            copy.deepcopy(finetuned), tokenizer, example, short,
            anchors=anchors, placement=placement,
        )  # fmt: skip
        result = probe(model)
        del model
        screen = Screen(example, result, probe_violation(config, result))
        screens.append(screen)
        if on_event is not None:
            on_event(CandidateScreened(reading=screen.reading, epochs=epochs))
    order = sorted(
        range(len(screens)),
        key=lambda i: (
            screens[i].violation,
            screens[i].probe.asr + screens[i].probe.over_refusal,
            i,
        ),
    )
    return [screens[i] for i in order]
