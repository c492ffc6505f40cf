"""The one safety example a patch trains on: a pool prompt with the aligned model's own refusal."""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.chat import IGNORE_INDEX, EncodedExample, encode_conversation, single_turn
from workers.ml.device import Placement
from workers.ml.generation import generate_for_prompts
from workers.ml.judges import Judge
from workers.ml.patch.selection import Candidate


@dataclass(frozen=True)
class SafetyExample:
    prompt: str
    reply: str
    id: str = ""
    category: str = ""


def safety_example(
    candidate: Candidate,
    *,
    base_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    judge: Judge,
    placement: Placement,
) -> SafetyExample:
    """The candidate's prompt with the first sentence of the aligned model's own refusal ("I'm
    sorry, but I can't help with that."), or of the pool's refusal when θ0 does not refuse.

    θ0's wording moves the patched model back toward θ0's distribution, and a general first
    sentence trains faster than a category-specific tail (docs/results.md).
    """
    reply = first_sentence(
        aligned_refusal(base_model, tokenizer, candidate.prompt, judge, placement=placement)
        or candidate.refusal
    )
    return SafetyExample(
        prompt=candidate.prompt, reply=reply, id=candidate.id, category=candidate.category
    )


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: SafetyExample, *, first_sentence_only: bool = False
) -> EncodedExample:
    """The example as a chat; optionally the loss only on the reply's first sentence.

    The rest of the reply stays in the sequence as unlabelled context, so the model is not taught
    to end its turn after one sentence. The first sentence's token count is that of the sentence
    tokenized alone, which matches the reply's leading tokens for BPE tokenizers.
    """
    encoded = encode_conversation(tokenizer, single_turn(example.prompt, example.reply))
    if not first_sentence_only:
        return encoded
    keep = len(tokenizer(first_sentence(example.reply), add_special_tokens=False)["input_ids"])
    labels, kept = [], 0
    for label in encoded.labels:
        if label != IGNORE_INDEX and kept < keep:
            kept += 1
            labels.append(label)
        else:
            labels.append(IGNORE_INDEX)
    return EncodedExample(input_ids=encoded.input_ids, labels=labels)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def complete_sentences(text: str) -> str:
    """Drop a trailing fragment cut off by a token limit (no sentence end: keep the text)."""
    text = text.strip()
    cut = max(text.rfind(mark) for mark in ".!?")
    return text[: cut + 1] if cut > 0 else text


def aligned_refusal(
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    judge: Judge,
    *,
    max_new_tokens: int = 48,
    placement: Placement | None = None,
) -> str | None:
    """The aligned model's own refusal of ``prompt``, or None when it does not refuse.

    Training on the wording θ0 itself produces moves the patched model back toward θ0's
    distribution rather than toward a new phrasing, and converges faster (docs/method.md).
    """
    reply, refused = judged_reply(
        reference_model, tokenizer, prompt, judge, max_new_tokens, placement
    )
    return reply if refused and reply else None


def judged_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    judge: Judge,
    max_new_tokens: int = 48,
    placement: Placement | None = None,
) -> tuple[str, bool]:
    """``model``'s greedy reply (complete sentences only) and whether ``judge`` calls it a
    refusal."""
    [reply] = generate_for_prompts(
        model, tokenizer, [prompt], max_new_tokens=max_new_tokens, placement=placement
    )
    reply = complete_sentences(reply)
    [refused] = judge.refused([prompt], [reply])
    return reply, refused
