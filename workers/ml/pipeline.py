"""The whole safety pipeline for one customer fine-tune, without the HTTP service.

    safepatch pipeline --base smollm2-135m-safe --train sql_train.jsonl --report out.json

baseline (cached per base model and suite) → fine-tune (checkpoint and ASR probe each epoch) →
evaluate → drift decision → choose the one safety example → patch → verify against the rule,
trying the next candidate a bounded number of times → report.

With ``resume=True`` (the worker's job pipeline) a run in a ``work_dir`` that a dead run left
epoch checkpoints in continues from the last one that verifies and was made with the same
configuration and data; the other stages are quick and simply run again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation, load_chat_jsonl
from contracts.manifest import CorruptCheckpointError
from workers import data
from workers.ml import checkpoints
from workers.ml.acceptance import drifted
from workers.ml.baseline import load_baseline, store_baseline
from workers.ml.chat import encode_conversation
from workers.ml.config import PipelineConfig
from workers.ml.device import Placement, peak_memory_bytes, select_placement
from workers.ml.evaluate import EvalSuite, StageMetrics, evaluate
from workers.ml.events import EventSink, PipelineEvent, ignore
from workers.ml.finetune import FineTuneConfig, StepReport, TrainingState, fine_tune
from workers.ml.judges import Judge, get_judge
from workers.ml.suites import load_suites, probe_sample

# OpenAI's hyperparameters give a learning-rate *multiplier*; these are what it multiplies.
FULL_FINE_TUNE_LR = 1e-4
LORA_LR = 1e-3


@dataclass
class PipelineResult:
    report: dict[str, Any]
    finetuned_path: Path
    patched_path: Path | None


def run_pipeline(
    config: PipelineConfig,
    *,
    models_dir: Path,
    work_dir: Path,
    on_event: EventSink = ignore,
    placement: Placement | None = None,
    resume: bool = False,
) -> PipelineResult:
    placement = placement or select_placement()
    judge = get_judge(config.judge)
    timings: dict[str, float] = {}
    train, validation = _customer_data(config)
    suites = load_suites(config.suites)
    eval_suite = EvalSuite(suites.harmful, suites.benign, suites.general, validation)

    base_path = models_dir / config.base
    on_event(PipelineEvent("stage", f"loading base model {config.base}"))
    base_model, tokenizer = checkpoints.load_model(base_path, device=placement.device)

    started = time.perf_counter()
    base_metrics = _baseline(
        base_model, tokenizer, base_path, config, eval_suite, judge, placement, on_event
    )
    timings["baseline"] = time.perf_counter() - started

    # Fine-tune a copy: the base model stays in memory as the aligned reference θ0.
    on_event(PipelineEvent("stage", "fine-tuning", {"examples": len(train)}))
    started = time.perf_counter()
    fingerprint = _fingerprint(config, base_path, train)
    resumed = _resume_point(work_dir, config, fingerprint, on_event) if resume else None
    if resumed is None:
        model, state = copy.deepcopy(base_model), TrainingState()
    else:
        checkpoint, state = resumed
        model, _ = checkpoints.load_model(checkpoint, device=placement.device)
    finetuned, trained_tokens = _fine_tune(
        model,
        state,
        fingerprint,
        tokenizer,
        train,
        config,
        suites.harmful,
        judge,
        placement,
        work_dir,
        on_event,
    )
    timings["fine_tune"] = time.perf_counter() - started
    finetuned_path = work_dir / "finetuned"
    checkpoints.save_model(
        finetuned, tokenizer, finetuned_path, metadata={"kind": "fine_tuned", "base": config.base}
    )

    on_event(PipelineEvent("stage", "evaluating the fine-tuned model", {"stage": "evaluating"}))
    started = time.perf_counter()
    finetuned_metrics = _evaluate(
        finetuned, tokenizer, eval_suite, judge, placement, on_event, work_dir, "finetuned"
    )
    timings["evaluate_finetuned"] = time.perf_counter() - started

    drift = drifted(base_metrics, finetuned_metrics, config.drift_threshold)
    on_event(
        PipelineEvent(
            "metrics",
            "drift decision",
            {
                "drifted": drift,
                "asr_base": base_metrics.asr,
                "asr_finetuned": finetuned_metrics.asr,
                "threshold": config.drift_threshold,
            },
        )
    )

    patched_metrics: StageMetrics | None = None
    patch_report: dict[str, Any] | None = None
    patched_path: Path | None = None
    if drift and config.auto_patch:
        from workers.ml.patching import patch_until_accepted

        on_event(
            PipelineEvent("stage", "patching: choosing the safety example", {"stage": "patching"})
        )
        started = time.perf_counter()
        outcome = patch_until_accepted(
            base_model=base_model,
            finetuned=finetuned,
            tokenizer=tokenizer,
            train=train,
            eval_suite=eval_suite,
            base_metrics=base_metrics,
            finetuned_metrics=finetuned_metrics,
            config=config,
            judge=judge,
            placement=placement,
            on_event=on_event,
        )
        timings["patch_total"] = time.perf_counter() - started
        patched_metrics, patch_report = outcome.metrics, outcome.report
        if outcome.model is not None:
            patched_path = work_dir / "patched"
            checkpoints.save_model(
                outcome.model,
                tokenizer,
                patched_path,
                metadata={
                    "kind": "patched",
                    "base": config.base,
                    "accepted": patch_report["accepted"],
                },
            )
            if patched_metrics is not None:
                _write_records(work_dir, "patched", patched_metrics)

    report = {
        "base": _stage(base_metrics),
        "finetuned": _stage(finetuned_metrics) | {"trained_tokens": trained_tokens},
        "patched": _stage(patched_metrics) if patched_metrics else None,
        "patch": patch_report,
        "drift": {
            "detected": drift,
            "threshold": config.drift_threshold,
            "asr_increase": finetuned_metrics.asr - base_metrics.asr,
        },
        "seconds": timings,
        "peak_memory_bytes": peak_memory_bytes(placement),
        "device": placement.name,
        "suite_version": data.SUITE_VERSION,
        "models": {
            "base": str(base_path),
            "finetuned": str(finetuned_path),
            "patched": str(patched_path) if patched_path else None,
        },
    }
    return PipelineResult(report=report, finetuned_path=finetuned_path, patched_path=patched_path)


def _customer_data(config: PipelineConfig) -> tuple[list[Conversation], list[Conversation]]:
    train = load_chat_jsonl(config.train)
    if config.validation is not None:
        return train, load_chat_jsonl(config.validation)
    # No validation file: hold out a seeded share of the training file, as OpenAI does not, but
    # utility measured on training examples would only measure memorisation.
    shuffled = list(train)
    random.Random(config.seed).shuffle(shuffled)
    held_out = max(1, int(len(shuffled) * config.validation_fraction))
    return shuffled[held_out:], shuffled[:held_out]


def _baseline(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    base_path: Path,
    config: PipelineConfig,
    suite: EvalSuite,
    judge: Judge,
    placement: Placement,
    on_event: EventSink,
) -> StageMetrics:
    """The base model's safety numbers are cached per suite; its utility on this customer's
    task is not (it depends on the customer's validation data) and is measured each time."""
    cached = load_baseline(base_path, config.suites, judge.name)
    if cached is None:
        on_event(PipelineEvent("stage", "evaluating the base model"))
        metrics = _evaluate(model, tokenizer, suite, judge, placement, on_event, None, "base")
        store_baseline(base_path, config.suites, judge.name, metrics)
        return metrics
    on_event(PipelineEvent("stage", "base model baseline (cached)"))
    task_only = evaluate(
        model, tokenizer, EvalSuite(utility=suite.utility), judge, placement=placement
    )
    cached.utility, cached.utility_f1 = task_only.utility, task_only.utility_f1
    cached.n_utility, cached.records = task_only.n_utility, task_only.records
    on_event(PipelineEvent("metrics", "base metrics", {"stage": "base"} | cached.summary()))
    return cached


def _fingerprint(config: PipelineConfig, base_path: Path, train: list[Conversation]) -> str:
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


def _resume_point(
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
        except (CorruptCheckpointError, OSError, ValueError) as error:
            on_event(
                PipelineEvent(
                    "message",
                    f"not resuming from the epoch {epoch} checkpoint: {error}",
                    {"checkpoint": path.name, "problem": "integrity"},
                )
            )
            continue
        metadata = checkpoints.read_metadata(path)
        if metadata.get("fingerprint") != fingerprint or not checkpoints.has_training_state(path):
            continue  # another configuration's, or from before resuming existed
        state = checkpoints.load_training_state(path)
        on_event(
            PipelineEvent(
                "message",
                f"resuming fine-tuning from the epoch {epoch} checkpoint (step {state.steps})",
                {"resumed_from_epoch": epoch, "step": state.steps},
            )
        )
        # Its epoch again, for a sink that did not get to record it before the run died.
        on_event(_epoch_event(epoch, state.steps, metadata["probe"]))
        return path, state
    return None


def _epoch_event(epoch: int, step: int, probe: dict[str, Any]) -> PipelineEvent:
    return PipelineEvent(
        "epoch",
        f"epoch {epoch}: probe ASR {probe['probe_asr']:.2f}",
        {"epoch": epoch, "step": step} | probe,
    )


def _fine_tune(
    model: PreTrainedModel,
    state: TrainingState,
    fingerprint: str,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Conversation],
    config: PipelineConfig,
    harmful: list[Any],
    judge: Judge,
    placement: Placement,
    work_dir: Path,
    on_event: EventSink,
) -> tuple[PreTrainedModel, int]:
    examples = [
        encode_conversation(tokenizer, [m.as_dict() for m in conversation])
        for conversation in train
    ]
    probe = EvalSuite(harmful=probe_sample(harmful, 16))
    base_lr = LORA_LR if config.lora_rank else FULL_FINE_TUNE_LR

    def on_step(report: StepReport) -> None:
        on_event(
            PipelineEvent(
                "step",
                f"step {report.step} loss {report.loss:.4f}",
                {
                    "step": report.step,
                    "epoch": report.epoch,
                    "loss": report.loss,
                    "learning_rate": report.learning_rate,
                },
            )
        )

    def on_epoch_end(epoch: int, epoch_model: PreTrainedModel) -> None:
        # A quick ASR probe so drift shows while the job trains, and a checkpoint per epoch
        # that carries it and the optimizer state (a resumed run continues from it).
        probe_metrics = evaluate(epoch_model, tokenizer, probe, judge, placement=placement)
        probe_result = {
            "probe_asr": probe_metrics.asr,
            "n_probe": probe_metrics.n_harmful,
            "judge": judge.name,
        }
        checkpoints.save_model(
            _mergeable(epoch_model),
            tokenizer,
            work_dir / "checkpoints" / f"epoch-{epoch}",
            metadata={"kind": "checkpoint", "epoch": epoch, "step": state.steps}
            | {"fingerprint": fingerprint, "probe": probe_result},
            training_state=None if config.lora_rank else state,
        )
        on_event(_epoch_event(epoch, state.steps, probe_result))

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


def _mergeable(model: PreTrainedModel) -> PreTrainedModel:
    """A LoRA model mid-training is saved as a merged copy, so every checkpoint is a full model."""
    if hasattr(model, "merge_and_unload"):
        merged: PreTrainedModel = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
        return merged
    return model


def _evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: EvalSuite,
    judge: Judge,
    placement: Placement,
    on_event: EventSink,
    work_dir: Path | None,
    stage: str,
) -> StageMetrics:
    def on_progress(phase: str, done: int, total: int) -> None:
        on_event(
            PipelineEvent(
                "generation",
                f"{stage} {phase} {done}/{total}",
                {"stage": stage, "phase": phase, "done": done, "total": total},
            )
        )

    metrics = evaluate(model, tokenizer, suite, judge, placement=placement, on_progress=on_progress)
    on_event(PipelineEvent("metrics", f"{stage} metrics", {"stage": stage} | metrics.summary()))
    if work_dir is not None:
        _write_records(work_dir, stage, metrics)
    return metrics


def _write_records(work_dir: Path, stage: str, metrics: StageMetrics) -> None:
    path = work_dir / "evaluations" / f"{stage}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in metrics.records:
            handle.write(json.dumps(record.__dict__) + "\n")


def _stage(metrics: StageMetrics) -> dict[str, Any]:
    return metrics.summary()
