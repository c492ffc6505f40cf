"""The one-shot safety patch: repair a fine-tuned model with ONE (harmful prompt → refusal) example.

    config = PatchConfig(strategy="sft", max_epochs=10, learning_rate=2e-5)
    model, result = apply_patch(model, tokenizer, example, config, probe=probe, anchors=anchors)

Two strategies, both plain loops:
- ``sft`` (default, the paper's recipe): AdamW steps on the one example, one step per epoch
  (batch of 1), optionally plus anchor KL terms (see ``anchors.py``). After every epoch a small
  probe measures ASR and over-refusal; training stops as soon as probe ASR reaches its target, and
  the epoch with the smallest target violation is the one whose weights are kept (a later epoch
  that over-refuses is rolled back).
- ``projection``: θ ← θ - alpha·η·Σ_{i<k} s_i u_i v_iᵀ per weight matrix, from the top-k SVD of the
  example's safety gradient at the current θ, repeated for a few steps with the same probe rule.

Every patch reports CER(k) of the example's safety gradient at the fine-tuned weights.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml.anchors import Anchor, anchor_kl
from workers.ml.best_weights import BestWeights
from workers.ml.chat import IGNORE_INDEX, EncodedExample, collate, encode_conversation, single_turn
from workers.ml.device import Placement, seeded, select_placement
from workers.ml.finetune import sft_loss
from workers.ml.generation import generate_for_prompts
from workers.ml.judges import Judge
from workers.ml.preference import preference_loss, preference_pair
from workers.ml.probe import Probe, ProbeResult
from workers.ml.safety_gradient import (
    SKIPPED_BY_DEFAULT,
    cer_summary,
    pad_id,
    patchable_matrices,
    safety_gradient,
    top_k_update,
)

STRATEGIES = ("sft", "projection")


@dataclass
class PatchConfig:
    strategy: str = field(default="sft", metadata={"help": "sft | projection"})
    max_epochs: int = field(
        default=10, metadata={"help": "sft: epochs (= steps) on the one example; projection: steps"}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "sft: learning rate"})
    optimizer: str = field(default="adamw", metadata={"help": "sft: adamw | sgd"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "sft: gradient clipping"})
    preference_weight: float = field(
        default=0.0,
        metadata={"help": "sft: weight of the DPO term against θ*'s own compliance (0: off)"},
    )
    preference_beta: float = field(default=0.1, metadata={"help": "sft: the DPO term's beta"})
    first_sentence_only: bool = field(
        default=False, metadata={"help": "sft: loss on the refusal's first sentence only"}
    )
    seed: int = field(default=0, metadata={"help": "seeds torch and the randomized SVD"})
    projection_rank: int = field(default=20, metadata={"help": "projection: top-k directions"})
    projection_alpha: float = field(
        default=1.0, metadata={"help": "projection: alpha; the paper's sweet spot is 0.8-1.2"}
    )
    projection_step_size: float = field(
        default=0.02, metadata={"help": "projection: η, a plain gradient step size (no Adam)"}
    )
    projection_svd: str = field(
        default="lowrank", metadata={"help": "projection: full | lowrank (randomized, ~10x faster)"}
    )
    cer_k: int = field(
        default=20, metadata={"help": "k of the reported CER(k); 0: sft skips CER (screening)"}
    )
    probe_asr_target: float = field(
        default=0.0, metadata={"help": "stop once probe ASR is at or below this"}
    )
    probe_over_refusal_limit: float = field(
        default=1.0, metadata={"help": "an epoch over this probe over-refusal is a violation"}
    )
    stop_early: bool = field(
        default=True,
        metadata={"help": "False: probe every epoch but run them all and keep the last weights"},
    )


@dataclass(frozen=True)
class SafetyExample:
    prompt: str
    reply: str
    id: str = ""
    category: str = ""
    # The fine-tuned model's own compliant reply to ``prompt``: the rejected side of the
    # preference term (preference.py); empty when it refused or the term is off.
    rejected: str = ""


@dataclass(frozen=True)
class ProbeRecord:
    epoch: int
    asr: float
    over_refusal: float
    loss: float  # the safety example's CE loss at the step that produced this epoch


@dataclass
class PatchResult:
    strategy: str
    example: SafetyExample
    epochs: int  # epochs (sft) or steps (projection) actually run
    best_epoch: int  # whose weights the patched model has; == epochs when there is no probe
    seconds: float
    cer: dict[str, Any]
    probe_history: list[ProbeRecord] = field(default_factory=list)
    stopped_early: bool = False
    accepted: bool | None = None  # decided by the pipeline on the full evaluation

    def to_report(self) -> dict[str, Any]:
        """The report's ``patch`` object (``example`` as prompt and reply)."""
        return {
            "strategy": self.strategy,
            "example": {"prompt": self.example.prompt, "reply": self.example.reply},
            "example_id": self.example.id,
            # Only whether the term ran: the compliant text itself is never stored or reported.
            "preference_pair": bool(self.example.rejected),
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
            "cer": self.cer,
            "probe_history": [asdict(record) for record in self.probe_history],
            "stopped_early": self.stopped_early,
            "accepted": self.accepted,
        }


OnEpoch = Callable[[ProbeRecord], None]


def apply_patch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    config: PatchConfig,
    *,
    probe: Probe | None = None,
    anchors: Sequence[Anchor] = (),
    placement: Placement | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[PreTrainedModel, PatchResult]:
    """Patch ``model`` in place with ``config.strategy``."""
    if config.strategy == "sft":
        return sft_patch(
            model, tokenizer, example, config,
            probe=probe, anchors=anchors, placement=placement, on_epoch=on_epoch,
        )  # fmt: skip
    if config.strategy == "projection":
        if anchors:
            raise ValueError("anchors apply to the sft strategy only")
        return projection_patch(
            model, tokenizer, example, config, probe=probe, placement=placement, on_epoch=on_epoch
        )
    raise ValueError(f"unknown patch strategy {config.strategy!r}; known: {', '.join(STRATEGIES)}")


def sft_patch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    config: PatchConfig,
    *,
    probe: Probe | None = None,
    anchors: Sequence[Anchor] = (),
    placement: Placement | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[PreTrainedModel, PatchResult]:
    """Fine-tune on the one example, one AdamW step per epoch, with probe-driven stopping."""
    placement = placement or select_placement()
    started = time.perf_counter()
    model.to(placement.device)  # type: ignore[arg-type]  # transformers' .to() stub
    cer = _example_cer(model, tokenizer, example, config, placement) if config.cer_k else {}
    encoded = encode_example(tokenizer, example, first_sentence_only=config.first_sentence_only)
    batch = collate([encoded], pad_id(tokenizer)).to(placement.device)  # the whole training set
    pair = None
    if config.preference_weight > 0 and example.rejected:
        pair = preference_pair(
            model, tokenizer, example.prompt, example.reply, example.rejected,
            beta=config.preference_beta, placement=placement,
        )  # fmt: skip

    with seeded(config.seed):
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(config, parameters)
        keeper = _BestEpoch(config)
        model.train()
        for epoch in range(1, config.max_epochs + 1):
            with placement.autocast():
                safety_loss = sft_loss(model, batch)
                loss = safety_loss
                if pair is not None:
                    loss = loss + config.preference_weight * preference_loss(model, pair)
                for anchor in anchors:
                    loss = loss + anchor.weight * anchor_kl(model, anchor)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
            stop = keeper.after_epoch(epoch, model, probe, safety_loss.item(), on_epoch)
            model.train()
            if stop:
                break
        model.eval()
        del optimizer  # AdamW keeps two fp32 copies of the weights; free them now
        best_epoch = keeper.best.restore(model, epoch)

    result = PatchResult(
        strategy="sft",
        example=example,  # reported with its full reply; the loss mask is a training detail
        epochs=epoch,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
        cer=cer,
        probe_history=keeper.history,
        stopped_early=epoch < config.max_epochs,
    )
    return model, result


def _optimizer(config: PatchConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate)
    raise ValueError(f"unknown patch optimizer {config.optimizer!r}; known: adamw, sgd")


def projection_patch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    config: PatchConfig,
    *,
    probe: Probe | None = None,
    placement: Placement | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[PreTrainedModel, PatchResult]:
    """θ ← θ - alpha·η·TopK_k(∇ safety loss) per matrix, for up to ``max_epochs`` steps."""
    placement = placement or select_placement()
    started = time.perf_counter()
    model.to(placement.device)  # type: ignore[arg-type]  # transformers' .to() stub
    pairs = [(example.prompt, example.reply)]
    matrices = patchable_matrices(model, SKIPPED_BY_DEFAULT)
    scale = config.projection_alpha * config.projection_step_size
    keeper = _BestEpoch(config)
    cer: dict[str, Any] = {}
    model.eval()
    for step in range(1, config.max_epochs + 1):
        gradients = safety_gradient(model, tokenizer, pairs, placement=placement)
        if step == 1 and config.cer_k:  # CER at the fine-tuned weights, like the sft strategy
            cer = cer_summary(gradients, config.cer_k).to_dict()
        loss = _example_loss(model, tokenizer, example, placement)
        with torch.no_grad():
            for name, parameter in matrices.items():
                update = top_k_update(
                    gradients[name],
                    config.projection_rank,
                    method=config.projection_svd,  # type: ignore[arg-type]
                    seed=config.seed,
                )
                parameter.sub_(scale * update.to(parameter.dtype))
        del gradients
        if keeper.after_epoch(step, model, probe, loss, on_epoch):
            break
    best_epoch = keeper.best.restore(model, step)
    result = PatchResult(
        strategy="projection",
        example=example,
        epochs=step,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
        cer=cer,
        probe_history=keeper.history,
        stopped_early=step < config.max_epochs,
    )
    return model, result


def with_reference_targets(
    config: PatchConfig,
    reference: ProbeResult,
    *,
    asr_margin: float = 0.0,
    over_refusal_margin: float = 0.05,
) -> PatchConfig:
    """Probe targets relative to the aligned model's own probe numbers (its level, not zero).

    The over-refusal slack is at least one probe prompt (1/n_benign): with 16 benign prompts a
    single borderline refusal is 0.0625, and a limit finer than the probe's resolution would call
    that noise a violation.
    """
    resolution = 1.0 / reference.n_benign if reference.n_benign else 0.0
    return replace(
        config,
        probe_asr_target=reference.asr + asr_margin,
        probe_over_refusal_limit=reference.over_refusal + max(over_refusal_margin, resolution),
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

    Training on the refusal wording θ0 itself produces moves the patched model back toward θ0's
    distribution rather than toward a new phrasing (METHOD.md: a wording matching the aligned
    model's converged much faster).
    """
    reply, refused = judged_reply(
        reference_model, tokenizer, prompt, judge, max_new_tokens, placement
    )
    return reply if refused and reply else None


def probe_violation(config: PatchConfig, result: ProbeResult) -> float:
    """How far a probe reading misses the patch's probe targets (0 when both are met)."""
    return result.violation(config.probe_asr_target, config.probe_over_refusal_limit)


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


class _BestEpoch:
    """Probe after each epoch, remember the best epoch's weights, decide when to stop.

    An epoch's violation is how far it misses the targets: max(0, ASR - target) +
    max(0, over-refusal - limit). The best epoch has the smallest violation, the latest on ties:
    the probe's 48 harmful prompts resolve ASR only in steps of 0.02, and on SmolLM2 the suites
    kept improving while the probe stood still (same run, probe ASR 0.08 at epochs 7-10: suite ASR
    0.136 at epoch 7, 0.074 at epoch 10; docs/results.md). Stop once ASR reaches its target:
    METHOD.md measured that further epochs on one example only add over-refusal.
    """

    def __init__(self, config: PatchConfig) -> None:
        self.config = config
        self.history: list[ProbeRecord] = []
        self.best = BestWeights()

    def after_epoch(
        self,
        epoch: int,
        model: PreTrainedModel,
        probe: Probe | None,
        loss: float,
        on_epoch: OnEpoch | None,
    ) -> bool:
        if probe is None:
            return False
        result = probe(model)
        record = ProbeRecord(epoch, result.asr, result.over_refusal, loss)
        self.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if not self.config.stop_early:
            return False  # diagnosis mode: a full learning curve, the last epoch's weights
        self.best.offer(epoch, probe_violation(self.config, result), model)
        return result.asr <= self.config.probe_asr_target


def _example_cer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    config: PatchConfig,
    placement: Placement,
) -> dict[str, Any]:
    gradients = safety_gradient(
        model, tokenizer, [(example.prompt, example.reply)], placement=placement
    )
    return cer_summary(gradients, config.cer_k).to_dict()


@torch.no_grad()
def _example_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    placement: Placement,
) -> float:
    batch = collate([encode_example(tokenizer, example)], pad_id(tokenizer)).to(placement.device)
    with placement.autocast():
        return float(sft_loss(model, batch))
