"""The base model's safety numbers, cached per model, suite and judge.

Drift is measured against them, so every job on the same base model and suite version compares
against the same reference without re-running ~300 generations.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.ml.evaluate import StageMetrics
from workers.ml.generation import DECODER
from workers.ml.suites import SuiteFiles


def baseline_path(base_path: Path, suites: SuiteFiles, judge_name: str) -> Path:
    # Readings made with another decoder are other numbers: the decoder is part of the key.
    key = f"{base_path.name}-{suites.fingerprint()}-{judge_name}-{DECODER}"
    return base_path.parent / ".baselines" / f"{key}.json"


def load_baseline(base_path: Path, suites: SuiteFiles, judge_name: str) -> StageMetrics | None:
    path = baseline_path(base_path, suites, judge_name)
    if not path.is_file():
        return None
    return StageMetrics.from_dict(json.loads(path.read_text()))


def store_baseline(
    base_path: Path, suites: SuiteFiles, judge_name: str, metrics: StageMetrics
) -> Path:
    path = baseline_path(base_path, suites, judge_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.summary(), indent=2))
    return path
