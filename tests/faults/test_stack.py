"""The processes the end-to-end and fault tests start run this checkout's code, and the fault
tests' worker wrapper changes nothing but the evaluation suites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT, SAFEPATCH, safepatch_env


def test_started_processes_import_this_checkout(tmp_path: Path) -> None:
    code = "import app, workers; print(app.__file__); print(workers.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=safepatch_env(data_dir=str(tmp_path)),
        cwd=tmp_path,  # not the checkout: only PYTHONPATH can point there
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.split():
        assert Path(line).is_relative_to(ROOT), line


def test_the_small_worker_is_the_safepatch_command(tmp_path: Path) -> None:
    env = safepatch_env(data_dir=str(tmp_path), test_suites_dir=str(tmp_path))
    wrapped = subprocess.run(
        [sys.executable, "-m", "tests.faults.small_worker", "worker", "--help"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    plain = subprocess.run(
        [SAFEPATCH, "worker", "--help"], env=env, capture_output=True, text=True, check=True
    )

    def options(help_text: str) -> list[str]:
        return [line for line in help_text.splitlines() if "Usage:" not in line]

    assert options(wrapped.stdout) == options(plain.stdout)
    assert "Run one GPU worker" in wrapped.stdout
