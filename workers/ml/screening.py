"""Screening: order the shortlisted safety examples by what a short patch with each one does.

The paper picks its one example by a bi-level objective: the example whose patch leaves the
model safest (upper level) after training on it (lower level). The gradient proxy in
selection.py estimates that without training; screening measures it with the lower level cut
short: each of the proxy's top candidates patches a copy of the fine-tuned model for
``SCREEN_EPOCHS`` epochs, the probe (pool prompts and held-out benign prompts, disjoint from the
evaluation suites) reads ASR and over-refusal once, and the candidates are tried in the order of
that reading.

Why: on SmolLM2-135M the proxy's top candidates patch very differently. In one pipeline run
(aligned base probe ASR 0.02, docs/results.md) four epochs with the proxy's first candidate left
probe ASR 0.31, with its fourth 0.02; on a differently aligned model the first left 0.60 and the
fourth 0.13 (bench/patch_sweep.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.anchors import Anchor
from workers.ml.device import Placement
from workers.ml.events import EventSink, PipelineEvent
from workers.ml.patch import PatchConfig, SafetyExample, apply_patch, probe_violation
from workers.ml.probe import Probe, ProbeResult

# The proxy's top candidates screened, and the epochs of each short patch. By epoch 4 the
# example's own loss is ~0.001-0.02 and the probe has mostly settled (docs/results.md).
SCREEN_CANDIDATES = 8
SCREEN_EPOCHS = 4


@dataclass(frozen=True)
class Screen:
    example: SafetyExample
    probe: ProbeResult
    violation: float  # how far the short patch misses the probe targets (0: meets them)

    def to_report(self) -> dict[str, Any]:
        return {
            "example_id": self.example.id,
            "probe_asr": self.probe.asr,
            "probe_over_refusal": self.probe.over_refusal,
            "violation": self.violation,
        }


def screen_examples(
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SafetyExample],
    config: PatchConfig,
    *,
    probe: Probe,
    anchors: Sequence[Anchor] = (),
    placement: Placement | None = None,
    on_event: EventSink | None = None,
    epochs: int = SCREEN_EPOCHS,
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
            on_event(
                PipelineEvent(
                    "patch",
                    f"screened {example.id}: probe ASR {result.asr:.2f}, "
                    f"over-refusal {result.over_refusal:.2f} after {epochs} epochs",
                    screen.to_report(),
                )
            )
    order = sorted(
        range(len(screens)),
        key=lambda i: (
            screens[i].violation,
            screens[i].probe.asr + screens[i].probe.over_refusal,
            i,
        ),
    )
    return [screens[i] for i in order]
