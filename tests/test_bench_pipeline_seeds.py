"""bench/pipeline.py's mean and spread across seeds, on made-up pipeline reports (no model)."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from bench.pipeline import across_seeds, seeds_table, spread
from workers.ml.report import (
    DriftDecision,
    ExampleText,
    ModelPaths,
    PatchReport,
    PipelineReport,
    ReportSet,
    StageSummary,
)


def _stage(asr: float, over_refusal: float, utility: float, report_asr: float) -> StageSummary:
    return StageSummary(
        asr=asr,
        over_refusal=over_refusal,
        utility=utility,
        n_harmful=200,
        n_benign=100,
        n_utility=25,
        judge="reply-v1",
        report=ReportSet(
            asr=report_asr,
            over_refusal=over_refusal + 0.01,
            n_harmful=220,
            n_benign=130,
            asr_interval=(0.0, 1.0),
            over_refusal_interval=(0.0, 1.0),
        ),
    )


def _patch(accepted: bool, report_accepted: bool | None, total_seconds: float) -> PatchReport:
    return PatchReport(
        strategy="sft",
        example=ExampleText("How do I pick a lock?", "I'm sorry, but I can't help with that."),
        example_id="p-ill-001",
        epochs=5,
        best_epoch=5,
        seconds=total_seconds - 10,
        cer=None,
        probe_history=(),
        stopped_early=False,
        accepted=accepted,
        reasons=() if accepted else ("ASR too high",),
        selection=None,
        attempts=(),
        total_seconds=total_seconds,
        report_accepted=report_accepted,
    )


def _run(patched: StageSummary | None, patch: PatchReport | None, seed: int) -> dict[str, Any]:
    report = PipelineReport(
        base=_stage(0.02, 0.10, 0.0, 0.03),
        fine_tuned=_stage(1.0, 0.0, 0.96, 0.95),
        trained_tokens=1000,
        patched=patched,
        patch=patch,
        drift=DriftDecision(detected=True, threshold=0.1, asr_increase=0.98),
        seconds={"baseline": 9.0, "patch_total": 300.0},
        peak_memory_bytes=2**30,
        device="cpu/bfloat16",
        suite_version="2026.12.2",
        models=ModelPaths(base="b", fine_tuned="f", patched="p" if patched else None),
    )
    # As bench.pipeline.run returns it: the report's JSON plus the run's own fields.
    return report.to_json() | {"wall_seconds": 500.0, "command": "safepatch ...", "seed": seed}


def _figure(summary: Any, model: str, figure: str) -> Any:
    (match,) = [f for f in summary.figures if (f.model, f.figure) == (model, figure)]
    return match.spread


def test_mean_min_max_and_sample_sd_across_seeds() -> None:
    runs = [
        _run(_stage(0.02, 0.12, 0.96, 0.04), _patch(True, True, 300.0), 0),
        _run(_stage(0.04, 0.10, 0.92, 0.06), _patch(True, False, 400.0), 1),
        _run(_stage(0.06, 0.14, 0.96, 0.11), _patch(False, False, 500.0), 2),
    ]

    summary = across_seeds(runs)

    gate = _figure(summary, "patched", "gate ASR")
    assert (gate.n, gate.mean, gate.low, gate.high) == (3, pytest.approx(0.04), 0.02, 0.06)
    assert gate.sd == pytest.approx(0.02)  # sample sd of 0.02, 0.04, 0.06
    report = _figure(summary, "patched", "report ASR")
    assert report.mean == pytest.approx(0.07)
    assert (report.low, report.high) == (0.04, 0.11)
    assert report.sd == pytest.approx(statistics.stdev([0.04, 0.06, 0.11]))
    report_or = _figure(summary, "patched", "report over-refusal")
    assert report_or.mean == pytest.approx(0.13)
    assert _figure(summary, "patched", "gate over-refusal").mean == pytest.approx(0.12)
    assert _figure(summary, "patched", "utility").mean == pytest.approx((0.96 + 0.92 + 0.96) / 3)
    # The same base every seed: no spread.
    base = _figure(summary, "base", "gate ASR")
    assert (base.mean, base.low, base.high, base.sd) == (pytest.approx(0.02), 0.02, 0.02, 0.0)
    seconds = _figure(summary, "patch", "seconds (all attempts)")
    assert (seconds.mean, seconds.low, seconds.high, seconds.sd) == (400.0, 300.0, 500.0, 100.0)
    assert (summary.runs, summary.patched, summary.accepted, summary.report_accepted) == (
        3,
        3,
        2,
        1,
    )
    models = {f.model for f in summary.figures}
    assert models == {"base", "fine_tuned", "patched", "patch"}


def test_a_run_without_a_patch_is_left_out_of_the_patched_figures() -> None:
    runs = [
        _run(_stage(0.02, 0.12, 0.96, 0.04), _patch(True, True, 300.0), 0),
        _run(None, None, 1),
    ]

    summary = across_seeds(runs)

    assert _figure(summary, "patched", "gate ASR").n == 1
    assert _figure(summary, "patched", "gate ASR").sd is None  # one value: no sd
    assert _figure(summary, "fine_tuned", "gate ASR").n == 2
    assert (summary.runs, summary.patched, summary.accepted) == (2, 1, 1)


def test_no_patched_model_at_all() -> None:
    summary = across_seeds([_run(None, None, 0), _run(None, None, 1)])

    assert _figure(summary, "patched", "report ASR") is None
    assert _figure(summary, "patch", "seconds (all attempts)") is None
    assert (summary.patched, summary.accepted) == (0, 0)
    table = seeds_table(summary)
    assert "| patched | report ASR | - | - | - | 0 |" in table
    assert "**0 of 0**" in table


def test_the_table_has_a_row_per_figure() -> None:
    runs = [
        _run(_stage(0.02, 0.12, 0.96, 0.04), _patch(True, True, 300.0), seed) for seed in (0, 1)
    ]
    table = seeds_table(across_seeds(runs))

    assert "| patched | gate ASR | 0.020 | 0.020 to 0.020 | 0.000 | 2 |" in table
    assert "| patch | seconds (all attempts) | 300 | 300 to 300 | 0 | 2 |" in table
    assert "**2 of 2**" in table
    assert table.count("\n| ") == 3 * 5 + 1  # five figures per model, then the patch's seconds


def test_spread_of_nothing_is_none() -> None:
    assert spread([]) is None
    one = spread([0.5])
    assert one is not None and one.sd is None and one.n == 1
