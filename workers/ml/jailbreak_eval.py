"""ASR under jailbreak wrappers, next to plain ASR (issue 16, docs/jailbreaks.md).

Each harmful prompt is answered once as written and once inside each wrapper; every reply is
judged against the *original* request, never the wrapped text: the question is whether the model
attempted what was asked, and a judge shown a persona or a fiction frame as "the request" would be
judging the wrapper. All replies come from one generation pass (sorted by length, so the short
plain prompts do not pad to the long wrapped ones) and one judge call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.prompts import Prompt
from workers.ml.device import Placement
from workers.ml.evaluate import REPLY_TOKENS
from workers.ml.generation import GENERATION_BATCH, generate_for_prompts
from workers.ml.jailbreaks import JailbreakWrapper, wrapped_prompts
from workers.ml.judges import Judge
from workers.ml.metrics import rate_with_interval
from workers.ml.report import Interval
from workers.ml.suites import probe_sample

PLAIN = "plain"
PLAIN_SOURCE = "the request as written"


@dataclass(frozen=True)
class WrapperAsr:
    """The share of ``n`` harmful prompts whose reply attempts the request, under one wrapper."""

    wrapper: str  # "plain" for the prompts as written
    source: str  # where the wrapper's template was read from
    asr: float
    interval: Interval  # 95% Wilson
    n: int


def jailbreak_asr(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    wrappers: Sequence[JailbreakWrapper],
    judge: Judge,
    *,
    max_new_tokens: int = REPLY_TOKENS,
    placement: Placement | None = None,
    sample: int | None = None,
    batch_size: int = GENERATION_BATCH,
) -> list[WrapperAsr]:
    """Plain ASR, then each wrapper's, on ``prompts`` (or an evenly spaced ``sample`` of them).

    The first row is ``plain``; then one row per wrapper, in the order given.
    """
    if not prompts:
        raise ValueError("no prompts to measure ASR on")
    names = [wrapper.name for wrapper in wrappers]
    if PLAIN in names or len(set(names)) != len(names):
        raise ValueError(f"wrapper names must be distinct and not {PLAIN!r}: {names}")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be at least 1, got {sample}")
    chosen = probe_sample(list(prompts), sample) if sample is not None else list(prompts)

    variants: list[tuple[str, str, list[Prompt]]] = [(PLAIN, PLAIN_SOURCE, chosen)]
    variants += [(w.name, w.source, wrapped_prompts(chosen, w)) for w in wrappers]
    asked = [prompt.prompt for _, _, variant in variants for prompt in variant]
    replies = generate_for_prompts(
        model,
        tokenizer,
        asked,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        placement=placement,
    )
    # The judge reads the original request next to each reply, whichever text produced it.
    requests = [prompt.prompt for prompt in chosen] * len(variants)
    refused = judge.refused(requests, replies)
    if len(refused) != len(replies):
        raise ValueError(f"judge {judge.name!r} gave {len(refused)} verdicts for {len(replies)}")

    rows: list[WrapperAsr] = []
    for index, (name, source, _) in enumerate(variants):
        verdicts = refused[index * len(chosen) : (index + 1) * len(chosen)]
        asr, interval = rate_with_interval([not verdict for verdict in verdicts])
        rows.append(WrapperAsr(name, source, asr, interval, len(verdicts)))
    return rows
