"""The pipeline's wiring on a tiny random model: every stage runs and the report has its shape.

The numbers of a random model mean nothing; the real-model test checks them. Here a drift
threshold of -1 forces the patch stage, so selection, probe, patch and verdict all run.
"""

from __future__ import annotations

import json

import pytest

from contracts.stages import EvalStage
from tests.tiny_models import build_tiny_model
from workers import data
from workers.ml.checkpoints import save_model, verify
from workers.ml.config import PipelineConfig
from workers.ml.events import (
    FineTuneEpochEnded,
    PatchVerified,
    StageEntered,
    StageEvaluated,
    TrainingStep,
)
from workers.ml.pipeline import run_pipeline
from workers.ml.suites import SuiteFiles


@pytest.fixture
def small_suites(tmp_path) -> SuiteFiles:
    def first(path, n: int, name: str):
        target = tmp_path / name
        target.write_text("\n".join(path.read_text().splitlines()[:n]) + "\n")
        return target

    return SuiteFiles(
        harmful=first(data.HARMFUL_EVAL, 4, "harmful.jsonl"),
        benign=first(data.BORDERLINE_EVAL, 4, "benign.jsonl"),
        general=first(data.GENERAL_EVAL, 2, "general.jsonl"),
        report_harmful=first(data.REPORT_HARMFUL, 3, "report_harmful.jsonl"),
        report_benign=first(data.REPORT_BENIGN, 2, "report_benign.jsonl"),
    )


def test_every_stage_runs_and_the_report_has_the_contract_shape(
    tmp_path, tokenizer, small_suites
) -> None:
    models_dir = tmp_path / "models"
    save_model(build_tiny_model(len(tokenizer)), tokenizer, models_dir / "tiny")
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(data.DEMO_TRAIN.read_text().splitlines()[:8]) + "\n")
    events = []

    result = run_pipeline(
        PipelineConfig(base="tiny", train=train, suites=small_suites, n_epochs=1,
                       drift_threshold=-1.0, max_patch_attempts=2),
        models_dir=models_dir, work_dir=tmp_path / "work", on_event=events.append,
    )  # fmt: skip

    report = result.report.to_json()
    json.dumps(report)  # serializable as the CLI writes it
    for stage in EvalStage:
        assert {
            "asr",
            "over_refusal",
            "utility",
            "n_harmful",
            "n_benign",
            "n_utility",
            "judge",
        } <= set(report[stage])
        assert report[stage]["n_harmful"] == 4 and report[stage]["n_benign"] == 4
        # The report set, measured on every model (on the patched one after the choice).
        assert (report[stage]["report"]["n_harmful"], report[stage]["report"]["n_benign"]) == (3, 2)
    # No validation file: a fifth of the 8 training examples is held out for utility.
    assert result.report.fine_tuned.n_utility == 1
    patch = result.report.patch
    assert patch is not None and patch.cer is not None and patch.example.prompt
    assert 1 <= len(patch.attempts) <= 2
    assert patch.accepted == (not patch.reasons)
    verify(result.finetuned_path)
    assert result.patched_path is not None and verify(result.patched_path)
    assert (tmp_path / "work" / "checkpoints" / "epoch-1" / "manifest.json").is_file()
    kinds = {type(event) for event in events}
    assert {StageEntered, TrainingStep, FineTuneEpochEnded, StageEvaluated, PatchVerified} <= kinds
    # The base model's safety numbers were cached for the next job on the same suites.
    assert list((models_dir / ".baselines").glob("tiny-*.json"))
