"""Batched greedy generation with left padding and the KV cache.

The loop is ours rather than ``model.generate``'s: a row that has ended its turn leaves the batch
(its KV cache rows are dropped), so the steps after it only compute the rows still writing. In an
evaluation most refusals end within a dozen tokens while answers run to the limit, and generate()
kept computing every finished row to the end.

Under bf16 autocast the weights are cast to bf16 once per call, not once per matmul: autocast
casts fp32 weights at every use, which was a fifth of decoding's time on a CPU. Decoding then
runs in plain bf16 (the residual stream too), so its greedy tokens differ from autocast's on some
prompts; ``DECODER`` names the decoder so cached readings made with another are not reused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.chat import ChatMessage, render, single_turn
from workers.ml.device import Placement, select_placement

OnBatch = Callable[[int, int], None]  # (prompts done, prompts total)

DECODER = "greedy-v2"  # v2: finished rows leave the batch; bf16 weights under bf16 autocast

# Prompts decoded together. Greedy decoding of a small model is bound by per-step overhead, not
# by arithmetic, so bigger batches are nearly free: on SmolLM2-135M (one CPU core, 64 prompts x
# 32 tokens) a batch of 64 took 24-31 s, 32 took 38 s and 16 took 40-55 s.
GENERATION_BATCH = 64


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    **options: object,
) -> list[str]:
    """Greedy replies to each conversation (which ends with a user turn); ``options`` are
    ``generate_tokens``'."""
    return [
        str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
        for tokens in generate_tokens(
            model,
            tokenizer,
            conversations,
            **options,  # type: ignore[arg-type]
        )
    ]


def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = GENERATION_BATCH,
    placement: Placement | None = None,
    on_batch: OnBatch | None = None,
) -> list[list[int]]:
    """Each conversation's greedy new tokens, its end-of-turn token included where it stopped.

    Prompts are sorted by length so each batch pads little; left padding keeps every prompt's
    last token at the same position, which batched decoding with a KV cache needs.
    """
    placement = placement or select_placement()
    texts = [render(tokenizer, messages, add_generation_prompt=True) for messages in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    generated: list[list[int]] = [[] for _ in texts]
    end_of_turn = _end_of_turn_ids(tokenizer)

    tokenizer.padding_side = "left"
    model.eval()
    # The weights are swapped outside inference mode: bf16 copies made inside it are inference
    # tensors, and decoding on those ran at half the speed (measured on a CPU).
    with _weights_in(model, placement.autocast_dtype), torch.inference_mode():
        for first in range(0, len(order), batch_size):
            indices = order[first : first + batch_size]
            encoded = tokenizer(
                [texts[i] for i in indices],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(placement.device)
            with placement.autocast():
                new_tokens = greedy_decode(
                    model,
                    encoded["input_ids"],
                    encoded["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    stop_ids=end_of_turn,
                )
            for index, tokens in zip(indices, new_tokens, strict=True):
                generated[index] = tokens
            if on_batch is not None:
                on_batch(min(first + batch_size, len(order)), len(order))
    return generated


@contextlib.contextmanager
def _weights_in(model: PreTrainedModel, dtype: torch.dtype | None) -> Iterator[None]:
    """Hold ``model``'s fp32 parameters in ``dtype`` for the block, then put the very same fp32
    tensors back (nothing is rounded; no fp32 copy is made). A no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dtype == torch.float32:
                    originals.append((parameter, parameter.data))
                    parameter.data = parameter.data.to(dtype)
        yield
    finally:
        for parameter, data in originals:
            parameter.data = data


def greedy_decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
) -> list[list[int]]:
    """Greedy continuations of a left-padded batch: each row's new tokens, up to and including
    its first stop token (at most ``max_new_tokens``)."""
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    if max_new_tokens <= 0:
        return generated
    device = input_ids.device
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    # Left padding: a row's positions count its real tokens only, as in generate().
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits
    rows = torch.arange(input_ids.shape[0], device=device)  # each live row's place in the batch
    next_position = positions[:, -1] + 1
    for step in range(max_new_tokens):
        tokens = logits[:, -1].argmax(dim=-1)
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            generated[row].append(token)
        finished = torch.isin(tokens, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            live = (~finished).nonzero().squeeze(1)
            rows, tokens = rows[live], tokens[live]
            attention_mask, next_position = attention_mask[live], next_position[live]
            for layer in cache.layers:  # a DynamicCache's layers (the other kinds lack it)
                layer.batch_select_indices(live)  # type: ignore[union-attr]
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1
        )
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            cache=cache,
            use_cache=True,
        ).logits
        next_position = next_position + 1
    return generated


def generate_for_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    **options: object,
) -> list[str]:
    """Greedy replies to single-turn user prompts."""
    return generate_replies(
        model,
        tokenizer,
        [single_turn(prompt) for prompt in prompts],
        **options,
    )


def _end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: the EOS token and, for ChatML, ``<|im_end|>``."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)
