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

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contracts.chat import Conversation, load_chat_jsonl
from contracts.prompts import load_prompts
from contracts.stages import EvalStage
from workers import data
from workers.ml import checkpoints
from workers.ml.acceptance import drifted
from workers.ml.baseline import load_baseline, store_baseline
from workers.ml.config import PipelineConfig
from workers.ml.device import (
    Placement,
    peak_memory_bytes,
    reset_peak_memory,
    select_placement,
)
from workers.ml.evaluate import EvalSuite, StageMetrics, evaluate, with_other_judges
from workers.ml.events import (
    DriftDecided,
    EventSink,
    FineTuningStarted,
    GenerationProgress,
    Notice,
    PipelineStage,
    StageEntered,
    StageEvaluated,
    ignore,
)
from workers.ml.fine_tune_stage import fingerprint, fresh_copy, resume_point, run_fine_tune
from workers.ml.judges import Judge, get_judge
from workers.ml.patch.stage import patch_until_accepted
from workers.ml.report import DriftDecision, ModelPaths, PatchReport, PipelineReport
from workers.ml.suites import load_suites


@dataclass
class PipelineResult:
    report: PipelineReport
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
    # Judges whose readings are reported next to the main judge's (decisions read only the main).
    others = [get_judge(name) for name in config.extra_judges]
    clock = _StageClock(placement)
    train, validation = _customer_data(config)
    suites = load_suites(config.suites)
    eval_suite = EvalSuite(
        suites.harmful, suites.benign, suites.general, validation,
        report_harmful=suites.report_harmful, report_benign=suites.report_benign,
        reply_tokens=config.reply_tokens,
    )  # fmt: skip

    base_path = models_dir / config.base
    on_event(Notice(f"loading base model {config.base}"))
    base_model, tokenizer = checkpoints.load_model(base_path, device=placement.device)

    clock.start()
    base_metrics = _baseline(
        base_model, tokenizer, base_path, config, eval_suite, (judge, *others), placement, on_event
    )
    clock.stop("baseline")

    # Fine-tune a copy: the base model stays in memory as the aligned reference θ0.
    on_event(FineTuningStarted(examples=len(train)))
    clock.start()
    run_fingerprint = fingerprint(config, base_path, train)
    resumed = resume_point(work_dir, config, run_fingerprint, on_event) if resume else None
    if resumed is None:
        model, state = fresh_copy(base_model)
    else:
        checkpoint, state = resumed
        model, _ = checkpoints.load_model(checkpoint, device=placement.device)
    finetuned, trained_tokens = run_fine_tune(
        model,
        state,
        run_fingerprint,
        tokenizer,
        train,
        config,
        # The fine-tune's drift trend reads pool prompts: the gate and report sets stay unseen.
        load_prompts(data.SAFETY_POOL),
        judge,
        placement,
        work_dir,
        on_event,
    )
    clock.stop("fine_tune")
    # The epoch checkpoints hold the optimizer state a resumed run needs; this run is past it,
    # and AdamW's two fp32 moments would otherwise stay alive through the patch.
    state.optimizer = state.scheduler = None
    finetuned_path = work_dir / "finetuned"
    checkpoints.save_model(
        finetuned,
        tokenizer,
        finetuned_path,
        metadata={"kind": EvalStage.FINE_TUNED, "base": config.base},
    )

    on_event(StageEntered(PipelineStage.EVALUATING, "evaluating the fine-tuned model"))
    clock.start()
    finetuned_metrics = _evaluate(
        finetuned, tokenizer, eval_suite, (judge, *others), placement, on_event,
        EvalStage.FINE_TUNED,
    )  # fmt: skip
    write_records(work_dir, EvalStage.FINE_TUNED, finetuned_metrics)
    clock.stop("evaluate_finetuned")

    drift = DriftDecision(
        detected=drifted(base_metrics, finetuned_metrics, config.drift_threshold),
        threshold=config.drift_threshold,
        asr_increase=finetuned_metrics.asr - base_metrics.asr,
    )
    on_event(DriftDecided(drift, asr_base=base_metrics.asr, asr_fine_tuned=finetuned_metrics.asr))

    patched_metrics: StageMetrics | None = None
    patch_report: PatchReport | None = None
    patched_path: Path | None = None
    if drift.detected and config.auto_patch:
        on_event(StageEntered(PipelineStage.PATCHING, "patching: choosing the safety example"))
        clock.start()
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
        clock.stop("patch_total")
        patched_metrics, patch_report = outcome.metrics, outcome.report
        if patched_metrics is not None:
            patched_metrics = with_other_judges(patched_metrics, others)
        if outcome.model is not None:
            patched_path = work_dir / "patched"
            checkpoints.save_model(
                outcome.model,
                tokenizer,
                patched_path,
                metadata={
                    "kind": EvalStage.PATCHED,
                    "base": config.base,
                    "accepted": patch_report.accepted,
                },
            )
            if patched_metrics is not None:
                write_records(work_dir, EvalStage.PATCHED, patched_metrics)

    report = PipelineReport(
        base=base_metrics.numbers(),
        fine_tuned=finetuned_metrics.numbers(),
        trained_tokens=trained_tokens,
        patched=patched_metrics.numbers() if patched_metrics else None,
        patch=patch_report,
        drift=drift,
        seconds=clock.seconds,
        peak_memory_bytes=max(clock.peaks.values(), default=peak_memory_bytes(placement)),
        device=placement.name,
        suite_version=data.SUITE_VERSION,
        models=ModelPaths(
            base=str(base_path),
            fine_tuned=str(finetuned_path),
            patched=str(patched_path) if patched_path else None,
        ),
        peak_memory_by_stage=clock.peaks,
    )
    return PipelineResult(report=report, finetuned_path=finetuned_path, patched_path=patched_path)


class _StageClock:
    """Wall seconds and peak memory of each pipeline phase."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self._started = time.perf_counter()

    def start(self) -> None:
        reset_peak_memory(self.placement)
        self._started = time.perf_counter()

    def stop(self, phase: str) -> None:
        self.seconds[phase] = time.perf_counter() - self._started
        self.peaks[phase] = peak_memory_bytes(self.placement)


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
    judges: tuple[Judge, ...],
    placement: Placement,
    on_event: EventSink,
) -> StageMetrics:
    """The base model's safety numbers are cached per suite and judges; its utility on this
    customer's task is not (it depends on the customer's validation data) and is measured each
    time."""
    key = "+".join(judge.name for judge in judges)
    cached = load_baseline(base_path, config.suites, key)
    if cached is None:
        on_event(Notice("evaluating the base model"))
        metrics = _evaluate(model, tokenizer, suite, judges, placement, on_event, EvalStage.BASE)
        store_baseline(base_path, config.suites, key, metrics)
        return metrics
    on_event(Notice("base model baseline (cached)"))
    task_only = evaluate(
        model, tokenizer, EvalSuite(utility=suite.utility), judges[0], placement=placement
    )
    cached.utility, cached.utility_f1 = task_only.utility, task_only.utility_f1
    cached.utility_interval = task_only.utility_interval
    cached.n_utility, cached.records = task_only.n_utility, task_only.records
    on_event(StageEvaluated(EvalStage.BASE, cached.numbers()))
    return cached


def _evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: EvalSuite,
    judges: tuple[Judge, ...],
    placement: Placement,
    on_event: EventSink,
    stage: EvalStage,
) -> StageMetrics:
    """Evaluate with the main judge (``judges[0]``), then add the others' readings."""

    def on_progress(suite_name: str, done: int, total: int) -> None:
        on_event(GenerationProgress(stage=stage, suite=suite_name, done=done, total=total))

    metrics = evaluate(
        model, tokenizer, suite, judges[0], placement=placement, on_progress=on_progress
    )
    metrics = with_other_judges(metrics, judges[1:])
    on_event(StageEvaluated(stage, metrics.numbers()))
    return metrics


def records_path(work_dir: Path, stage: EvalStage) -> Path:
    """Where a stage's per-prompt records are kept (the worker stores them with its evaluation)."""
    return work_dir / "evaluations" / f"{stage}.jsonl"


def write_records(work_dir: Path, stage: EvalStage, metrics: StageMetrics) -> None:
    path = records_path(work_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in metrics.records:
            handle.write(json.dumps(asdict(record)) + "\n")
