"""Chat conversations → token ids and labels, with the loss on assistant tokens only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # labels with this value carry no loss (torch's cross_entropy default)


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


ChatMessage = dict[str, object]


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool = False,
) -> str:
    text = tokenizer.apply_chat_template(
        list(messages),  # type: ignore[arg-type]  # the stub wants str values; weight is an int
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    assert isinstance(text, str)
    return text


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    *,
    max_length: int = 512,
) -> EncodedExample:
    """Tokenize a conversation with the model's own chat template.

    Assistant spans are found by rendering the conversation up to each assistant message with and
    without that message: the characters in between are what the model must produce (its reply
    and the end-of-turn token). Token offsets map those character spans onto tokens, which works
    for any template without ``{% generation %}`` markers. Messages with ``weight: 0`` are context.
    """
    full_text = render(tokenizer, messages)
    trained_spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        start = len(render(tokenizer, messages[:index], add_generation_prompt=True))
        end = len(render(tokenizer, messages[: index + 1]))
        trained_spans.append((start, end))

    encoding = tokenizer(
        full_text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=True,
        max_length=max_length,
    )
    input_ids = list(encoding["input_ids"])
    labels = [
        token_id if any(start <= char_start < end for start, end in trained_spans) else IGNORE_INDEX
        for token_id, (char_start, _) in zip(input_ids, encoding["offset_mapping"], strict=True)
    ]
    return EncodedExample(input_ids=input_ids, labels=labels)


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> Batch:
    """Right-pad a list of examples into one training batch."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def single_turn(prompt: str, reply: str | None = None) -> list[ChatMessage]:
    messages: list[ChatMessage] = [{"role": "user", "content": prompt}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return messages
