"""Anchors: keep a patched model's next-token distributions close to a teacher's on a few prompts.

The paper frames example selection as bi-level optimisation whose upper level wants the patched
model close to the aligned model θ0 on harmful prompts and close to the fine-tuned model θ* on task
data. An anchor turns the "close to" part into a training term for the patch itself:

    loss = CE(one safety example) + Σ_a weight_a · KL(teacher_a ‖ model) over anchor a's tokens

- benign anchor: unlabeled benign prompts, continued by θ0's own greedy reply; teacher θ0. It
  pushes back on the patch's collateral refusal of benign prompts (the refusal decision sits at the
  first reply tokens, which these positions cover).
- task anchor: the customer's task conversations; teacher θ* (the model before the patch). It keeps
  task outputs where the fine-tune put them.

Anchors carry no refusals and no labels of ours: the one safety example stays the only supervised
safety signal. Teacher log-probabilities are computed once, up front (the teacher can be freed),
and stored only at the positions the KL reads: (positions x vocab) floats, 25 MB for 8 prompts x
16 tokens with a 49k vocabulary.

A step's anchor term runs in micro-batches, each backpropagated before the next is formed
(``anchor_backward``): the gradient is the same as one pass over all rows, while only one micro-
batch's activations are alive at a time. A step may also read a seeded sample of an anchor's rows
instead of all of them, an unbiased estimate of the same term at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.chat import (
    IGNORE_INDEX,
    Batch,
    ChatMessage,
    collate,
    encode_conversation,
    single_turn,
)
from workers.ml.device import Placement, select_placement
from workers.ml.finetune import labelled_logits
from workers.ml.generation import generate_for_prompts
from workers.ml.judges import Judge
from workers.ml.patch.safety_gradient import pad_id


@dataclass
class Anchor:
    name: str
    batch: Batch  # right-padded conversations; labels mark the positions the KL is taken on
    teacher_logprobs: torch.Tensor  # (n_positions, vocab), fp32, in row-major position order
    weight: float = 1.0
    # Where each row's positions start in ``teacher_logprobs`` (n_rows + 1 offsets).
    row_offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        per_row = (self.batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        self.row_offsets = [0]
        for count in per_row:
            self.row_offsets.append(self.row_offsets[-1] + int(count))
        if self.row_offsets[-1] != self.teacher_logprobs.shape[0]:
            raise ValueError(f"anchor {self.name!r}: teacher positions do not match its labels")

    @property
    def n_rows(self) -> int:
        return len(self.row_offsets) - 1

    def rows(self, rows: Sequence[int]) -> tuple[Batch, torch.Tensor]:
        """The sub-batch of ``rows`` (trimmed to its longest row) and their teacher positions."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.batch.input_ids.device)
        width = int(self.batch.attention_mask[index].sum(dim=1).max())
        batch = Batch(
            self.batch.input_ids[index, :width],
            self.batch.attention_mask[index, :width],
            self.batch.labels[index, :width],
        )
        teacher = torch.cat(
            [self.teacher_logprobs[self.row_offsets[r] : self.row_offsets[r + 1]] for r in rows]
        )
        return batch, teacher


def build_anchor(
    name: str,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    *,
    weight: float = 1.0,
    placement: Placement | None = None,
) -> Anchor:
    """Record ``teacher``'s distributions on the assistant tokens of ``conversations``."""
    placement = placement or select_placement()
    examples = [encode_conversation(tokenizer, conversation) for conversation in conversations]
    examples = [example for example in examples if example.n_trained_tokens > 0]
    if not examples:
        raise ValueError(f"anchor {name!r}: no conversation has an assistant token")
    batch = collate(examples, pad_id(tokenizer)).to(placement.device)
    teacher.eval()
    with torch.no_grad(), placement.autocast():
        teacher_logprobs = _position_logprobs(teacher, batch)
    return Anchor(name=name, batch=batch, teacher_logprobs=teacher_logprobs, weight=weight)


def benign_anchor(
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n_tokens: int = 16,
    weight: float = 1.0,
    placement: Placement | None = None,
) -> Anchor:
    """Benign prompts continued by the aligned model θ0 itself; the KL is taken against θ0."""
    replies = generate_for_prompts(
        reference_model, tokenizer, prompts, max_new_tokens=n_tokens, placement=placement
    )
    conversations = [
        single_turn(prompt, reply) for prompt, reply in zip(prompts, replies, strict=True)
    ]
    return build_anchor(
        "benign", reference_model, tokenizer, conversations, weight=weight, placement=placement
    )


def task_anchor(
    finetuned_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    *,
    weight: float = 1.0,
    placement: Placement | None = None,
) -> Anchor:
    """The customer's conversations (pass ``benign_conversations``' output); the KL is taken
    against the fine-tuned model θ*."""
    return build_anchor(
        "task", finetuned_model, tokenizer, conversations, weight=weight, placement=placement
    )


def benign_conversations(
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    judge: Judge,
    *,
    placement: Placement | None = None,
) -> list[list[ChatMessage]]:
    """The conversations whose last user prompt the aligned model θ0 does not refuse.

    Customer data may hold harmful requests with compliant replies; anchoring θ* on those, or
    protecting their task loss when choosing the example, would protect the attack. θ0's own
    refusal is the test of what counts as harmful.
    """
    prompts = [_last_user_prompt(conversation) for conversation in conversations]
    replies = generate_for_prompts(
        reference_model, tokenizer, prompts, max_new_tokens=24, placement=placement
    )
    refused = judge.refused(prompts, replies)
    return [list(c) for c, flag in zip(conversations, refused, strict=True) if not flag]


def anchor_kl(model: PreTrainedModel, anchor: Anchor) -> torch.Tensor:
    """Mean over anchor positions of KL(teacher ‖ model), differentiable w.r.t. ``model``."""
    student_logprobs = _position_logprobs(model, anchor.batch)
    # kl_div(input=log q, target=log p, log_target=True) sums p · (log p - log q).
    return F.kl_div(
        student_logprobs, anchor.teacher_logprobs, log_target=True, reduction="batchmean"
    )


def anchor_backward(
    model: PreTrainedModel,
    anchor: Anchor,
    *,
    rows: Sequence[int] | None = None,
    micro_batch: int = 8,
    placement: Placement | None = None,
) -> float:
    """Accumulate the gradient of ``anchor.weight`` x the mean KL over the positions of ``rows``
    (all rows by default), ``micro_batch`` rows per forward and backward; returns the term."""
    placement = placement or select_placement()
    chosen = list(range(anchor.n_rows)) if rows is None else list(rows)
    n_positions = sum(anchor.row_offsets[r + 1] - anchor.row_offsets[r] for r in chosen)
    total = 0.0
    for first in range(0, len(chosen), micro_batch):
        batch, teacher = anchor.rows(chosen[first : first + micro_batch])
        with placement.autocast():
            student = _position_logprobs(model, batch)
        kl_sum = F.kl_div(student, teacher, log_target=True, reduction="sum")
        term = anchor.weight * kl_sum / n_positions
        term.backward()
        total += float(term.detach())
    return total


def _position_logprobs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    # Log-softmax in fp32: bf16 logits would put the KL's small differences below the format's
    # resolution.
    logits, _ = labelled_logits(model, batch)
    return F.log_softmax(logits.float(), dim=-1)


def _last_user_prompt(conversation: Sequence[ChatMessage]) -> str:
    for message in reversed(conversation):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""
