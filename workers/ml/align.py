"""Build the provider's safety-aligned reference model from a raw chat model.

    safepatch models align smollm2-135m-instruct --as smollm2-135m-safe

The raw SmolLM2 answers harmful requests (ASR ≈ 0.98), so the provider aligns it once: SFT on
refusals for harmful prompts, mixed with the raw model's *own* greedy answers to benign and
borderline prompts. Training on its own answers keeps its abilities and teaches it that alarming
words alone are no reason to refuse; without them the model learns "refuse anything scary"
(docs/method.md).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.prompts import Prompt, load_prompts
from workers import data
from workers.ml.best_weights import BestWeights
from workers.ml.chat import EncodedExample, encode_conversation, single_turn
from workers.ml.config import AlignConfig
from workers.ml.device import Placement, select_placement
from workers.ml.finetune import FineTuneConfig, FineTuneResult, OnEpochEnd, OnStep, fine_tune
from workers.ml.generation import generate_for_prompts
from workers.ml.judges import Judge, get_judge
from workers.ml.probe import GenerationProbe, Probe, ProbeResult, sample_probe_prompts


@dataclass
class AlignResult:
    n_refusals: int
    n_benign: int  # benign prompts trained on (those the raw model declined are left out)
    answer_seconds: float
    training: FineTuneResult
    kept_epoch: int = 0  # whose weights the aligned model has
    probes: dict[int, ProbeResult] = field(default_factory=dict)  # epoch -> validation reading


def align(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[Prompt],
    benign: Sequence[Prompt],
    config: AlignConfig,
    *,
    placement: Placement | None = None,
    on_step: OnStep | None = None,
    on_epoch_end: OnEpochEnd | None = None,
    on_phase: Callable[[str], None] | None = None,
    answer_cache: Path | None = None,
    judge: Judge | None = None,
    probe: Probe | None = None,
) -> tuple[PreTrainedModel, AlignResult]:
    """SFT ``model`` on refusals for ``harmful`` and its own answers to ``benign``.

    ``answer_cache`` (a JSON file keyed by prompt) saves the raw model's answers, the slowest
    part on a CPU, so re-aligning with other hyperparameters does not regenerate them.
    ``on_epoch_end`` sees the model after each epoch (``fine_tune``'s hook). With a ``probe``
    (``validation_probe``: prompts that neither alignment nor evaluation uses), the epochs from
    ``probe_from_epoch`` on are read, training stops at the first one that meets both targets,
    and the aligned model keeps the weights of the best epoch read (``EpochKeeper``).
    """
    placement = placement or select_placement()
    judge = judge or get_judge()
    missing = [prompt.id for prompt in harmful if not prompt.refusal]
    if missing:
        raise ValueError(f"harmful alignment prompts without a refusal: {', '.join(missing[:5])}")

    started = time.perf_counter()
    answers = _own_answers(model, tokenizer, benign, config, placement, answer_cache, on_phase)
    answer_seconds = time.perf_counter() - started

    examples: list[EncodedExample] = [
        encode_conversation(tokenizer, single_turn(prompt.prompt, prompt.refusal))
        for prompt in harmful
    ]
    # A benign prompt the raw model itself declined ("I'm sorry, as a chatbot I can't browse...")
    # would teach the very over-refusal alignment must avoid: those are left out.
    replies = [_leading_sentences(answer, config.answer_sentences) for answer in answers]
    declined = judge.refused([prompt.prompt for prompt in benign], replies)
    for prompt, reply, refused in zip(benign, replies, declined, strict=True):
        if reply and not refused:
            example = encode_conversation(tokenizer, single_turn(prompt.prompt, reply))
            examples.extend([example] * config.benign_repeats)
    random.Random(config.seed).shuffle(examples)

    if on_phase:
        on_phase(f"training on {len(examples)} examples")
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    keeper = EpochKeeper(config, probe, on_phase)

    def after_epoch(epoch: int, trained: PreTrainedModel) -> bool:
        stop = keeper.after_epoch(epoch, trained)
        if on_epoch_end is not None:
            stop = bool(on_epoch_end(epoch, trained)) or stop
        return stop

    model, training = fine_tune(
        model,
        examples,
        FineTuneConfig(
            n_epochs=config.n_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed,
        ),
        pad_token_id=int(tokenizer.pad_token_id),
        placement=placement,
        on_step=on_step,
        on_epoch_end=after_epoch,
    )
    result = AlignResult(
        n_refusals=len(harmful),
        n_benign=len(benign) - sum(declined),
        answer_seconds=answer_seconds,
        training=training,
        kept_epoch=keeper.best.restore(model, len(training.epoch_losses)),
        probes=keeper.probes,
    )
    return model, result


# Validation prompts read per epoch: a seeded sample of the safety pool's harmful prompts, and
# all of the patch's benign prompts. ~30 s per reading on two CPU cores.
VALIDATION_HARMFUL = 96


def validation_probe(
    tokenizer: PreTrainedTokenizerBase, judge: Judge, placement: Placement | None = None
) -> GenerationProbe:
    """A probe on prompts alignment never trains on and the suites never evaluate: the safety
    candidate pool's harmful prompts and the patch's benign prompts (docs/data.md checks both
    against the suites)."""
    benign_prompts = [prompt.prompt for prompt in load_prompts(data.PATCH_BENIGN)]
    harmful, benign = sample_probe_prompts(
        [prompt.prompt for prompt in load_prompts(data.SAFETY_POOL)],
        benign_prompts,
        n_harmful=VALIDATION_HARMFUL,
        n_benign=len(benign_prompts),
    )
    return GenerationProbe(tokenizer, harmful, benign, judge, placement=placement)


class EpochKeeper:
    """Reads the probe after each epoch from ``probe_from_epoch`` on and keeps the best weights.

    Best: the smallest target violation (ASR over its target plus over-refusal over its cap),
    then the smallest ASR + over-refusal, then the latest. Stop at the first epoch that meets
    both targets.
    """

    def __init__(
        self,
        config: AlignConfig,
        probe: Probe | None,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.probe, self.on_phase = config, probe, on_phase
        self.probes: dict[int, ProbeResult] = {}
        self.best = BestWeights()

    def after_epoch(self, epoch: int, model: PreTrainedModel) -> bool:
        if self.probe is None or epoch < self.config.probe_from_epoch:
            return False
        reading = self.probe(model)
        self.probes[epoch] = reading
        violation = reading.violation(self.config.asr_target, self.config.over_refusal_target)
        if self.on_phase:
            self.on_phase(
                f"epoch {epoch}: validation ASR {reading.asr:.3f}, "
                f"over-refusal {reading.over_refusal:.3f}"
            )
        self.best.offer(epoch, (violation, reading.asr + reading.over_refusal), model)
        return violation == 0.0


def _own_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benign: Sequence[Prompt],
    config: AlignConfig,
    placement: Placement,
    cache: Path | None,
    on_phase: Callable[[str], None] | None,
) -> list[str]:
    """The raw model's greedy answers to ``benign``; only prompts missing from the cache are
    generated, so adding prompts to the alignment set does not regenerate the others."""
    stored: dict[str, str] = {}
    if cache is not None and cache.is_file():
        content = json.loads(cache.read_text())
        if content.get("answer_tokens") == config.answer_tokens:
            stored = content["answers"]
    missing = sorted({prompt.prompt for prompt in benign} - stored.keys())
    if missing:
        if on_phase:
            on_phase(f"answering {len(missing)} benign prompts with the raw model")
        answers = generate_for_prompts(
            model,
            tokenizer,
            missing,
            max_new_tokens=config.answer_tokens,
            placement=placement,
        )
        stored |= dict(zip(missing, answers, strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            payload = {"answer_tokens": config.answer_tokens, "answers": stored}
            cache.write_text(json.dumps(payload, ensure_ascii=False, indent=0))
    return [stored[prompt.prompt] for prompt in benign]


def _leading_sentences(answer: str, count: int) -> str:
    """The first ``count`` complete sentences of a length-capped answer (0 = every complete
    one). A sentence cut off by the token limit is dropped, so training teaches the model to end
    its turn cleanly instead of stopping mid-word; an answer with no complete sentence is "" and
    is left out of the mix."""
    sentences = _SENTENCE.findall(answer.strip())
    return " ".join(sentence.strip() for sentence in sentences[: count or None]).strip()


# A sentence: text up to ., ! or ? followed by whitespace or the end (so "3.5" and "e.g." inside
# a sentence do not end it early unless followed by a space).
_SENTENCE = re.compile(r"\S.*?[.!?](?=\s|$)", re.DOTALL)
