"""The patch stage on tiny random models: its settings come from ``PipelineConfig.patch``, it
announces itself with typed events and reports a ``PatchReport``.

The numbers of a random model mean nothing (the real-model test checks them); the shape, the
order of the events and the bookkeeping between them are what is checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from contracts.chat import load_chat_jsonl
from contracts.prompts import load_prompts
from contracts.safety import PatchStrategy
from tests.tiny_models import build_tiny_model
from workers import data
from workers.ml.config import PatchConfig, PatchStageConfig, PipelineConfig, SelectionConfig
from workers.ml.device import Placement
from workers.ml.evaluate import EvalSuite, evaluate
from workers.ml.events import (
    CandidateScreened,
    CandidatesRanked,
    Notice,
    PatchAttemptStarted,
    PatchEpochEnded,
    PatchVerified,
    PipelineStage,
    StageEntered,
)
from workers.ml.judges import get_judge
from workers.ml.patch.stage import patch_until_accepted, prepare_patch
from workers.ml.report import PatchReport

SMALL = PatchStageConfig(
    screen_candidates=3,
    screen_epochs=1,
    probe_harmful=4,
    selection=SelectionConfig(sketch_layers=1, pool_sample=4, max_candidates=6, batch_size=8),
    training=PatchConfig(max_epochs=2, cer_k=2),
)


def test_the_stage_reads_its_settings_and_reports_typed_results(tokenizer) -> None:
    import torch

    placement = Placement(torch.device("cpu"), None)
    judge = get_judge()
    base, finetuned = (build_tiny_model(len(tokenizer), seed=seed) for seed in (1, 2))
    train = load_chat_jsonl(data.DEMO_TRAIN)[:6]
    suite = EvalSuite(
        harmful=load_prompts(data.HARMFUL_EVAL)[:3],
        benign=load_prompts(data.BORDERLINE_EVAL)[:3],
        utility=train[:2],
    )
    base_metrics = evaluate(base, tokenizer, suite, judge, placement=placement)
    finetuned_metrics = evaluate(finetuned, tokenizer, suite, judge, placement=placement)
    config = PipelineConfig(base="tiny", train=Path("unused"), max_patch_attempts=2, patch=SMALL)
    events: list[object] = []

    outcome = patch_until_accepted(
        base_model=base, finetuned=finetuned, tokenizer=tokenizer, train=train,
        eval_suite=suite, base_metrics=base_metrics, finetuned_metrics=finetuned_metrics,
        config=config, judge=judge, placement=placement, on_event=events.append,
    )  # fmt: skip

    report = outcome.report
    assert isinstance(report, PatchReport)
    json.dumps(asdict(report))  # the report file's JSON
    # Screening: the proxy's top 3 (screen_candidates), one epoch each, reported best first.
    screened = [e for e in events if isinstance(e, CandidateScreened)]
    assert len(screened) == 3 and {e.epochs for e in screened} == {1}
    assert report.selection is not None
    assert {r.example_id for r in report.selection.screening} == {
        e.reading.example_id for e in screened
    }
    violations = [r.violation for r in report.selection.screening]
    assert violations == sorted(violations)
    assert report.selection.chosen.id == report.example_id and report.selection.chosen.components
    # Each attempt: started, at most max_epochs probe readings, verified on the suites.
    attempts = [e for e in events if isinstance(e, PatchAttemptStarted)]
    verified = [e for e in events if isinstance(e, PatchVerified)]
    assert 1 <= len(attempts) == len(verified) == len(report.attempts) <= 2
    assert [a.example_id for a in attempts] == [a.example_id for a in report.attempts]
    assert [e.accepted for e in verified] == [a.accepted for a in report.attempts]
    verifying = [e for e in events if isinstance(e, StageEntered)]
    assert [(e.stage, e.attempt) for e in verifying] == [
        (PipelineStage.VERIFYING, n) for n in range(1, len(attempts) + 1)
    ]
    epochs = [e for e in events if isinstance(e, PatchEpochEnded)]
    assert epochs and all(1 <= e.reading.epoch <= 2 for e in epochs)
    assert isinstance(events[0], Notice) and isinstance(events[1], CandidatesRanked)
    # The kept attempt's numbers.
    assert report.accepted == (not report.reasons)
    assert report.cer is not None and report.cer.k == 2
    assert 1 <= report.best_epoch <= report.epochs <= 2
    assert outcome.metrics is not None and outcome.model is not None
    # What the patch itself cost: the stage less its last gate evaluation and the report set.
    assert all(attempt.verify_seconds > 0 for attempt in report.attempts)
    assert 0 < report.choice_seconds < report.total_seconds


def test_one_shot_prepares_no_anchors_and_sft_does(tokenizer) -> None:
    import torch

    placement = Placement(torch.device("cpu"), None)
    base, finetuned = (build_tiny_model(len(tokenizer), seed=seed) for seed in (1, 2))
    train = load_chat_jsonl(data.DEMO_TRAIN)[:6]
    anchors = {}
    for strategy in (PatchStrategy.ONE_SHOT, PatchStrategy.SFT):
        setup = prepare_patch(
            SMALL, base_model=base, finetuned=finetuned, tokenizer=tokenizer, train=train,
            strategy=strategy, seed=0, n_candidates=2, judge=get_judge("keyword"),
            placement=placement, on_event=lambda event: None,
        )  # fmt: skip
        assert setup.config.strategy == strategy
        anchors[strategy] = [anchor.name for anchor in setup.anchors]
    assert anchors[PatchStrategy.ONE_SHOT] == []
    assert "benign" in anchors[PatchStrategy.SFT]


def test_the_settings_module_does_not_import_torch() -> None:
    code = (
        "import sys, workers.ml.config as c; c.PipelineConfig(base='b', train='t'); "
        "sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
