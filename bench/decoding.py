"""Evaluation decoding against this machine's bf16 matmul limit, both measured in one process.

    .venv/bin/python -m bench.decoding --model DATA/models/smollm2-135m-safe

Decodes the gate's harmful and borderline prompts the way an evaluation does (the product's
``generate_tokens``, the evaluation's reply length and batch size) and divides the arithmetic it
did per second by the FLOP/s of a large bf16 matmul on the same device. The work counted is the
prompts' prefill (their real tokens, padding excluded) and the generated tokens: the linear maps
(the head only where a token is predicted) and attention over each token's context.
``bench/pipeline.py`` calls ``measure`` on the fine-tuned model of its first run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.chat import render, single_turn
from workers.ml.checkpoints import load_model
from workers.ml.config import REPLY_TOKENS
from workers.ml.device import Placement, select_placement
from workers.ml.generation import GENERATION_BATCH, generate_tokens
from workers.ml.suites import SuiteFiles, load_suites


@dataclass(frozen=True)
class DecodeFigures:
    prompts: int
    prompt_tokens: int  # real prompt tokens, padding excluded
    tokens: int  # generated tokens, end-of-turn tokens included
    seconds: float
    flops: float  # prefill and generated tokens: linear maps and attention over their context
    matmul_flops_per_second: float  # the bf16 (or fp32, without bf16) matmul limit

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def flops_per_token(self) -> float:
        """Per token processed, prompt or generated."""
        return self.flops / (self.tokens + self.prompt_tokens)

    @property
    def fraction(self) -> float:
        return self.flops / self.seconds / self.matmul_flops_per_second

    def lines(self) -> list[str]:
        return [
            "| figure | value |",
            "|---|---|",
            f"| prompts decoded | {self.prompts} |",
            f"| prompt tokens (prefill) | {self.prompt_tokens} |",
            f"| tokens generated | {self.tokens} |",
            f"| seconds | {self.seconds:.1f} |",
            f"| generated tokens/s | {self.tokens_per_second:.0f} |",
            f"| tokens processed/s | {(self.tokens + self.prompt_tokens) / self.seconds:.0f} |",
            f"| FLOPs per token processed | {self.flops_per_token / 1e6:.0f} M |",
            f"| decoding GFLOP/s | {self.flops / self.seconds / 1e9:.1f} |",
            f"| matmul limit GFLOP/s | {self.matmul_flops_per_second / 1e9:.1f} |",
            f"| fraction of the limit | **{self.fraction:.2f}** |",
        ]


def matmul_limit(placement: Placement, *, size: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of the best of ``repeats`` square matmuls in the precision decoding runs in."""
    dtype = placement.autocast_dtype or torch.float32
    a = torch.randn(size, size, device=placement.device).to(dtype)
    b = torch.randn(size, size, device=placement.device).to(dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        if placement.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if placement.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def decoding_flops(model: PreTrainedModel, prompt_lengths: list[int], new: list[int]) -> float:
    """2 x the linear maps' weights per token (the head only at the positions that predict a
    token: each generated one and each prompt's last), plus QKᵀ and AV over each token's
    context (4 x layers x attention width x context)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    head_weights = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    body = sum(m.weight.numel() for m in linears) - head_weights
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim
    total = 0.0
    for prompt, count in zip(prompt_lengths, new, strict=True):
        prefill_context = prompt * (prompt + 1) / 2  # token i of the prompt sees i + 1 positions
        total += 2 * body * prompt + attention * prefill_context
        # Generated token j (from 0) is predicted at position prompt - 1 + j, fed back at
        # prompt + j: each of the first count - 1 is processed with prompt + j + 1 positions.
        fed_back = max(count - 1, 0)
        context = fed_back * (prompt + 1) + fed_back * (fed_back - 1) / 2
        total += 2 * body * fed_back + attention * context + 2 * head_weights * count
    return total


def measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    reply_tokens: int = REPLY_TOKENS,
    placement: Placement | None = None,
) -> DecodeFigures:
    placement = placement or select_placement()
    limit = matmul_limit(placement)
    conversations = [single_turn(prompt) for prompt in prompts]
    started = time.perf_counter()
    tokens = generate_tokens(
        model, tokenizer, conversations, max_new_tokens=reply_tokens,
        batch_size=GENERATION_BATCH, placement=placement,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    prompt_lengths = [
        len(
            tokenizer(render(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for c in conversations
    ]
    new = [len(row) for row in tokens]
    return DecodeFigures(
        prompts=len(prompts),
        prompt_tokens=sum(prompt_lengths),
        tokens=sum(new),
        seconds=seconds,
        flops=decoding_flops(model, prompt_lengths, new),
        matmul_flops_per_second=limit,
    )


def gate_prompts() -> list[str]:
    suites = load_suites(SuiteFiles())
    return [p.prompt for p in suites.harmful] + [p.prompt for p in suites.benign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved model directory")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    figures = measure(model, tokenizer, gate_prompts())
    print("\n".join(figures.lines()))


if __name__ == "__main__":
    main()
