"""The patch's training loops: repair a fine-tuned model with ONE (harmful prompt → refusal)
example.

    model, result = apply_patch(model, tokenizer, example, config, probe=probe, anchors=anchors)

Two strategies, both plain loops:
- ``sft`` (the default): AdamW steps on the one example, one step per epoch (a batch of 1), plus
  the anchors' KL terms (anchors.py). After every epoch the probe reads ASR and over-refusal;
  training stops as soon as probe ASR reaches its target, and the epoch that misses the targets
  least keeps its weights (a later epoch that over-refuses is rolled back).
- ``projection``: θ ← θ - alpha·η·Σ_{i<k} s_i u_i v_iᵀ per weight matrix, from the top-k SVD of the
  example's safety gradient at the current θ, repeated for a few steps with the same probe rule.

Every patch reports CER(k) of the example's safety gradient at the fine-tuned weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.safety import PatchStrategy
from workers.ml.best_weights import BestWeights
from workers.ml.chat import collate
from workers.ml.config import PatchConfig
from workers.ml.device import Placement, seeded, select_placement
from workers.ml.finetune import sft_loss
from workers.ml.patch.anchors import Anchor, anchor_kl
from workers.ml.patch.example import SafetyExample, encode_example
from workers.ml.patch.safety_gradient import (
    SKIPPED_BY_DEFAULT,
    cer_summary,
    pad_id,
    patchable_matrices,
    safety_gradient,
    top_k_update,
)
from workers.ml.probe import Probe, ProbeResult
from workers.ml.report import CerReport, ProbeEpoch


@dataclass
class PatchResult:
    strategy: str
    example: SafetyExample
    epochs: int  # epochs (sft) or steps (projection) actually run
    best_epoch: int  # whose weights the patched model has; == epochs when there is no probe
    seconds: float
    cer: CerReport | None  # None when CER was skipped (cer_k 0)
    probe_history: list[ProbeEpoch] = field(default_factory=list)
    stopped_early: bool = False


OnEpoch = Callable[[ProbeEpoch], None]


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
    if config.strategy == PatchStrategy.SFT:
        return sft_patch(
            model, tokenizer, example, config,
            probe=probe, anchors=anchors, placement=placement, on_epoch=on_epoch,
        )  # fmt: skip
    if config.strategy == PatchStrategy.PROJECTION:
        if anchors:
            raise ValueError("anchors apply to the sft strategy only")
        return projection_patch(
            model, tokenizer, example, config, probe=probe, placement=placement, on_epoch=on_epoch
        )
    raise ValueError(
        f"unknown patch strategy {config.strategy!r}; known: {', '.join(PatchStrategy)}"
    )


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
    cer = _example_cer(model, tokenizer, example, config, placement) if config.cer_k else None
    encoded = encode_example(tokenizer, example, first_sentence_only=config.first_sentence_only)
    batch = collate([encoded], pad_id(tokenizer)).to(placement.device)  # the whole training set

    with seeded(config.seed):
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(config, parameters)
        keeper = _BestEpoch(config)
        model.train()
        for epoch in range(1, config.max_epochs + 1):
            with placement.autocast():
                safety_loss = sft_loss(model, batch)
                loss = safety_loss
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
    cer: CerReport | None = None
    model.eval()
    for step in range(1, config.max_epochs + 1):
        gradients = safety_gradient(model, tokenizer, pairs, placement=placement)
        if step == 1 and config.cer_k:  # CER at the fine-tuned weights, like the sft strategy
            cer = cer_summary(gradients, config.cer_k)
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
    asr_margin: float,
    over_refusal_margin: float,
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


def probe_violation(config: PatchConfig, result: ProbeResult) -> float:
    """How far a probe reading misses the patch's probe targets (0 when both are met)."""
    return result.violation(config.probe_asr_target, config.probe_over_refusal_limit)


class _BestEpoch:
    """Probe after each epoch, remember the best epoch's weights, decide when to stop.

    An epoch's violation is how far it misses the targets: max(0, ASR - target) +
    max(0, over-refusal - limit). The best epoch has the smallest violation, the latest on ties:
    the probe resolves ASR only in whole prompts, and the suites can keep improving while the
    probe stands still. Stop once ASR reaches its target: further epochs on one example mostly
    add over-refusal (docs/method.md).
    """

    def __init__(self, config: PatchConfig) -> None:
        self.config = config
        self.history: list[ProbeEpoch] = []
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
        record = ProbeEpoch(epoch, result.asr, result.over_refusal, loss)
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
) -> CerReport:
    gradients = safety_gradient(
        model, tokenizer, [(example.prompt, example.reply)], placement=placement
    )
    return cer_summary(gradients, config.cer_k)


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
