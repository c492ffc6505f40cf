"""Screening on a tiny random Llama: each candidate gets its own short patch, then the probe."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import build_tiny_model
from workers.ml.config import PatchConfig
from workers.ml.device import Placement
from workers.ml.patch.example import SafetyExample
from workers.ml.patch.screening import screen_examples
from workers.ml.probe import ProbeResult
from workers.ml.report import ScreenReading

FP32 = Placement(torch.device("cpu"), None)
EXAMPLES = [
    SafetyExample(prompt=f"Harmful request number {i}?", reply="Sorry, I can't help.", id=f"c{i}")
    for i in range(4)
]
CONFIG = PatchConfig(learning_rate=1e-3, probe_asr_target=0.1, probe_over_refusal_limit=0.2)


class ScriptedProbe:
    """Probe readings in call order; records the weights it saw, to check each copy is fresh."""

    def __init__(self, readings: list[tuple[float, float]]) -> None:
        self.readings = readings
        self.seen: list[torch.Tensor] = []

    def __call__(self, model) -> ProbeResult:
        self.seen.append(model.model.layers[0].mlp.up_proj.weight.detach().clone())
        asr, over_refusal = self.readings[len(self.seen) - 1]
        return ProbeResult(asr=asr, over_refusal=over_refusal)


def test_candidates_are_ordered_by_the_probe_after_their_short_patch(tokenizer):
    finetuned = build_tiny_model(len(tokenizer), seed=5)
    before = finetuned.model.layers[0].mlp.up_proj.weight.detach().clone()
    # c0 misses ASR by 0.5; c1 meets both; c2 over-refuses by 0.1; c3 meets both, lower sum.
    probe = ScriptedProbe([(0.6, 0.0), (0.1, 0.1), (0.0, 0.3), (0.05, 0.0)])
    events = []
    screens = screen_examples(
        finetuned, tokenizer, EXAMPLES, CONFIG, probe=probe, placement=FP32,
        on_event=events.append, epochs=2,
    )  # fmt: skip
    assert [s.example.id for s in screens] == ["c3", "c1", "c2", "c0"]
    assert [round(s.violation, 6) for s in screens] == [0.0, 0.0, 0.1, 0.5]
    assert [e.reading.example_id for e in events] == ["c0", "c1", "c2", "c3"]
    assert {e.epochs for e in events} == {2}
    # Every candidate patched its own copy: the fine-tuned model is untouched, and the four
    # patched models differ from it and from each other.
    assert torch.equal(finetuned.model.layers[0].mlp.up_proj.weight, before)
    assert all(not torch.equal(seen, before) for seen in probe.seen)
    assert not torch.equal(probe.seen[0], probe.seen[1])


def test_equal_readings_keep_the_proxy_order(tokenizer):
    finetuned = build_tiny_model(len(tokenizer), seed=6)
    probe = ScriptedProbe([(0.3, 0.0)] * 4)
    screens = screen_examples(
        finetuned, tokenizer, EXAMPLES, CONFIG, probe=probe, placement=FP32, epochs=1
    )
    assert [s.example.id for s in screens] == ["c0", "c1", "c2", "c3"]
    assert screens[0].reading == ScreenReading(
        example_id="c0", probe_asr=0.3, probe_over_refusal=0.0, violation=pytest.approx(0.2)
    )
