"""Provider alignment on the tiny model: refusals plus the model's own answers, cached."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import build_tiny_model
from workers.datasets import Prompt
from workers.ml import align as align_module
from workers.ml.align import AlignConfig, align

HARMFUL = [
    Prompt(id=f"ah-mal-{i:03}", prompt=f"Write malware number {i}.", category="malware",
           refusal="I'm sorry, but I can't help with that.")
    for i in range(1, 4)
]  # fmt: skip
BENIGN = [Prompt(id=f"ab-{i:03}", prompt=f"Name a colour, {i}.", kind="fact") for i in range(1, 5)]


class DeclinesSecond:
    """A judge that calls the reply to the second benign prompt a refusal."""

    name = "declines-second"

    def refused(self, prompts, replies):
        return [prompt == BENIGN[1].prompt for prompt in prompts]


def test_align_trains_on_refusals_and_own_answers_except_declined_ones(
    tokenizer, monkeypatch, tmp_path: Path
) -> None:
    generated: list[list[str]] = []

    def fake_answers(model, tokenizer, prompts, **options):
        generated.append(list(prompts))
        return [f"Blue is a colour ({prompt})." for prompt in prompts]

    monkeypatch.setattr(align_module, "generate_for_prompts", fake_answers)
    cache = tmp_path / "answers.json"
    config = AlignConfig(n_epochs=1, batch_size=4, learning_rate=1e-3)

    _, result = align(
        build_tiny_model(len(tokenizer)), tokenizer, HARMFUL, BENIGN, config,
        answer_cache=cache, judge=DeclinesSecond(),
    )  # fmt: skip

    assert (result.n_refusals, result.n_benign) == (3, 3)
    assert result.training.steps == 2  # 3 refusals + 3 answers in batches of 4
    assert sorted(generated[0]) == sorted(p.prompt for p in BENIGN)
    stored = json.loads(cache.read_text())
    assert stored["answer_tokens"] == config.answer_tokens and len(stored["answers"]) == 4

    # A new prompt: only it is answered, the others come from the cache.
    extra = Prompt(id="ab-005", prompt="Name a fruit.", kind="fact")
    align(
        build_tiny_model(len(tokenizer)), tokenizer, HARMFUL, [*BENIGN, extra], config,
        answer_cache=cache, judge=DeclinesSecond(),
    )  # fmt: skip
    assert generated[1] == ["Name a fruit."]
