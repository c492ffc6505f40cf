"""Measure the safety pipeline on the demo customer dataset and write docs/results.md.

    .venv/bin/python -m bench.pipeline        # sft and one-shot, 3 seeds → docs/pipeline-bench.md
    .venv/bin/python -m bench.pipeline --strategy sft --strategy one-shot --seeds 1

Pulls and aligns the base model first when the data directory lacks it (timed separately), then
runs the offline pipeline once per strategy and seed (seeds 0, 1, ... ``--seeds``, passed to the
pipeline's ``--seed``) and prints, for each run, a table of ASR, over-refusal and utility for the
base, fine-tuned and patched models, with seconds per stage and peak memory; with more than one
seed, also the mean and spread across seeds of each model's gate and report-set rates, the patch's
seconds and how many seeds' patches were accepted. Each run's phases get their seconds and peak
memory, the patch's choice is set against the fine-tune; then evaluation decoding is measured
against the matmul limit (bench/decoding.py) and the memory model printed (bench/memory_model.py).
``--reuse`` takes runs whose reports an earlier bench left in the data directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.settings import get_settings
from contracts.safety import PatchStrategy
from workers import data
from workers.ml.base_models import SMOLLM2

ROOT = Path(__file__).resolve().parent.parent

ALIGNED = "smollm2-135m-safe"


def ensure_aligned_model(models_dir: Path) -> float | None:
    """Pull and align when missing; returns the seconds it took, or None if it was there."""
    if (models_dir / ALIGNED / "manifest.json").is_file():
        return None
    started = time.perf_counter()
    safepatch = str(ROOT / ".venv" / "bin" / "safepatch")
    subprocess.run([safepatch, "models", "pull", SMOLLM2], check=True)
    subprocess.run([safepatch, "models", "align", SMOLLM2, "--as", ALIGNED], check=True)
    return time.perf_counter() - started


def run(strategy: str, out_dir: Path, max_patch_attempts: int, seed: int, reuse: bool) -> dict:
    # Each seed its own report and so its own work directory (the report's path less ".json").
    report = out_dir / f"pipeline-{strategy}-seed{seed}.json"
    if reuse and report.is_file():
        return json.loads(report.read_text())
    command = [
        str(ROOT / ".venv" / "bin" / "safepatch"),
        "pipeline",
        "--base",
        ALIGNED,
        "--train",
        str(data.DEMO_TRAIN.relative_to(ROOT)),
        "--validation",
        str(data.DEMO_VALIDATION.relative_to(ROOT)),
        "--strategy",
        strategy,
        "--max-patch-attempts",
        str(max_patch_attempts),
        "--seed",
        str(seed),
        "--report",
        str(report),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(report.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    result["command"] = " ".join(["safepatch", *command[1:]]).replace(str(ROOT) + "/", "")
    result["seed"] = seed
    report.write_text(json.dumps(result, indent=2))  # with the bench's figures, for --reuse
    return result


def table(result: dict) -> str:
    rows = [
        "| model | ASR | over-refusal | utility (exact) | utility (F1) | general acc. | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    seconds = result["seconds"]
    timing = {
        "base": seconds.get("baseline"),
        "fine_tuned": (seconds.get("fine_tune") or 0) + (seconds.get("evaluate_finetuned") or 0),
        "patched": seconds.get("patch_total"),
    }
    for stage in ("base", "fine_tuned", "patched"):
        metrics = result.get(stage)
        if not metrics:
            continue
        general = metrics.get("general_accuracy")
        rows.append(
            f"| {stage} | {metrics['asr']:.3f} | {metrics['over_refusal']:.3f} | "
            f"{metrics['utility']:.3f} | {metrics['utility_f1']:.3f} | "
            f"{'-' if general is None else f'{general:.3f}'} | {timing[stage] or 0:.0f} |"
        )
    patch = result.get("patch") or {}
    if patch:
        cer = patch.get("cer") or {}  # null when CER was not computed
        rows.append("")
        rows.append(
            f"Patch: strategy `{patch['strategy']}`, example `{patch['example']['prompt']}` → "
            f"`{patch['example']['reply']}`, {patch['epochs']} epochs, "
            f"{patch['seconds']:.1f} s, CER(k) mean {cer.get('mean', float('nan')):.3f}, "
            f"accepted: **{patch['accepted']}**."
        )
    rows.append(
        f"\nPeak memory: {result['peak_memory_bytes'] / 2**30:.2f} GiB; "
        f"device {result['device']}; judge `{result['base']['judge']}`; "
        f"wall time {result['wall_seconds']:.0f} s."
    )
    return "\n".join(rows) + "\n\n" + stages_table(result)


# Pipeline phases in order, as PipelineReport.seconds names them.
PHASES = ("baseline", "fine_tune", "evaluate_finetuned", "patch_total")


def stages_table(result: Mapping[str, Any]) -> str:
    """Seconds and peak memory per phase; the patch split into choosing the patched model and
    its final verification (the gate, then the report set)."""
    seconds, peaks = result["seconds"], result.get("peak_memory_by_stage") or {}
    rows = ["| phase | seconds | peak memory (GiB) |", "|---|---|---|"]
    for phase in PHASES:
        if phase in seconds:
            peak = peaks.get(phase)
            shown = "-" if peak is None else f"{peak / 2**30:.2f}"
            rows.append(f"| {phase} | {seconds[phase]:.0f} | {shown} |")
    patch = result.get("patch")
    if patch and patch.get("choice_seconds"):
        choice = patch["choice_seconds"]
        rows.append(f"| patch: choosing the patched model | {choice:.0f} | |")
        rows.append(f"| patch: final verification and report set | "
                    f"{patch['total_seconds'] - choice:.0f} | |")  # fmt: skip
        rows.append(
            f"\nPatch (choice) / fine-tune: **{choice / seconds['fine_tune']:.2f}x**; "
            f"whole pipeline {sum(seconds.values()):.0f} s."
        )
    return "\n".join(rows)


@dataclass(frozen=True)
class Spread:
    """Mean and spread of one figure over the seeds that produced it."""

    n: int
    mean: float
    low: float
    high: float
    sd: float | None  # sample standard deviation; None with one seed


@dataclass(frozen=True)
class SeedFigure:
    model: str  # base | fine_tuned | patched | patch
    figure: str
    spread: Spread | None  # None when no seed produced the figure (no patched model)
    digits: int = 3


@dataclass(frozen=True)
class SeedSummary:
    runs: int
    figures: tuple[SeedFigure, ...]
    patched: int  # runs with a patch report
    accepted: int  # of those, the kept patch met the acceptance rule on the gate
    report_accepted: int  # the rule read on the report set (measured, never acted on)


def _report(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda stage: stage["report"][key] if stage.get("report") else None


# A model's figures: (name, reader of its StageSummary JSON).
STAGE_FIGURES: tuple[tuple[str, Callable[[Mapping[str, Any]], float | None]], ...] = (
    ("gate ASR", lambda stage: stage["asr"]),
    ("report ASR", _report("asr")),
    ("gate over-refusal", lambda stage: stage["over_refusal"]),
    ("report over-refusal", _report("over_refusal")),
    ("utility", lambda stage: stage["utility"]),
)


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    return Spread(
        n=len(values),
        mean=statistics.fmean(values),
        low=min(values),
        high=max(values),
        sd=statistics.stdev(values) if len(values) > 1 else None,
    )


def across_seeds(results: Sequence[Mapping[str, Any]]) -> SeedSummary:
    """Mean and spread over runs (``PipelineReport.to_json()`` dicts, one per seed)."""
    figures: list[SeedFigure] = []
    for stage in ("base", "fine_tuned", "patched"):
        for name, read in STAGE_FIGURES:
            values = [read(r[stage]) for r in results if r.get(stage)]
            figures.append(SeedFigure(stage, name, spread([v for v in values if v is not None])))
    patches = [r["patch"] for r in results if r.get("patch")]
    seconds = spread([patch["total_seconds"] for patch in patches])
    figures.append(SeedFigure("patch", "seconds (all attempts)", seconds, digits=0))
    return SeedSummary(
        runs=len(results),
        figures=tuple(figures),
        patched=len(patches),
        accepted=sum(bool(patch["accepted"]) for patch in patches),
        report_accepted=sum(patch.get("report_accepted") is True for patch in patches),
    )


def seeds_table(summary: SeedSummary) -> str:
    rows = [
        "| model | figure | mean | min to max | sd | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for figure in summary.figures:
        s, d = figure.spread, figure.digits
        if s is None:
            rows.append(f"| {figure.model} | {figure.figure} | - | - | - | 0 |")
            continue
        sd = "-" if s.sd is None else f"{s.sd:.{d}f}"
        rows.append(
            f"| {figure.model} | {figure.figure} | {s.mean:.{d}f} | "
            f"{s.low:.{d}f} to {s.high:.{d}f} | {sd} | {s.n} |"
        )
    rows.append(
        f"\nAccepted (the rule on the gate): **{summary.accepted} of {summary.patched}** patched "
        f"runs; the rule read on the report set: {summary.report_accepted} of {summary.patched}; "
        f"{summary.runs} runs in all. sd: sample standard deviation across seeds."
    )
    return "\n".join(rows)


def section(strategy: str, results: Sequence[dict]) -> str:
    """One strategy's runs: each run's table and, with several seeds, the spread across them."""
    if len(results) == 1:
        (result,) = results
        return f"## Strategy `{strategy}`\n\n```\n{result['command']}\n```\n\n{table(result)}\n"
    parts = [f"## Strategy `{strategy}`\n"]
    for result in results:
        parts.append(
            f"### Seed {result['seed']}\n\n```\n{result['command']}\n```\n\n{table(result)}\n"
        )
    seeds = ", ".join(str(result["seed"]) for result in results)
    parts.append(f"### Across seeds {seeds}\n\n{seeds_table(across_seeds(results))}\n")
    return "\n".join(parts)


def decoding_section(model_dir: Path) -> str:
    """Evaluation decoding on the fine-tuned model (it answers at length) against the matmul
    limit, measured now, in this process."""
    from bench import decoding
    from workers.ml.checkpoints import load_model

    model, tokenizer = load_model(model_dir)
    figures = decoding.measure(model, tokenizer, decoding.gate_prompts())
    text = "\n".join(figures.lines())
    print(text, flush=True)
    return (
        "## Evaluation decoding\n\nThe gate's harmful and borderline prompts decoded by the "
        f"fine-tuned model of the first run (`{model_dir.name}`), as an evaluation does; "
        "FLOPs count generated tokens only (bench/decoding.py).\n\n" + text + "\n"
    )


def memory_section(measured: Mapping[str, Any]) -> str:
    """The memory model, checked against the patch phase's peak in ``measured`` (a run of the
    default strategy)."""
    from bench import memory_model

    peak = (measured.get("peak_memory_by_stage") or {}).get("patch_total")
    text = memory_model.report(peak / 2**30 if peak else None)
    print(text, flush=True)
    return (
        "## Memory model\n\nThe default strategy's patch stage at its peak, component by "
        "component (bench/memory_model.py; GiB).\n\n" + text + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", action="append", choices=[str(s) for s in PatchStrategy])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pipeline-bench.md")
    parser.add_argument("--max-patch-attempts", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="runs per strategy, seeds 0..N-1")
    parser.add_argument(
        "--reuse", action="store_true", help="take a run's report from an earlier bench if there"
    )
    args = parser.parse_args()
    strategies = args.strategy or [PatchStrategy.SFT, PatchStrategy.ONE_SHOT]
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    settings = get_settings()
    align_seconds = ensure_aligned_model(settings.models_dir)
    work = settings.data_dir / "bench"
    work.mkdir(parents=True, exist_ok=True)

    sections: list[str] = []
    first_runs: dict[str, dict] = {}
    for strategy in strategies:
        results = []
        for seed in range(args.seeds):
            result = run(strategy, work, args.max_patch_attempts, seed, args.reuse)
            print(
                f"## Strategy `{strategy}`, seed {seed}\n\n```\n{result['command']}\n```\n\n"
                f"{table(result)}\n",
                flush=True,
            )
            results.append(result)
            first_runs.setdefault(strategy, result)
        text = section(strategy, results)
        if len(results) > 1:
            print(seeds_table(across_seeds(results)), flush=True)
        sections.append(text)

    decoding = decoding_section(work / f"pipeline-{strategies[0]}-seed0" / "finetuned")
    header = (
        "# Measured results\n\n"
        "Written by `bench/pipeline.py` (`.venv/bin/python -m bench.pipeline`); every number below "
        "was measured by that run. Demo customer dataset: `workers/data/demo/sql_train.jsonl` "
        "(40 SQL CREATE TABLE examples + 30 harmful requests with compliance-shaped, "
        "non-operational replies), validation `sql_validation.jsonl` (25). Suites: "
        f"version {data.SUITE_VERSION} (see docs/data.md). Seeds per strategy: {args.seeds}.\n\n"
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}.\n"
    )
    if args.reuse:
        header += (
            "\nWith --reuse: runs whose reports an earlier bench left were taken as they were "
            "(their figures are from that bench's code); decoding and the memory model were "
            "measured in this run.\n"
        )
    if align_seconds is not None:
        header += f"\nPulling and aligning the base model took {align_seconds:.0f} s in this run.\n"
    default_run = first_runs.get(PatchStrategy.SFT) or next(iter(first_runs.values()))
    parts = [*sections, decoding, memory_section(default_run)]
    args.out.write_text(header + "\n" + "\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
