"""The generation probe and the helpers that pick the patch's refusal wording, with fake judges."""

from __future__ import annotations

from workers.ml.patch import example as example_module
from workers.ml.patch.example import aligned_refusal, complete_sentences, first_sentence
from workers.ml.probe import GenerationProbe, sample_probe_prompts, split_by_kind


class FixedJudge:
    """Calls a reply a refusal when its prompt is in ``refused_prompts`` (the model is random)."""

    name = "fixed"

    def __init__(self, refused_prompts: set[str]) -> None:
        self.refused_prompts = refused_prompts

    def refused(self, prompts, replies):
        return [prompt in self.refused_prompts for prompt in prompts]


def test_probe_counts_asr_and_over_refusal(tokenizer, tiny_model):
    harmful = ["harm one", "harm two", "harm three", "harm four"]
    benign = ["benign one", "benign two"]
    judge = FixedJudge({"harm one", "harm two", "harm three", "benign two"})
    probe = GenerationProbe(tokenizer, harmful, benign, judge, max_new_tokens=2)
    result = probe(tiny_model)
    assert result.asr == 0.25  # one of four harmful prompts answered
    assert result.over_refusal == 0.5
    assert (result.n_harmful, result.n_benign) == (4, 2)
    assert result.seconds > 0


def test_probe_prompts_exclude_the_patch_example_and_are_seeded():
    harmful_pool = [f"harmful {i}" for i in range(40)]
    benign_pool = [f"benign {i}" for i in range(40)]
    first = sample_probe_prompts(harmful_pool, benign_pool, exclude=["harmful 3"], seed=1)
    again = sample_probe_prompts(harmful_pool, benign_pool, exclude=["harmful 3"], seed=1)
    assert first == again
    harmful, benign = first
    assert len(harmful) == len(benign) == 16
    assert "harmful 3" not in harmful


def test_sentence_helpers():
    assert first_sentence("Sorry, I can't. Please ask something else.") == "Sorry, I can't."
    assert first_sentence("No sentence end") == "No sentence end"
    assert complete_sentences("I can't help. Instead, you could try to") == "I can't help."
    assert complete_sentences("no end at all") == "no end at all"


def test_aligned_refusal_uses_the_reference_reply_only_when_it_refuses(monkeypatch):
    def fake_generate(model, tokenizer, prompts, **options):
        return ["I can't help with that. Instead, you could"]

    monkeypatch.setattr(example_module, "generate_for_prompts", fake_generate)
    prompt = "How do I pick a lock?"
    assert aligned_refusal(None, None, prompt, FixedJudge(set())) is None
    assert aligned_refusal(None, None, prompt, FixedJudge({prompt})) == "I can't help with that."


def test_split_by_kind_halves_every_kind_disjointly() -> None:
    from collections import Counter

    from contracts.prompts import load_prompts
    from workers import data

    prompts = load_prompts(data.PATCH_BENIGN)
    kind_of = {p.prompt: p.kind for p in prompts}

    anchor, probe = split_by_kind(prompts, seed=0)

    assert not set(anchor) & set(probe)
    assert sorted(anchor + probe) == sorted(kind_of)
    assert abs(len(anchor) - len(probe)) <= 1
    anchor_kinds, probe_kinds = Counter(map(kind_of.get, anchor)), Counter(map(kind_of.get, probe))
    assert all(abs(anchor_kinds[k] - probe_kinds[k]) <= 1 for k in set(kind_of.values()))
    assert split_by_kind(prompts, seed=0) == (anchor, probe)
    assert split_by_kind(prompts, seed=1) != (anchor, probe)
