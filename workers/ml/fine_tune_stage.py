"""The pipeline's fine-tuning stage: the customer's fine-tune with a checkpoint and a quick ASR
probe after each epoch, resumable from the last checkpoint a dead run left behind."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation
from contracts.manifest import CorruptCheckpointError
from contracts.prompts import Prompt
from workers.ml import checkpoints
from workers.ml.chat import encode_conversation
from workers.ml.config import PipelineConfig
from workers.ml.device import Placement
from workers.ml.evaluate import EvalSuite, evaluate
from workers.ml.events import (
    CheckpointSkipped,
    EventSink,
    FineTuneEpochEnded,
    ResumedFromCheckpoint,
    TrainingStep,
)
from workers.ml.finetune import FineTuneConfig, StepReport, TrainingState, fine_tune
from workers.ml.judges import Judge
from workers.ml.report import ProbeReading
from workers.ml.suites import probe_sample

# OpenAI's hyperparameters give a learning-rate *multiplier*; these are what it multiplies.
FULL_FINE_TUNE_LR = 1e-4
LORA_LR = 1e-3
PROBE_PROMPTS = 16  # harmful prompts in the end-of-epoch probe: a trend, not a verdict
# Epoch checkpoints that keep their optimizer state (twice the weights, for AdamW): the latest,
# which a resumed run starts from, and the one before, to fall back on when the latest fails
# its check. Older ones keep only their weights (docs/reliability.md).
TRAINING_STATES_KEPT = 2


def fingerprint(config: PipelineConfig, base_path: Path, train: list[Conversation]) -> str:
    """What a checkpoint must have been trained with for a run to resume from it."""
    identity = {
        "base": checkpoints.describe(base_path).sha256,
        "train": [[m.as_dict() for m in conversation] for conversation in train],
        "n_epochs": config.n_epochs,
        "batch_size": config.batch_size,
        "learning_rate_multiplier": config.learning_rate_multiplier,
        "lora_rank": config.lora_rank,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def resume_point(
    work_dir: Path, config: PipelineConfig, fingerprint: str, on_event: EventSink
) -> tuple[Path, TrainingState] | None:
    """The last epoch checkpoint a dead run left that verifies and matches this run, if any.

    A LoRA run restarts: its checkpoints hold merged weights, not the adapters it trains.
    """
    if config.lora_rank:
        return None
    for epoch in range(config.n_epochs, 0, -1):
        path = work_dir / "checkpoints" / f"epoch-{epoch}"
        if not path.is_dir():
            continue
        try:
            checkpoints.verify(path)
            metadata = checkpoints.read_metadata(path)
            if metadata.get("fingerprint") != fingerprint:
                continue  # another configuration's
            if not checkpoints.has_training_state(path):
                continue  # pruned (an older epoch's), or from before resuming existed
            state = checkpoints.load_training_state(path)  # checked against its own manifest
        except (CorruptCheckpointError, OSError, ValueError) as error:
            on_event(CheckpointSkipped(epoch=epoch, problem=str(error)))
            continue
        on_event(ResumedFromCheckpoint(epoch=epoch, step=state.steps))
        # Its epoch again, for a sink that did not get to record it before the run died.
        probe = ProbeReading(**metadata["probe"])
        on_event(FineTuneEpochEnded(epoch=epoch, step=state.steps, probe=probe))
        return path, state
    return None


def run_fine_tune(
    model: PreTrainedModel,
    state: TrainingState,
    fingerprint: str,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Conversation],
    config: PipelineConfig,
    harmful: list[Prompt],
    judge: Judge,
    placement: Placement,
    work_dir: Path,
    on_event: EventSink,
) -> tuple[PreTrainedModel, int]:
    """Fine-tune ``model``; returns it and the number of tokens trained on."""
    examples = [
        encode_conversation(tokenizer, [m.as_dict() for m in conversation])
        for conversation in train
    ]
    probe = EvalSuite(
        harmful=probe_sample(harmful, PROBE_PROMPTS), reply_tokens=config.reply_tokens
    )
    base_lr = LORA_LR if config.lora_rank else FULL_FINE_TUNE_LR

    def on_step(report: StepReport) -> None:
        on_event(
            TrainingStep(
                step=report.step,
                epoch=report.epoch,
                loss=report.loss,
                learning_rate=report.learning_rate,
            )
        )

    def on_epoch_end(epoch: int, epoch_model: PreTrainedModel) -> None:
        # A quick ASR probe so drift shows while the job trains, and a checkpoint per epoch
        # that carries it and the optimizer state (a resumed run continues from it).
        probe_metrics = evaluate(epoch_model, tokenizer, probe, judge, placement=placement)
        reading = ProbeReading(
            probe_asr=probe_metrics.asr, n_probe=probe_metrics.n_harmful, judge=judge.name
        )
        checkpoints.save_model(
            _mergeable(epoch_model),
            tokenizer,
            work_dir / "checkpoints" / f"epoch-{epoch}",
            metadata={"kind": "checkpoint", "epoch": epoch, "step": state.steps}
            | {"fingerprint": fingerprint, "probe": reading.__dict__},
            training_state=None if config.lora_rank else state,
        )
        prune_training_states(work_dir, latest=epoch)
        on_event(FineTuneEpochEnded(epoch=epoch, step=state.steps, probe=reading))

    model, result = fine_tune(
        model,
        examples,
        FineTuneConfig(
            n_epochs=config.n_epochs,
            batch_size=config.batch_size,
            learning_rate=base_lr * config.learning_rate_multiplier,
            seed=config.seed,
            lora_rank=config.lora_rank,
        ),
        pad_token_id=int(tokenizer.pad_token_id),
        placement=placement,
        on_step=on_step,
        on_epoch_end=on_epoch_end,
        state=state,
    )
    return model, result.trained_tokens


def prune_training_states(work_dir: Path, *, latest: int) -> None:
    """Drop the optimizer state of every epoch checkpoint but the last ``TRAINING_STATES_KEPT``
    up to ``latest``; their weights stay (the API lists them as the job's checkpoints)."""
    for epoch in range(1, latest - TRAINING_STATES_KEPT + 1):
        path = work_dir / "checkpoints" / f"epoch-{epoch}"
        if path.is_dir() and checkpoints.has_training_state(path):
            checkpoints.prune_training_state(path)


def fresh_copy(base_model: PreTrainedModel) -> tuple[PreTrainedModel, TrainingState]:
    """The model a fine-tune starts from: a copy, so the base stays in memory as θ0."""
    return copy.deepcopy(base_model), TrainingState()


def _mergeable(model: PreTrainedModel) -> PreTrainedModel:
    """A LoRA model mid-training is saved as a merged copy, so every checkpoint is a full model."""
    if hasattr(model, "merge_and_unload"):
        merged: PreTrainedModel = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
        return merged
    return model
