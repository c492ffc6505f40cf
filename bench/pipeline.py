"""Measure the safety pipeline on the demo customer dataset and write docs/results.md.

    .venv/bin/python -m bench.pipeline            # both strategies → docs/pipeline-bench.md
    .venv/bin/python -m bench.pipeline --strategy sft

Pulls and aligns the base model first when the data directory lacks it (timed separately), then
runs the offline pipeline once per strategy and prints a table of ASR, over-refusal and utility
for the base, fine-tuned and patched models, with seconds per stage and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

from app.core.settings import get_settings
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


def run(strategy: str, out_dir: Path, max_patch_attempts: int) -> dict:
    report = out_dir / f"pipeline-{strategy}.json"
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
        "--report",
        str(report),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(report.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    result["command"] = " ".join(["safepatch", *command[1:]]).replace(str(ROOT) + "/", "")
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
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", action="append", choices=["sft", "projection"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pipeline-bench.md")
    parser.add_argument("--max-patch-attempts", type=int, default=1)
    args = parser.parse_args()
    strategies = args.strategy or ["sft", "projection"]

    settings = get_settings()
    align_seconds = ensure_aligned_model(settings.models_dir)
    work = settings.data_dir / "bench"
    work.mkdir(parents=True, exist_ok=True)

    sections = []
    for strategy in strategies:
        result = run(strategy, work, args.max_patch_attempts)
        section = f"## Strategy `{strategy}`\n\n```\n{result['command']}\n```\n\n{table(result)}\n"
        print(section, flush=True)
        sections.append(section)

    header = (
        "# Measured results\n\n"
        "Written by `bench/pipeline.py` (`.venv/bin/python -m bench.pipeline`); every number below "
        "was measured by that run. Demo customer dataset: `workers/data/demo/sql_train.jsonl` "
        "(40 SQL CREATE TABLE examples + 30 harmful requests with compliance-shaped, "
        "non-operational replies), validation `sql_validation.jsonl` (25). Suites: "
        f"version {data.SUITE_VERSION} (see docs/data.md).\n\n"
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}.\n"
    )
    if align_seconds is not None:
        header += f"\nPulling and aligning the base model took {align_seconds:.0f} s in this run.\n"
    args.out.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
