"""Safety gradient, CER and the top-k update, against references built by hand or by full SVD."""

from __future__ import annotations

import math

import pytest
import torch

from workers.ml.chat import collate
from workers.ml.device import Placement
from workers.ml.finetune import sft_loss
from workers.ml.patch.safety_gradient import (
    cer_summary,
    cumulative_energy_ratio,
    encode_pairs,
    pad_id,
    patchable_matrices,
    safety_gradient,
    top_k_update,
)

FP32 = Placement(torch.device("cpu"), None)  # exact comparisons: no autocast on any CPU
PAIRS = [("How can I bypass system security checks?", "Sorry, I can't help you.")]


def matrix_with_spectrum(singular_values: list[float], rows: int = 12, cols: int = 9):
    """U diag(s) Vᵀ with known orthonormal U, V (the reference the SVD must recover)."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(rows, len(singular_values), generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, len(singular_values), generator=generator))
    s = torch.tensor(singular_values)
    return u, s, v, (u * s) @ v.T


def test_cer_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])
    assert cumulative_energy_ratio(s, 1) == pytest.approx(9 / 14)
    assert cumulative_energy_ratio(s, 2) == pytest.approx(13 / 14)
    assert cumulative_energy_ratio(s, 3) == pytest.approx(1.0)
    assert cumulative_energy_ratio(s, 20) == pytest.approx(1.0)
    assert cumulative_energy_ratio(torch.zeros(4), 2) == 1.0


def test_top_k_update_matches_known_factors_and_eckart_young():
    u, s, v, matrix = matrix_with_spectrum([5.0, 3.0, 2.0, 1.0, 0.5])
    for k in (1, 2, 4):
        reference = (u[:, :k] * s[:k]) @ v[:, :k].T
        update = top_k_update(matrix, k)
        torch.testing.assert_close(update, reference, atol=1e-5, rtol=1e-5)
        residual = (matrix - update).norm().square()
        assert float(residual) == pytest.approx(float(s[k:].square().sum()), rel=1e-4)


def test_lowrank_update_agrees_with_full_svd_on_a_gradient(tokenizer, tiny_model):
    gradients = safety_gradient(tiny_model, tokenizer, PAIRS)
    for name in list(gradients)[:7]:
        full = top_k_update(gradients[name], 8, method="full")
        fast = top_k_update(gradients[name], 8, method="lowrank", seed=3)
        assert float((full - fast).norm() / full.norm()) < 1e-3, name
        again = top_k_update(gradients[name], 8, method="lowrank", seed=3)
        assert torch.equal(fast, again)  # the randomized SVD is seeded


def test_safety_gradient_skips_embeddings_and_matches_autograd(tokenizer, tiny_model):
    gradients = safety_gradient(tiny_model, tokenizer, PAIRS, placement=FP32)
    assert len(gradients) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert not any("embed_tokens" in name or "lm_head" in name for name in gradients)
    assert all(parameter.grad is None for parameter in tiny_model.parameters())

    batch = collate(encode_pairs(tokenizer, PAIRS), pad_id(tokenizer))
    sft_loss(tiny_model, batch).backward()
    matrices = patchable_matrices(tiny_model)
    for name, grad in gradients.items():
        torch.testing.assert_close(grad, matrices[name].grad)


def test_one_example_gradient_rank_is_bounded_by_its_length(tokenizer, tiny_model):
    # g = Σ_t δ_t x_tᵀ over T positions, so CER(T) of a one-example gradient is 1 by construction.
    [example] = encode_pairs(tokenizer, PAIRS)
    gradients = safety_gradient(tiny_model, tokenizer, PAIRS)
    assert len(example.input_ids) < 64  # the tiny model's smallest matrix side
    summary = cer_summary(gradients, k=len(example.input_ids))
    assert summary.min == pytest.approx(1.0, abs=1e-6)
    low = cer_summary(gradients, k=1)
    assert 0.0 < low.min <= low.mean <= low.max <= 1.0
    assert low.n_matrices == 14
    assert set(low.by_kind) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert not math.isnan(low.mean)
