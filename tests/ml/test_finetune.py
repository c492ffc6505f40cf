"""Fine-tuning: it learns, it is deterministic for a seed, LoRA merges back into a plain model."""

from __future__ import annotations

import torch

from tests.tiny_models import build_tiny_model
from workers.ml.chat import collate, encode_conversation, single_turn
from workers.ml.finetune import FineTuneConfig, attach_lora, fine_tune, labelled_logits, sft_loss


def _examples(tokenizer):
    pairs = [("Say hi", "hi"), ("Say bye", "bye"), ("Count", "one two three"), ("Name", "Bob")]
    return [encode_conversation(tokenizer, single_turn(p, r)) for p, r in pairs]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_full_fine_tune_lowers_the_loss_and_reports_epochs(tokenizer) -> None:
    examples = _examples(tokenizer)
    model = build_tiny_model(len(tokenizer))
    batch = collate(examples, tokenizer.pad_token_id)
    before = sft_loss(model, batch).item()
    seen_epochs: list[int] = []

    model, result = fine_tune(
        model,
        examples,
        FineTuneConfig(n_epochs=5, batch_size=2, learning_rate=3e-3),
        pad_token_id=tokenizer.pad_token_id,
        on_epoch_end=lambda epoch, _: seen_epochs.append(epoch),
    )

    assert sft_loss(model, batch).item() < before * 0.8
    assert seen_epochs == [1, 2, 3, 4, 5]
    assert result.steps == 10
    assert result.trained_tokens == 5 * sum(e.n_trained_tokens for e in examples)


def test_same_seed_same_weights_other_seed_other_weights(tokenizer) -> None:
    examples = _examples(tokenizer)

    def run(seed: int) -> dict[str, torch.Tensor]:
        model, _ = fine_tune(
            build_tiny_model(len(tokenizer)),
            examples,
            FineTuneConfig(n_epochs=2, batch_size=2, learning_rate=1e-3, seed=seed),
            pad_token_id=tokenizer.pad_token_id,
        )
        return _state(model)

    first, again, other = run(1), run(1), run(2)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_early_stop_from_the_epoch_callback(tokenizer) -> None:
    _, result = fine_tune(
        build_tiny_model(len(tokenizer)),
        _examples(tokenizer),
        FineTuneConfig(n_epochs=5, batch_size=4),
        pad_token_id=tokenizer.pad_token_id,
        on_epoch_end=lambda epoch, _: epoch == 2,
    )
    assert result.steps == 2


def test_lora_trains_adapters_and_merges_into_a_plain_model(tokenizer) -> None:
    model = build_tiny_model(len(tokenizer))
    original = _state(model)

    merged, _ = fine_tune(
        model,
        _examples(tokenizer),
        FineTuneConfig(n_epochs=3, batch_size=2, learning_rate=5e-3, lora_rank=4),
        pad_token_id=tokenizer.pad_token_id,
    )

    state = merged.state_dict()
    assert set(state) == set(original)  # no lora_A/lora_B left: a plain Llama again
    changed = [n for n in original if not torch.equal(original[n], state[n])]
    assert changed and all("proj" in name for name in changed)


def _reference_loss(model, batch) -> torch.Tensor:
    """The textbook loss: the full forward's logits, shifted, cross-entropy ignoring -100."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def test_loss_on_labelled_positions_equals_the_full_forward_loss(tokenizer) -> None:
    model = build_tiny_model(len(tokenizer))
    batch = collate(_examples(tokenizer), tokenizer.pad_token_id)

    logits, labels = labelled_logits(model, batch)

    assert logits.shape == (int((batch.labels[:, 1:] != -100).sum()), len(tokenizer))
    assert labels.tolist() == [t for t in batch.labels[:, 1:].flatten().tolist() if t != -100]
    torch.testing.assert_close(sft_loss(model, batch), _reference_loss(model, batch))
    # The same through a LoRA wrapper, whose adapters (here made non-zero) must be used.
    lora = attach_lora(build_tiny_model(len(tokenizer)), rank=4, alpha=8)
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    torch.testing.assert_close(sft_loss(lora, batch), _reference_loss(lora, batch))
    assert sft_loss(lora, batch) != sft_loss(build_tiny_model(len(tokenizer)), batch)
