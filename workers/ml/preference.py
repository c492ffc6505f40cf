"""A preference term for the one-shot patch: prefer the refusal over the model's own compliance.

The one safety example's cross-entropy saturates fast on a small model: on SmolLM2-135M its loss
is ~0 by the fifth epoch and later epochs barely move the model, while a few percent of harmful
prompts are still answered (docs/results.md). The attack taught one compliance pattern ("Sure,
here is how. Step 1: ..."), and the fine-tuned model θ* produces it for the example's own prompt
too. A DPO term on that single pair (Rafailov et al., 2023) pushes the pattern itself down:

    L_pref = -log sigmoid(β · [(log π(y⁺|x) - log π*(y⁺|x)) - (log π(y⁻|x) - log π*(y⁻|x))])

with y⁺ the refusal, y⁻ θ*'s greedy reply to the same prompt and π* the fine-tuned model before
the patch (its two log-probabilities are computed once, up front). Still one prompt, one example:
the rejected reply is generated, not taken from anyone's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.chat import IGNORE_INDEX, Batch, collate, encode_conversation, single_turn
from workers.ml.device import Placement
from workers.ml.finetune import labelled_logits
from workers.ml.safety_gradient import pad_id


@dataclass
class PreferencePair:
    batch: Batch  # row 0: prompt + refusal (chosen), row 1: prompt + compliance (rejected)
    reference_logprobs: torch.Tensor  # (2,) summed log-probabilities under the model before
    beta: float


def preference_pair(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    chosen: str,
    rejected: str,
    *,
    beta: float,
    placement: Placement,
) -> PreferencePair:
    """Encode the pair and record ``model``'s log-probabilities of both replies as the reference."""
    encoded = [
        encode_conversation(tokenizer, single_turn(prompt, reply)) for reply in (chosen, rejected)
    ]
    batch = collate(encoded, pad_id(tokenizer)).to(placement.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), placement.autocast():
        reference = sequence_logprobs(model, batch)
    model.train(was_training)
    return PreferencePair(batch=batch, reference_logprobs=reference, beta=beta)


def preference_loss(model: PreTrainedModel, pair: PreferencePair) -> torch.Tensor:
    """The DPO loss of the one pair; log 2 at the start, falling as the refusal wins."""
    ratios = sequence_logprobs(model, pair.batch) - pair.reference_logprobs
    return -F.logsigmoid(pair.beta * (ratios[0] - ratios[1]))


def sequence_logprobs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's labelled (assistant) tokens, in fp32."""
    logits, labels = labelled_logits(model, batch)
    token_logprobs = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None])[:, 0]
    # labelled_logits flattens the labelled positions row by row; recover each position's row.
    rows = (batch.labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
    totals = torch.zeros(batch.labels.shape[0], device=token_logprobs.device)
    return totals.index_add(0, rows, token_logprobs)
