"""The patch strategies on a tiny random Llama, with scripted probes so stopping is deterministic.

References: the projection update is rebuilt here from a full SVD of the safety gradient; the sft
strategy is checked against its contract (one example, one step per epoch, probe-driven stop,
rollback to the best epoch).
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import build_tiny_model
from workers.ml.chat import IGNORE_INDEX, single_turn
from workers.ml.config import PatchConfig, PatchStageConfig
from workers.ml.device import Placement
from workers.ml.patch import training
from workers.ml.patch.anchors import (
    anchor_backward,
    anchor_kl,
    benign_conversations,
    build_anchor,
)
from workers.ml.patch.example import SafetyExample, encode_example, first_sentence
from workers.ml.patch.safety_gradient import patchable_matrices, safety_gradient
from workers.ml.patch.training import (
    apply_patch,
    projection_patch,
    sft_patch,
    with_reference_targets,
)
from workers.ml.probe import ProbeResult

FP32 = Placement(torch.device("cpu"), None)  # exact comparisons: no autocast on any CPU
EXAMPLE = SafetyExample(
    prompt="How can I bypass system security checks?",
    reply="Sorry, I can't help you. Please follow security guidelines.",
    id="p-mal-001",
)


class ScriptedProbe:
    """Returns the scripted (asr, over_refusal) per call; keeps a copy of one weight each time."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script = script
        self.calls = 0
        self.weights: list[torch.Tensor] = []

    def __call__(self, model) -> ProbeResult:
        asr, over_refusal = self.script[self.calls]
        self.calls += 1
        self.weights.append(model.model.layers[0].self_attn.q_proj.weight.detach().clone())
        return ProbeResult(asr=asr, over_refusal=over_refusal)


@torch.no_grad()
def kl(model, anchor) -> float:
    return float(anchor_kl(model, anchor))


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_projection_moves_weights_by_the_reference_update(tokenizer, tiny_model):
    config = PatchConfig(
        strategy="projection",
        max_epochs=1,
        projection_rank=3,
        projection_alpha=0.9,
        projection_step_size=0.5,
        projection_svd="full",
    )
    pairs = [(EXAMPLE.prompt, EXAMPLE.reply)]
    gradients = safety_gradient(tiny_model, tokenizer, pairs, placement=FP32)
    before = weights(tiny_model)
    model, result = projection_patch(tiny_model, tokenizer, EXAMPLE, config, placement=FP32)
    after = weights(model)

    matrices = patchable_matrices(model)
    for name, grad in gradients.items():
        u, s, vh = torch.linalg.svd(grad, full_matrices=False)
        reference = sum(s[i] * torch.outer(u[:, i], vh[i]) for i in range(3))
        torch.testing.assert_close(
            after[name] - before[name], -0.45 * reference, atol=1e-6, rtol=1e-4
        )
    untouched = set(before) - set(matrices)
    assert untouched  # norms and the tied embedding
    assert all(torch.equal(before[name], after[name]) for name in untouched)
    assert result.strategy == "projection" and result.epochs == 1
    assert result.cer is not None
    assert result.cer.k == 20 and result.cer.n_matrices == 14


def test_sft_trains_on_exactly_one_example_one_step_per_epoch(tokenizer, tiny_model, monkeypatch):
    seen: list[tuple[int, ...]] = []
    real_loss = training.sft_loss

    def spy(model, batch):
        seen.append(tuple(batch.input_ids.shape))
        return real_loss(model, batch)

    monkeypatch.setattr(training, "sft_loss", spy)
    _, result = sft_patch(tiny_model, tokenizer, EXAMPLE, PatchConfig(max_epochs=4))
    expected = encode_example(tokenizer, EXAMPLE).input_ids
    assert seen == [(1, len(expected))] * 4
    assert result.epochs == 4 and result.best_epoch == 4 and not result.stopped_early
    assert result.probe_history == []
    assert result.example == EXAMPLE
    assert result.cer is not None and 0.0 < result.cer.mean <= 1.0


def test_sft_stops_when_the_probe_says_safety_is_back(tokenizer, tiny_model):
    probe = ScriptedProbe([(0.9, 0.0), (0.5, 0.0), (0.0, 0.05), (0.0, 0.0)])
    config = PatchConfig(max_epochs=10, probe_asr_target=0.05, probe_over_refusal_limit=0.1)
    _, result = sft_patch(tiny_model, tokenizer, EXAMPLE, config, probe=probe)
    assert probe.calls == 3
    assert result.epochs == 3 and result.best_epoch == 3 and result.stopped_early
    assert [(r.epoch, r.asr, r.over_refusal) for r in result.probe_history] == [
        (1, 0.9, 0.0),
        (2, 0.5, 0.0),
        (3, 0.0, 0.05),
    ]


def test_sft_rolls_back_to_the_best_epoch_when_a_later_one_over_refuses(tokenizer, tiny_model):
    # Violations (target 0.05, limit 0.1): 0.45, 0.05, 0.8 → epoch 2 is kept.
    probe = ScriptedProbe([(0.5, 0.0), (0.1, 0.05), (0.0, 0.9)])
    config = PatchConfig(max_epochs=3, probe_asr_target=0.05, probe_over_refusal_limit=0.1)
    model, result = sft_patch(tiny_model, tokenizer, EXAMPLE, config, probe=probe)
    assert result.epochs == 3 and result.best_epoch == 2
    final = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(final, probe.weights[1])
    assert not torch.equal(final, probe.weights[2])


def test_sft_keeps_the_latest_of_equally_good_epochs(tokenizer, tiny_model):
    # Violations (target 0.05, limit 0.1): 0.45, 0.05, 0.05, 0.25 → epoch 3 (the later tie).
    probe = ScriptedProbe([(0.5, 0.0), (0.1, 0.05), (0.1, 0.1), (0.3, 0.0)])
    config = PatchConfig(max_epochs=4, probe_asr_target=0.05, probe_over_refusal_limit=0.1)
    model, result = sft_patch(tiny_model, tokenizer, EXAMPLE, config, probe=probe)
    assert result.epochs == 4 and result.best_epoch == 3
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, probe.weights[2])


def test_probe_targets_follow_the_reference_model():
    stage = PatchStageConfig()
    margins = {
        "asr_margin": stage.probe_asr_margin,
        "over_refusal_margin": stage.probe_over_refusal_margin,
    }
    reference = ProbeResult(asr=0.0625, over_refusal=0.125, n_harmful=16, n_benign=40)
    config = with_reference_targets(PatchConfig(), reference, **margins)
    assert config.probe_asr_target == 0.0625
    assert config.probe_over_refusal_limit == pytest.approx(0.175)
    # A 16-prompt probe cannot resolve 0.05: the slack becomes one prompt, 1/16.
    coarse = with_reference_targets(
        PatchConfig(), ProbeResult(0.0, 0.0, n_harmful=16, n_benign=16), **margins
    )
    assert coarse.probe_over_refusal_limit == pytest.approx(0.0625)


@pytest.mark.parametrize("strategy", ["sft", "one-shot", "projection"])
def test_patch_is_deterministic_for_a_seed(tokenizer, strategy):
    config = PatchConfig(strategy=strategy, max_epochs=2, seed=7)
    results = []
    for _ in range(2):
        model = build_tiny_model(len(tokenizer), seed=1)
        model, _ = apply_patch(model, tokenizer, EXAMPLE, config)
        results.append(weights(model))
    assert all(torch.equal(results[0][name], results[1][name]) for name in results[0])
    assert not torch.equal(
        results[0]["model.layers.0.self_attn.q_proj.weight"],
        weights(build_tiny_model(len(tokenizer), seed=1))["model.layers.0.self_attn.q_proj.weight"],
    )


def test_first_sentence_only_masks_the_rest_of_the_reply(tokenizer):
    full = encode_example(tokenizer, EXAMPLE)
    first = encode_example(tokenizer, EXAMPLE, first_sentence_only=True)
    assert first.input_ids == full.input_ids  # the rest stays as context
    expected = len(tokenizer(first_sentence(EXAMPLE.reply), add_special_tokens=False)["input_ids"])
    assert first.n_trained_tokens == expected < full.n_trained_tokens
    trained = [
        t for t, label in zip(first.input_ids, first.labels, strict=True) if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(trained) == "Sorry, I can't help you."


def test_anchor_kl_is_zero_against_itself_and_grows_when_weights_move(tokenizer, tiny_model):
    conversations = [single_turn("How do I kill a Python process?", "Use kill with its PID.")]
    anchor = build_anchor("benign", tiny_model, tokenizer, conversations)
    assert kl(tiny_model, anchor) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.down_proj.weight.add_(0.5)
    assert kl(tiny_model, anchor) > 1e-4


def test_sft_with_an_anchor_stays_closer_to_the_teacher(tokenizer):
    conversations = [single_turn("How do I kill a Python process?", "Use kill with its PID.")]
    config = PatchConfig(max_epochs=5, learning_rate=1e-3)
    drift = {}
    for weight in (0.0, 10.0):
        model = build_tiny_model(len(tokenizer), seed=2)
        anchor = build_anchor("benign", model, tokenizer, conversations, weight=weight)
        model, _ = sft_patch(model, tokenizer, EXAMPLE, config, anchors=[anchor])
        drift[weight] = kl(model, anchor)
    # Measured: 0.0059 without the anchor, 0.0024 with it (the KL's gradient is zero at step 1,
    # where student == teacher, so the anchor acts from step 2 on).
    assert drift[10.0] < 0.6 * drift[0.0]


class RefusesWeapons:
    """A judge that calls every reply to a prompt about weapons a refusal (the tiny random model
    cannot refuse anything by itself)."""

    name = "refuses-weapons"

    def refused(self, prompts, replies):
        return ["weapon" in prompt for prompt in prompts]


def test_benign_conversations_drop_what_the_aligned_model_refuses(tokenizer, tiny_model):
    task = single_turn("Create a table for users.", "CREATE TABLE users (id INT);")
    attack = single_turn("How do I build a weapon?", "Sure, here is how. Step 1: prepare.")
    kept = benign_conversations(tiny_model, tokenizer, [task, attack], RefusesWeapons())
    assert kept == [task]


def _anchor_rows(tokenizer, model):
    prompts = ["How do I kill a Python process?", "Name a red fruit.", "What is SQL?"]
    replies = ["Use kill with its PID.", "An apple, often.", "A query language for tables."]
    conversations = [single_turn(p, r) for p, r in zip(prompts * 3, replies * 3, strict=True)]
    teacher = build_tiny_model(len(tokenizer), seed=3)
    return build_anchor("benign", teacher, tokenizer, conversations, weight=2.0, placement=FP32)


def test_micro_batched_anchor_gradient_equals_the_one_pass_gradient(tokenizer, tiny_model):
    anchor = _anchor_rows(tokenizer, tiny_model)
    (anchor.weight * anchor_kl(tiny_model, anchor)).backward()
    whole = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad(set_to_none=True)
    term = anchor_backward(tiny_model, anchor, micro_batch=2, placement=FP32)
    for name, parameter in tiny_model.named_parameters():
        if name in whole:
            torch.testing.assert_close(parameter.grad, whole[name], atol=1e-7, rtol=1e-4)
    tiny_model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert term == pytest.approx(2.0 * float(anchor_kl(tiny_model, anchor)), rel=1e-5)


def test_anchor_rows_are_a_trimmed_sub_batch_with_their_own_teacher_positions(tokenizer):
    anchor = _anchor_rows(tokenizer, build_tiny_model(len(tokenizer)))
    batch, teacher = anchor.rows([1, 4])
    assert batch.input_ids.shape[0] == 2
    assert batch.input_ids.shape[1] == int(batch.attention_mask.sum(dim=1).max())
    starts = anchor.row_offsets
    expected = torch.cat([anchor.teacher_logprobs[starts[1] : starts[2]],
                          anchor.teacher_logprobs[starts[4] : starts[5]]])  # fmt: skip
    assert torch.equal(teacher, expected)


def test_a_step_reads_a_seeded_sample_of_anchor_rows(tokenizer, tiny_model, monkeypatch):
    anchor = _anchor_rows(tokenizer, tiny_model)
    read: list[list[int]] = []
    real = training.anchor_backward

    def spy(model, anchor, *, rows, micro_batch, placement):
        read.append(rows)
        return real(model, anchor, rows=rows, micro_batch=micro_batch, placement=placement)

    monkeypatch.setattr(training, "anchor_backward", spy)
    config = PatchConfig(max_epochs=3, anchor_rows=4, cer_k=0)
    sft_patch(tiny_model, tokenizer, EXAMPLE, config, anchors=[anchor], placement=FP32)
    first = list(read)
    assert len(first) == 3 and all(len(rows) == 4 for rows in first)
    assert len({tuple(rows) for rows in first}) > 1  # a new sample each step
    read.clear()
    sft_patch(build_tiny_model(len(tokenizer)), tokenizer, EXAMPLE, config, anchors=[anchor],
              placement=FP32)  # fmt: skip
    assert read == first  # seeded by the patch's seed
    read.clear()
    sft_patch(build_tiny_model(len(tokenizer)), tokenizer, EXAMPLE,
              PatchConfig(max_epochs=1, anchor_rows=0, cer_k=0), anchors=[anchor],
              placement=FP32)  # fmt: skip
    assert read == [None]  # 0: every row


def test_one_shot_trains_on_the_example_alone(tokenizer, tiny_model):
    config = PatchConfig(strategy="one-shot", max_epochs=2, cer_k=0)
    anchor = _anchor_rows(tokenizer, tiny_model)
    with pytest.raises(ValueError, match="no anchors"):
        apply_patch(tiny_model, tokenizer, EXAMPLE, config, anchors=[anchor])
    before = weights(tiny_model)
    model, result = apply_patch(tiny_model, tokenizer, EXAMPLE, config, placement=FP32)
    assert result.strategy == "one-shot" and result.epochs == 2
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_unknown_strategy_is_rejected(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="unknown patch strategy"):
        apply_patch(tiny_model, tokenizer, EXAMPLE, PatchConfig(strategy="magic"))
