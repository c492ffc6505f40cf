"""Choose the ONE safety example from the candidate pool: a cheap, first-order proxy of the paper's
bi-level objective, scored for every candidate in one batched pass.

The paper's upper level wants the patched model close to the aligned model on harmful prompts and
close to the fine-tuned model on task data. One gradient step on candidate c moves any loss L by
about -η⟨g_c, ∇L⟩, so we score c by cosines between its safety gradient g_c and three references:

    score = w_pool · cos(g_c, g_pool)          agrees with the pool's batch safety gradient
          - w_task · |cos(g_c, g_task)|        barely moves the customer's task loss
          - w_over_refusal · cos(g_c, g_over)  does not teach refusing benign prompts
          - w_likelihood · nll_ref(c)          optional: a refusal the aligned model would write

- g_pool: mean per-example gradient of a seeded sample of the pool (leave-one-out for candidates
  inside the sample, so a candidate does not score its own contribution).
- g_task: gradient on the customer's task conversations (pass benign task examples: a harmful
  request with a compliant reply in there makes this term protect the attack).
- g_over: gradient of the pool sample's refusals attached to unlabeled benign prompts (the same
  wordings as g_pool, so the two differ in the prompt, not the phrasing; a single fixed refusal
  here was measured to just penalise candidates worded like it). It is a direction to *avoid*,
  never trained on: a positive cosine means a step on c makes refusing benign prompts likelier —
  the over-refusal the naive patch shows.
- nll_ref: mean per-token NLL of c's refusal under the aligned model (only when weighted > 0).

Cost control ("gradient sketch"): gradients are restricted to the linear maps of the last
``sketch_layers`` decoder layers, so the backward pass stops there, and per-example gradients are
never materialised: for a linear map, g_c = Σ_t δ_t x_tᵀ, hence ⟨g_c, R⟩ = Σ_t δ_tᵀ R x_t and
‖g_c‖² = Σ_{t,s} (δ_t·δ_s)(x_t·x_s), computed from the activations x and output gradients δ that
one batched forward/backward captures. Scoring runs under bf16 autocast on CPU (about twice as
fast as fp32); the ranking is a comparison of cosines, which bf16 keeps (tested against fp32 on
the tiny model). The forward pass over every candidate is the floor of the cost (per candidate:
one forward plus a backward through the sketch layers), so by default a stratified sample of the
pool is scored (``SelectionConfig.max_candidates``).

Candidates whose prompt appears in the customer's data (normalized text: casefolded, punctuation
and symbols dropped, whitespace collapsed — ``contracts.text.normalize_prompt``; equal, or
contained in a customer prompt) are never scored.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.text import normalize_prompt
from workers.ml.chat import (
    IGNORE_INDEX,
    Batch,
    ChatMessage,
    EncodedExample,
    collate,
    encode_conversation,
    single_turn,
)
from workers.ml.config import SelectionConfig
from workers.ml.device import Placement, select_placement
from workers.ml.finetune import labelled_logits
from workers.ml.patch.safety_gradient import pad_id


@dataclass(frozen=True)
class Candidate:
    id: str
    category: str
    prompt: str
    refusal: str

    @classmethod
    def from_record(cls, record: Any) -> Candidate:
        """From a ``contracts.prompts.Prompt`` (or anything with id/category/prompt/refusal)."""
        return cls(str(record.id), str(record.category), str(record.prompt), str(record.refusal))


@dataclass
class CandidateScore:
    candidate: Candidate
    score: float
    components: dict[str, float]  # cos_pool, cos_task, cos_over_refusal, nll_model[, nll_reference]


@dataclass
class Selection:
    ranked: list[CandidateScore]  # best first; the pipeline tries the next one when a patch misses
    excluded: list[str]  # ids of candidates whose prompt is in the customer's data
    seconds: float


def exclude_customer_prompts(
    pool: Sequence[Candidate], customer_prompts: Sequence[str]
) -> tuple[list[Candidate], list[str]]:
    """Split the pool into (eligible candidates, excluded ids)."""
    customer = {normalize_prompt(prompt) for prompt in customer_prompts}
    customer.discard("")
    eligible, excluded = [], []
    for candidate in pool:
        text = normalize_prompt(candidate.prompt)
        # Containment catches a pool prompt wrapped in extra words; short texts would over-match.
        contained = len(text.split()) >= 3 and any(f" {text} " in f" {p} " for p in customer)
        if text in customer or contained:
            excluded.append(candidate.id)
        else:
            eligible.append(candidate)
    return eligible, excluded


def select_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pool: Sequence[Candidate],
    *,
    customer_prompts: Sequence[str] = (),
    task_conversations: Sequence[Sequence[ChatMessage]] = (),
    benign_prompts: Sequence[str] = (),
    config: SelectionConfig | None = None,
    reference_model: PreTrainedModel | None = None,
    placement: Placement | None = None,
) -> Selection:
    """Rank the eligible candidates by the documented score (best first; deterministic)."""
    config = config or SelectionConfig()
    placement = placement or select_placement()
    started = time.perf_counter()
    eligible, excluded = exclude_customer_prompts(pool, customer_prompts)
    if not eligible:
        raise ValueError("every candidate's prompt appears in the customer's data")
    rng = random.Random(config.seed)
    candidates = _stratified_sample(eligible, config.max_candidates, rng)
    sample = sorted(rng.sample(range(len(candidates)), min(config.pool_sample, len(candidates))))

    def encode(conversations: Sequence[Sequence[ChatMessage]]) -> list[EncodedExample]:
        encoded = [encode_conversation(tokenizer, c) for c in conversations]
        return [example for example in encoded if example.n_trained_tokens > 0]

    # Not filtered: row i must stay candidate i (a refusal always has trained tokens anyway).
    candidate_examples = [
        encode_conversation(tokenizer, single_turn(c.prompt, c.refusal)) for c in candidates
    ]
    references_examples = {
        "pool": [candidate_examples[i] for i in sample],
        "task": encode(list(task_conversations)[: config.max_task_examples]),
        # The pool sample's own refusals, moved onto benign prompts: same wordings as g_pool, so
        # g_pool vs g_over differ in the prompt (harmful or not), not in the refusal's phrasing.
        "over_refusal": encode(
            [
                single_turn(prompt, candidates[sample[i % len(sample)]].refusal)
                for i, prompt in enumerate(benign_prompts[: config.max_benign_prompts])
            ]
        ),
    }
    scoring = _Scoring(model, pad_id(tokenizer), config, placement)
    with scoring.sketch():
        references = {
            name: scoring.mean_gradient(examples)
            for name, examples in references_examples.items()
            if examples
        }
        stats = scoring.per_example_stats(candidate_examples, references)

    nll_reference = None
    if config.weight_likelihood > 0 and reference_model is not None:
        nll_reference = _reply_nll(reference_model, candidate_examples, scoring)
    components = _components(stats, references, sample, nll_reference)
    ranked = [
        CandidateScore(candidate, _score(parts, config), parts)
        for candidate, parts in zip(candidates, components, strict=True)
    ]
    ranked.sort(key=lambda item: (-item.score, item.candidate.id))
    return Selection(ranked=ranked, excluded=excluded, seconds=time.perf_counter() - started)


def _score(parts: dict[str, float], config: SelectionConfig) -> float:
    score = config.weight_pool * parts.get("cos_pool", 0.0)
    score -= config.weight_task * abs(parts.get("cos_task", 0.0))
    score -= config.weight_over_refusal * parts.get("cos_over_refusal", 0.0)
    score -= config.weight_likelihood * parts.get("nll_reference", 0.0)
    return score


@dataclass
class _Stats:
    norm_sq: torch.Tensor  # (n,) ‖g_c‖²
    dots: dict[str, torch.Tensor]  # reference name → (n,) ⟨g_c, g_ref⟩
    ref_norm_sq: dict[str, float]
    nll: torch.Tensor  # (n,) mean per-token NLL of each reply under the scored model


def _components(
    stats: _Stats,
    references: dict[str, list[torch.Tensor]],
    sample: list[int],
    nll_reference: torch.Tensor | None,
) -> list[dict[str, float]]:
    norm = stats.norm_sq.clamp_min(1e-30).sqrt()
    cosines: dict[str, torch.Tensor] = {}
    for name in references:
        dots, ref_sq = stats.dots[name], torch.full_like(norm, stats.ref_norm_sq[name])
        if name == "pool" and len(sample) > 1:
            # Leave-one-out: g_pool without c is (N·g_pool - g_c)/(N - 1).
            n = len(sample)
            index = torch.tensor(sample)
            own_sq, own_dot = stats.norm_sq[index], dots[index]
            dots = dots.clone()
            dots[index] = (n * own_dot - own_sq) / (n - 1)
            ref_sq[index] = (n * n * ref_sq[index] - 2 * n * own_dot + own_sq) / (n - 1) ** 2
        cosines[name] = dots / (norm * ref_sq.clamp_min(1e-30).sqrt())
    rows = []
    for i in range(len(norm)):
        parts = {f"cos_{name}": float(values[i]) for name, values in cosines.items()}
        parts["nll_model"] = float(stats.nll[i])
        if nll_reference is not None:
            parts["nll_reference"] = float(nll_reference[i])
        rows.append(parts)
    return rows


class _Scoring:
    """Batched per-example gradient statistics on the sketch layers (see the module docstring)."""

    def __init__(
        self, model: PreTrainedModel, pad: int, config: SelectionConfig, placement: Placement
    ) -> None:
        self.model = model
        self.pad = pad
        self.config = config
        self.placement = placement
        self.linears = _sketch_linears(model, config.sketch_layers)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        # Independent of the placement's own autocast: bf16=False means exact fp32 scoring.
        device = self.placement.device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.config.bf16)

    @contextlib.contextmanager
    def sketch(self) -> Iterator[None]:
        """Only the sketch weights require grad, so backward stops at the lowest sketch layer."""
        previous = {p: p.requires_grad for p in self.model.parameters()}
        was_training = self.model.training
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for module in self.linears:
            module.weight.requires_grad_(True)
        try:
            yield
        finally:
            for parameter, flag in previous.items():
                parameter.requires_grad_(flag)
            self.model.train(was_training)

    def batches(self, examples: Sequence[EncodedExample]) -> Iterator[tuple[list[int], Batch]]:
        # Sorted by length so a batch pads little; indices map rows back to examples.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        for first in range(0, len(order), self.config.batch_size):
            rows = order[first : first + self.config.batch_size]
            batch = collate([examples[i] for i in rows], self.pad).to(self.placement.device)
            yield rows, batch

    def mean_gradient(self, examples: Sequence[EncodedExample]) -> list[torch.Tensor]:
        """Mean over examples of each example's gradient (per-example mean token loss)."""
        weights = [module.weight for module in self.linears]
        total = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        for _, batch in self.batches(examples):
            with self.autocast():
                loss = _per_example_nll(self.model, batch).sum()
            for accumulated, grad in zip(total, torch.autograd.grad(loss, weights), strict=True):
                accumulated += grad.float()
        return [grad / len(examples) for grad in total]

    def per_example_stats(
        self, examples: Sequence[EncodedExample], references: dict[str, list[torch.Tensor]]
    ) -> _Stats:
        n = len(examples)
        norm_sq = torch.zeros(n, dtype=torch.float64)
        dots = {name: torch.zeros(n, dtype=torch.float64) for name in references}
        nll = torch.zeros(n, dtype=torch.float64)
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []

        def capture(
            _: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            captured.append((inputs[0], output))

        handles = [module.register_forward_hook(capture) for module in self.linears]
        try:
            for rows, batch in self.batches(examples):
                captured.clear()
                with self.autocast():
                    losses = _per_example_nll(self.model, batch)
                # δ = ∂(Σ_c loss_c)/∂output: row c only depends on example c, so one backward
                # gives every example's own output gradients.
                deltas = torch.autograd.grad(losses.sum(), [output for _, output in captured])
                index = torch.tensor(rows)
                nll[index] = losses.detach().double().cpu()
                for position, ((x, _), delta) in enumerate(zip(captured, deltas, strict=True)):
                    x, delta = x.detach().float(), delta.float()
                    gram = (x @ x.transpose(1, 2)) * (delta @ delta.transpose(1, 2))
                    norm_sq[index] += gram.sum(dim=(1, 2)).double().cpu()
                    for name, reference in references.items():
                        projected = delta @ reference[position]  # (b, t, d_in)
                        dots[name][index] += (projected * x).sum(dim=(1, 2)).double().cpu()
        finally:
            for handle in handles:
                handle.remove()
        ref_norm_sq = {
            name: float(sum(g.double().square().sum() for g in grads))
            for name, grads in references.items()
        }
        return _Stats(norm_sq=norm_sq, dots=dots, ref_norm_sq=ref_norm_sq, nll=nll)


def _per_example_nll(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Each row's mean next-token NLL over its labelled tokens (``sft_loss`` of that row alone)."""
    logits, labels = labelled_logits(model, batch)
    token_nll = F.cross_entropy(logits.float(), labels, reduction="none")
    mask = batch.labels[:, 1:] != IGNORE_INDEX
    rows = mask.nonzero()[:, 0]
    totals = torch.zeros(len(mask), dtype=token_nll.dtype, device=token_nll.device)
    totals = totals.index_add(0, rows, token_nll)
    return totals / mask.sum(dim=1).clamp_min(1)


@torch.no_grad()
def _reply_nll(
    reference_model: PreTrainedModel, examples: Sequence[EncodedExample], scoring: _Scoring
) -> torch.Tensor:
    nll = torch.zeros(len(examples), dtype=torch.float64)
    reference_model.eval()
    for rows, batch in scoring.batches(examples):
        with scoring.autocast():
            nll[torch.tensor(rows)] = _per_example_nll(reference_model, batch).double().cpu()
    return nll


def _sketch_linears(model: PreTrainedModel, n_layers: int) -> list[torch.nn.Linear]:
    """The nn.Linear modules of the last ``n_layers`` decoder layers (``...layers.<i>....``)."""
    by_layer: dict[int, list[torch.nn.Linear]] = {}
    for name, module in model.named_modules():
        match = re.search(r"\.layers\.(\d+)\.", name)
        if match and isinstance(module, torch.nn.Linear):
            by_layer.setdefault(int(match.group(1)), []).append(module)
    if not by_layer:
        raise ValueError("no decoder layers named '...layers.<i>...' with linear maps")
    top = sorted(by_layer)[-n_layers:]
    return [module for layer in top for module in by_layer[layer]]


def _stratified_sample(
    candidates: Sequence[Candidate], limit: int, rng: random.Random
) -> list[Candidate]:
    """Up to ``limit`` candidates, round-robin over categories (all of them when limit is 0)."""
    if limit <= 0 or limit >= len(candidates):
        return list(candidates)
    by_category: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_category.setdefault(candidate.category, []).append(candidate)
    for group in by_category.values():
        rng.shuffle(group)
    chosen: list[Candidate] = []
    while len(chosen) < limit:
        for category in sorted(by_category):
            if by_category[category] and len(chosen) < limit:
                chosen.append(by_category[category].pop())
    return chosen
