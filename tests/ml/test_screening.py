"""Screening on a tiny random Llama: each candidate gets its own short patch, then the probe."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import build_tiny_model
from workers.ml.config import PatchConfig
from workers.ml.device import Placement
from workers.ml.patch.example import SafetyExample
from workers.ml.patch.screening import screen_examples
from workers.ml.patch.training import sft_patch
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
    screening = screen_examples(
        finetuned, tokenizer, EXAMPLES, CONFIG, probe=probe, placement=FP32,
        on_event=events.append, epochs=2,
    )  # fmt: skip
    screens = screening.screens
    assert [s.example.id for s in screens] == ["c3", "c1", "c2", "c0"]
    assert [round(s.violation, 6) for s in screens] == [0.0, 0.0, 0.1, 0.5]
    assert [e.reading.example_id for e in events] == ["c0", "c1", "c2", "c3"]
    assert {e.epochs for e in events} == {2}
    # Every candidate patched its own copy: the fine-tuned model is untouched, and the four
    # patched models differ from it and from each other.
    assert torch.equal(finetuned.model.layers[0].mlp.up_proj.weight, before)
    assert all(not torch.equal(seen, before) for seen in probe.seen)
    assert not torch.equal(probe.seen[0], probe.seen[1])
    # The winner's run is kept to go on with: its model is the one c3's probe read, two epochs in.
    assert screening.winner is not None
    assert screening.winner.example.id == "c3" and screening.winner.epochs == 2
    assert torch.equal(screening.winner.model.model.layers[0].mlp.up_proj.weight, probe.seen[3])
    assert screening.winner.config.max_epochs == CONFIG.max_epochs  # the attempt's own limit


def test_the_winner_goes_on_without_training_its_screened_epochs_again(tokenizer):
    finetuned = build_tiny_model(len(tokenizer), seed=7)
    screening = screen_examples(
        finetuned, tokenizer, EXAMPLES[:2], CONFIG, placement=FP32, epochs=2,
        probe=ScriptedProbe([(0.5, 0.0), (0.3, 0.0)]),
    )  # fmt: skip
    winner = screening.winner
    assert winner is not None and winner.example.id == "c1"
    steps = []
    real_step = winner.step
    winner.step = lambda: steps.append(winner.epochs) or real_step()  # type: ignore[method-assign]
    # The attempt's probe: ASR falls to the target at the 4th epoch overall.
    probe = ScriptedProbe([(0.2, 0.0), (0.1, 0.0)])
    model, result = sft_patch(
        winner.model, tokenizer, winner.example, CONFIG, probe=probe, placement=FP32,
        resume=winner, resume_reading=screening.screens[0].probe_epoch,
    )  # fmt: skip
    assert steps == [2, 3]  # epochs 3 and 4 trained; 1 and 2 were screening's
    assert [(r.epoch, r.asr) for r in result.probe_history] == [(2, 0.3), (3, 0.2), (4, 0.1)]
    assert result.epochs == 4 and result.best_epoch == 4 and result.stopped_early
    assert model is winner.model and winner.optimizer is None  # AdamW's state freed


def test_projection_screening_keeps_no_run(tokenizer):
    finetuned = build_tiny_model(len(tokenizer), seed=8)
    config = PatchConfig(strategy="projection", projection_rank=2, cer_k=0)
    screening = screen_examples(
        finetuned, tokenizer, EXAMPLES[:2], config, placement=FP32, epochs=1,
        probe=ScriptedProbe([(0.5, 0.0), (0.3, 0.0)]),
    )  # fmt: skip
    assert [s.example.id for s in screening.screens] == ["c1", "c0"]
    assert screening.winner is None


def test_equal_readings_keep_the_proxy_order(tokenizer):
    finetuned = build_tiny_model(len(tokenizer), seed=6)
    probe = ScriptedProbe([(0.3, 0.0)] * 4)
    screens = screen_examples(
        finetuned, tokenizer, EXAMPLES, CONFIG, probe=probe, placement=FP32, epochs=1
    ).screens
    assert [s.example.id for s in screens] == ["c0", "c1", "c2", "c3"]
    assert screens[0].reading == ScreenReading(
        example_id="c0", probe_asr=0.3, probe_over_refusal=0.0, violation=pytest.approx(0.2)
    )
