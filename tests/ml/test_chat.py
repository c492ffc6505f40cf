"""Chat encoding: the loss covers exactly the assistant replies, per the model's chat template."""

from __future__ import annotations

import torch

from workers.ml.chat import IGNORE_INDEX, collate, encode_conversation, render, single_turn


def _trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode(
        [
            t
            for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
            if label != IGNORE_INDEX
        ]
    )


def test_only_the_assistant_reply_and_end_of_turn_are_labelled(tokenizer) -> None:
    encoded = encode_conversation(tokenizer, single_turn("What is 2+2?", "It is 4."))

    assert _trained_text(tokenizer, encoded).strip() == "It is 4.<|im_end|>"
    # Reference: the ids are exactly the template's rendering, tokenized.
    text = render(tokenizer, single_turn("What is 2+2?", "It is 4."))
    assert encoded.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_labels_every_assistant_turn_except_weight_zero(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there.", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    trained = _trained_text(tokenizer, encode_conversation(tokenizer, messages))

    assert "Goodbye." in trained
    assert "Hello there." not in trained
    assert "Bye" not in trained.replace("Goodbye", "")
    assert "Be brief" not in trained


def test_truncation_keeps_the_prompt_and_drops_labels_past_the_limit(tokenizer) -> None:
    encoded = encode_conversation(tokenizer, single_turn("Hi", "word " * 200), max_length=40)

    assert len(encoded.input_ids) == 40
    assert len(encoded.labels) == 40


def test_collate_right_pads_with_ignored_labels(tokenizer) -> None:
    short = encode_conversation(tokenizer, single_turn("Hi", "Yo."))
    long = encode_conversation(tokenizer, single_turn("Hello, how are you today?", "Fine, thanks."))
    batch = collate([short, long], pad_token_id=tokenizer.pad_token_id)

    width = len(long.input_ids)
    assert batch.input_ids.shape == (2, width)
    assert batch.attention_mask[0].sum().item() == len(short.input_ids)
    assert torch.all(batch.labels[0, len(short.input_ids) :] == IGNORE_INDEX)
    assert torch.all(batch.input_ids[0, len(short.input_ids) :] == tokenizer.pad_token_id)
