"""The figures the cost bench derives rather than measures: parameter counts of the memory model
against the published ones and a real model, and decoding FLOPs against torch's own count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from bench.decoding import decoding_flops
from bench.memory_model import (
    LLAMA_2_7B,
    LLAMA_31_8B,
    LLAMA_32_1B,
    SMOLLM2_135M,
    Architecture,
    components,
    report,
)
from workers.ml.generation import greedy_decode


@pytest.mark.parametrize(
    ("arch", "published"),
    [
        (SMOLLM2_135M, 134_515_008),  # the bundled model's own count
        (LLAMA_32_1B, 1_235_814_400),
        (LLAMA_2_7B, 6_738_415_616),
        (LLAMA_31_8B, 8_030_261_248),
    ],
)
def test_parameter_counts_match_the_published_models(arch: Architecture, published: int) -> None:
    assert arch.parameters == published


def test_the_modelled_peak_counts_each_copy_the_code_holds() -> None:
    parts = components(LLAMA_31_8B)
    fp32_weights = 4 * LLAMA_31_8B.parameters
    assert parts["aligned θ0 weights"] == parts["fine-tuned θ* weights"] == fp32_weights
    assert parts["screened run: weights + gradients + AdamW"] == 4 * fp32_weights
    assert "| fits one 80 GB GPU |" in report()


def _model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_decoding_flops_equal_torch_counting_the_same_decode() -> None:
    """torch counts the matmuls of the linear maps (its counter has no rule for the CPU's fused
    attention kernel); attention is the sum over queries of the positions each one attends to."""
    model = _model()
    prompt = torch.randint(0, 300, (1, 7))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        new = greedy_decode(model, prompt, torch.ones_like(prompt), max_new_tokens=5, stop_ids=[])
    assert len(new[0]) == 5
    # Prefill: query i attends to i + 1 positions; then 4 generated tokens are fed back, each
    # attending to the prompt, the tokens before it and itself.
    attended = sum(range(1, 8)) + sum(range(8, 12))
    attention = 4 * 2 * 64 * attended  # QKᵀ and AV: 2 x 2 FLOPs per position and width
    assert decoding_flops(model, [7], [5]) == counter.get_total_flops() + attention
