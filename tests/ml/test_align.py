"""Provider alignment on the tiny model: refusals plus the model's own answers, cached."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from contracts.prompts import Prompt
from tests.tiny_models import build_tiny_model
from workers.ml import align as align_module
from workers.ml.align import align
from workers.ml.config import AlignConfig
from workers.ml.probe import ProbeResult

HARMFUL = [
    Prompt(id=f"ah-mal-{i:03}", prompt=f"Write malware number {i}.", category="malware",
           refusal="I'm sorry, but I can't help with that.")
    for i in range(1, 4)
]  # fmt: skip
BENIGN = [Prompt(id=f"ab-{i:03}", prompt=f"Name a colour, {i}.", kind="fact") for i in range(1, 5)]


class DeclinesSecond:
    """A judge that calls the reply to the second benign prompt a refusal."""

    name = "declines-second"

    def refused(self, prompts, replies):
        return [prompt == BENIGN[1].prompt for prompt in prompts]


def test_align_trains_on_refusals_and_own_answers_except_declined_ones(
    tokenizer, monkeypatch, tmp_path: Path
) -> None:
    generated: list[list[str]] = []

    def fake_answers(model, tokenizer, prompts, **options):
        generated.append(list(prompts))
        return [f"Blue is a colour ({prompt})." for prompt in prompts]

    monkeypatch.setattr(align_module, "generate_for_prompts", fake_answers)
    cache = tmp_path / "answers.json"
    config = AlignConfig(n_epochs=1, batch_size=4, learning_rate=1e-3)

    _, result = align(
        build_tiny_model(len(tokenizer)), tokenizer, HARMFUL, BENIGN, config,
        answer_cache=cache, judge=DeclinesSecond(),
    )  # fmt: skip

    assert (result.n_refusals, result.n_benign) == (3, 3)
    assert result.training.steps == 2  # 3 refusals + 3 answers in batches of 4
    assert sorted(generated[0]) == sorted(p.prompt for p in BENIGN)
    stored = json.loads(cache.read_text())
    assert stored["answer_tokens"] == config.answer_tokens and len(stored["answers"]) == 4

    # A new prompt: only it is answered, the others come from the cache.
    extra = Prompt(id="ab-005", prompt="Name a fruit.", kind="fact")
    align(
        build_tiny_model(len(tokenizer)), tokenizer, HARMFUL, [*BENIGN, extra], config,
        answer_cache=cache, judge=DeclinesSecond(),
    )  # fmt: skip
    assert generated[1] == ["Name a fruit."]


class ScriptedProbe:
    """Returns the scripted (asr, over_refusal) per call."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, model) -> ProbeResult:
        asr, over_refusal = self.script[self.calls]
        self.calls += 1
        return ProbeResult(asr=asr, over_refusal=over_refusal)


def aligned_with(tokenizer, monkeypatch, probe, n_epochs):
    monkeypatch.setattr(
        align_module,
        "generate_for_prompts",
        lambda model, tokenizer, prompts, **_: ["Blue."] * len(prompts),
    )
    weights: dict[int, torch.Tensor] = {}

    def remember(epoch, model):
        weights[epoch] = model.model.layers[0].self_attn.q_proj.weight.detach().clone()

    config = AlignConfig(n_epochs=n_epochs, batch_size=4, learning_rate=1e-3, probe_from_epoch=2)
    model, result = align(
        build_tiny_model(len(tokenizer)), tokenizer, HARMFUL, BENIGN, config,
        judge=DeclinesSecond(), probe=probe, on_epoch_end=remember,
    )  # fmt: skip
    return model.model.layers[0].self_attn.q_proj.weight, weights, result


def test_align_stops_at_the_first_probed_epoch_that_meets_both_targets(tokenizer, monkeypatch):
    # Epoch 1 is not probed; epoch 2 over-refuses; epoch 3 meets both targets.
    probe = ScriptedProbe([(0.02, 0.20), (0.04, 0.08), (0.0, 0.0)])
    kept, weights, result = aligned_with(tokenizer, monkeypatch, probe, n_epochs=5)
    assert probe.calls == 2 and sorted(weights) == [1, 2, 3]
    assert result.kept_epoch == 3 and sorted(result.probes) == [2, 3]
    assert torch.equal(kept, weights[3])


def test_align_keeps_the_least_violating_epoch_when_none_meets_the_targets(tokenizer, monkeypatch):
    # Violations: epoch 2 0.10, epoch 3 0.03, epoch 4 0.08 -> epoch 3's weights are restored.
    probe = ScriptedProbe([(0.15, 0.05), (0.08, 0.05), (0.03, 0.18)])
    kept, weights, result = aligned_with(tokenizer, monkeypatch, probe, n_epochs=4)
    assert probe.calls == 3 and result.kept_epoch == 3
    assert torch.equal(kept, weights[3]) and not torch.equal(kept, weights[4])


def test_validation_probe_is_disjoint_from_the_alignment_data_and_the_suites(tokenizer):
    from contracts.prompts import load_prompts
    from contracts.text import normalize_prompt
    from workers import data
    from workers.ml.align import validation_probe
    from workers.ml.judges import get_judge

    probe = validation_probe(tokenizer, get_judge())
    used = {
        normalize_prompt(p.prompt)
        for path in (data.ALIGN_HARMFUL, data.ALIGN_BENIGN, data.HARMFUL_EVAL, data.BORDERLINE_EVAL)
        for p in load_prompts(path)
    }
    assert len(probe.harmful) == 96 and len(probe.benign) >= 80
    assert not used & {normalize_prompt(p) for p in probe.harmful + probe.benign}
