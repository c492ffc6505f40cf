"""The patch's training loops: repair a fine-tuned model with ONE (harmful prompt → refusal)
example.

    model, result = apply_patch(model, tokenizer, example, config, probe=probe, anchors=anchors)

Three strategies, all plain loops:
- ``sft`` (the default): AdamW steps on the one example, one step per epoch (a batch of 1), plus
  the anchors' KL terms (anchors.py). After every epoch the probe reads ASR and over-refusal;
  training stops as soon as probe ASR reaches its target, and the epoch that misses the targets
  least keeps its weights (a later epoch that over-refuses is rolled back).
- ``one-shot``: the published recipe, the same loop on the one example alone, without anchors.
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
from workers.ml.patch.anchors import Anchor, anchor_backward
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
    if config.strategy in (PatchStrategy.SFT, PatchStrategy.ONE_SHOT):
        if config.strategy == PatchStrategy.ONE_SHOT and anchors:
            raise ValueError("the one-shot strategy trains on the one example only: no anchors")
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


class SftRun:
    """An sft patch in progress: the model being patched, its optimizer, the epochs done.

    Screening runs a few epochs of several of these and hands the winner to ``sft_patch`` to go
    on with (workers/ml/patch/screening.py), so the winner's first epochs are not trained twice.
    One epoch is one AdamW step: the example's loss plus each anchor's KL term, the anchors in
    micro-batches and, with ``config.anchor_rows``, a seeded sample of their rows per step.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        example: SafetyExample,
        config: PatchConfig,
        *,
        anchors: Sequence[Anchor] = (),
        placement: Placement | None = None,
        more_examples: Sequence[SafetyExample] = (),
    ) -> None:
        self.placement = placement or select_placement()
        self.model = model.to(self.placement.device)  # type: ignore[arg-type]  # .to() stub
        self.example = example
        self.config = config
        self.anchors = list(anchors)
        encoded = [
            encode_example(tokenizer, e, first_sentence_only=config.first_sentence_only)
            for e in (example, *more_examples)
        ]
        # The whole training set: the one example (a batch of 1), or a few where measured so.
        self.batch = collate(encoded, pad_id(tokenizer)).to(self.placement.device)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer | None = _optimizer(config, self.parameters)
        self.rows = torch.Generator().manual_seed(config.seed)
        self.epochs = 0
        self.seconds = 0.0

    def step(self) -> float:
        """Train one epoch; returns the example's loss before the step."""
        assert self.optimizer is not None, "the run was finished"
        started = time.perf_counter()
        self.model.train()
        with self.placement.autocast():
            safety_loss = sft_loss(self.model, self.batch)
        safety_loss.backward()
        for anchor in self.anchors:
            anchor_backward(
                self.model, anchor,
                rows=self._sample(anchor), micro_batch=self.config.micro_batch,
                placement=self.placement,
            )  # fmt: skip
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.epochs += 1
        self.seconds += time.perf_counter() - started
        return float(safety_loss.detach())

    def finish(self) -> None:
        """Free the optimizer: AdamW keeps two fp32 copies of the weights."""
        self.optimizer = None

    def _sample(self, anchor: Anchor) -> list[int] | None:
        if not self.config.anchor_rows or self.config.anchor_rows >= anchor.n_rows:
            return None
        order = torch.randperm(anchor.n_rows, generator=self.rows)
        return sorted(order[: self.config.anchor_rows].tolist())


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
    resume: SftRun | None = None,
    resume_reading: ProbeEpoch | None = None,
    more_examples: Sequence[SafetyExample] = (),
) -> tuple[PreTrainedModel, PatchResult]:
    """Fine-tune on the one example, one AdamW step per epoch, with probe-driven stopping.

    With ``resume`` (a screened run, whose probe reading after its last epoch is
    ``resume_reading``), training goes on from there: ``model`` and ``anchors`` are the run's.
    ``more_examples`` train in the same batch (bench/patch_sweep.py measures the one-example
    claim with them; the product trains on one).
    """
    placement = placement or select_placement()
    started = time.perf_counter()
    cer = None
    if resume is None:
        model.to(placement.device)  # type: ignore[arg-type]  # transformers' .to() stub
        if config.cer_k:
            cer = example_cer(model, tokenizer, example, config.cer_k, placement)
    with seeded(config.seed):
        run = resume or SftRun(
            model, tokenizer, example, config,
            anchors=anchors, placement=placement, more_examples=more_examples,
        )  # fmt: skip
        keeper = _BestEpoch(config)
        stop = (
            probe is not None
            and resume_reading is not None
            and keeper.record(resume_reading, run.model, on_epoch)
        )
        loss = resume_reading.loss if resume_reading else float("nan")
        while not stop and run.epochs < config.max_epochs:
            loss = run.step()
            stop = keeper.after_epoch(run.epochs, run.model, probe, loss, on_epoch)
        run.finish()
        best_epoch = keeper.best.restore(run.model, run.epochs)

    result = PatchResult(
        strategy=config.strategy,
        example=example,  # reported with its full reply; the loss mask is a training detail
        epochs=run.epochs,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started + (resume.seconds if resume else 0.0),
        cer=cer,
        probe_history=keeper.history,
        stopped_early=run.epochs < config.max_epochs,
    )
    return run.model, result


def _optimizer(config: PatchConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        # Fused: one kernel per step, without the foreach implementation's temporaries (whole
        # copies of the weights' size at the step's peak).
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0, fused=True)
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
        reading = ProbeEpoch(epoch, result.asr, result.over_refusal, loss)
        return self.record(reading, model, on_epoch)

    def record(self, record: ProbeEpoch, model: PreTrainedModel, on_epoch: OnEpoch | None) -> bool:
        """Take an epoch's probe reading (made here or, for a screened run, by screening)."""
        self.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if not self.config.stop_early:
            return False  # diagnosis mode: a full learning curve, the last epoch's weights
        reading = ProbeResult(record.asr, record.over_refusal)
        self.best.offer(record.epoch, probe_violation(self.config, reading), model)
        return record.asr <= self.config.probe_asr_target


def example_cer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: SafetyExample,
    k: int,
    placement: Placement,
) -> CerReport:
    """CER(k) of the example's safety gradient at ``model``'s weights."""
    gradients = safety_gradient(
        model, tokenizer, [(example.prompt, example.reply)], placement=placement
    )
    return cer_summary(gradients, k)


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
