"""The patch's preference term on a tiny random Llama: log-probabilities and the DPO loss."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from tests.tiny_models import build_tiny_model
from workers.ml.chat import encode_conversation, single_turn
from workers.ml.device import Placement
from workers.ml.patch import PatchConfig, SafetyExample, sft_patch
from workers.ml.preference import preference_loss, preference_pair, sequence_logprobs

FP32 = Placement(torch.device("cpu"), None)
PROMPT = "How can I bypass system security checks?"
REFUSAL = "Sorry, I can't help with that."
COMPLIANCE = "Sure, here is how. Step 1: prepare. Step 2: proceed."


@torch.no_grad()
def reference_logprob(model, tokenizer, reply: str) -> float:
    """Token by token from a plain full forward of one unpadded sequence."""
    encoded = encode_conversation(tokenizer, single_turn(PROMPT, reply))
    logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    return sum(
        float(logprobs[t - 1, label])
        for t, label in enumerate(encoded.labels)
        if t > 0 and label != -100
    )


def test_sequence_logprobs_match_a_token_by_token_sum(tokenizer, tiny_model):
    pair = preference_pair(
        tiny_model, tokenizer, PROMPT, REFUSAL, COMPLIANCE, beta=0.1, placement=FP32
    )
    expected = [reference_logprob(tiny_model, tokenizer, r) for r in (REFUSAL, COMPLIANCE)]
    # The batch is right-padded (the refusal is the shorter row): padding must not count.
    assert pair.reference_logprobs.tolist() == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():
        assert sequence_logprobs(tiny_model, pair.batch).tolist() == pytest.approx(
            expected, rel=1e-4
        )


def test_preference_loss_is_log_2_at_the_reference_and_falls_as_the_refusal_wins(
    tokenizer, tiny_model
):
    pair = preference_pair(
        tiny_model, tokenizer, PROMPT, REFUSAL, COMPLIANCE, beta=0.5, placement=FP32
    )
    with torch.no_grad():
        assert float(preference_loss(tiny_model, pair)) == pytest.approx(math.log(2), rel=1e-5)
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    for _ in range(3):
        loss = preference_loss(tiny_model, pair)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        assert float(preference_loss(tiny_model, pair)) < math.log(2) - 0.01
        ratios = sequence_logprobs(tiny_model, pair.batch) - pair.reference_logprobs
    assert ratios[0] > ratios[1]


def test_sft_with_the_preference_term_pushes_the_compliance_down_further(tokenizer):
    example = SafetyExample(prompt=PROMPT, reply=REFUSAL, rejected=COMPLIANCE)
    config = PatchConfig(max_epochs=4, learning_rate=1e-3)
    compliance = {}
    for weight in (0.0, 5.0):
        model = build_tiny_model(len(tokenizer), seed=3)
        before = reference_logprob(model, tokenizer, COMPLIANCE)
        model, _ = sft_patch(
            model, tokenizer, example, replace(config, preference_weight=weight), placement=FP32
        )
        compliance[weight] = reference_logprob(model, tokenizer, COMPLIANCE) - before
    assert compliance[5.0] < compliance[0.0] - 0.5


def test_without_a_rejected_reply_the_term_is_off(tokenizer):
    config = PatchConfig(max_epochs=2, learning_rate=1e-3, preference_weight=5.0)
    example = SafetyExample(prompt=PROMPT, reply=REFUSAL)
    patched = {}
    for cfg in (config, replace(config, preference_weight=0.0)):
        model = build_tiny_model(len(tokenizer), seed=4)
        model, result = sft_patch(model, tokenizer, example, cfg, placement=FP32)
        patched[cfg.preference_weight] = model.model.layers[0].mlp.up_proj.weight.detach().clone()
        assert result.to_report()["preference_pair"] is False
    assert torch.equal(patched[5.0], patched[0.0])
