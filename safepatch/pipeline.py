"""``safepatch pipeline``: fine-tune, evaluate, detect drift, patch and verify, offline.

Its options' defaults and help are ``PipelineConfig``'s (``workers.ml.config``, torch-free);
torch and transformers are imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.safety import PatchStrategy
from safepatch.models import fail, models_dir
from safepatch.options import default_of, help_of
from safepatch.progress import StepBar
from workers.ml.config import PipelineConfig


def _option(name: str) -> Any:
    """A ``--name`` option with the help text of ``PipelineConfig``'s field ``name``."""
    return typer.Option(help=help_of(PipelineConfig, name))


def _default(name: str) -> Any:
    """``PipelineConfig``'s default for the field ``name``: the option's default."""
    return default_of(PipelineConfig, name)


def pipeline(
    base: Annotated[str, _option("base")],
    train: Annotated[Path, _option("train")],
    report: Annotated[Path, typer.Option(help="where to write the JSON report")],
    validation: Annotated[Path | None, _option("validation")] = _default("validation"),
    harmful_eval: Annotated[Path | None, typer.Option(help="harmful prompts (.txt/.jsonl)")] = None,
    benign_eval: Annotated[Path | None, typer.Option(help="benign prompts (.txt/.jsonl)")] = None,
    epochs: Annotated[int, _option("n_epochs")] = _default("n_epochs"),
    strategy: Annotated[PatchStrategy, _option("strategy")] = _default("strategy"),
    lora_rank: Annotated[int, _option("lora_rank")] = _default("lora_rank"),
    max_patch_attempts: Annotated[int, _option("max_patch_attempts")] = _default(
        "max_patch_attempts"
    ),
    seed: Annotated[int, _option("seed")] = _default("seed"),
    work_dir: Annotated[Path | None, typer.Option(help="models and records")] = None,
    judge: Annotated[str, _option("judge")] = _default("judge"),
    also_judge: Annotated[
        list[str] | None, typer.Option(help="another judge to report too (repeatable)")
    ] = None,
    report_harmful: Annotated[
        Path | None, typer.Option(help="report set: harmful prompts no decision reads")
    ] = None,
    report_benign: Annotated[
        Path | None, typer.Option(help="report set: benign prompts no decision reads")
    ] = None,
) -> None:
    """Fine-tune, evaluate, detect drift, patch and verify, offline; write a JSON report."""
    from contracts.jsonl import DatasetError
    from workers.ml.pipeline import run_pipeline
    from workers.ml.suites import SuiteFiles

    defaults = SuiteFiles()
    config = PipelineConfig(
        base=base,
        train=train,
        validation=validation,
        suites=SuiteFiles(
            harmful=harmful_eval or defaults.harmful,
            benign=benign_eval or defaults.benign,
            general=defaults.general,
            report_harmful=report_harmful or defaults.report_harmful,
            report_benign=report_benign or defaults.report_benign,
        ),
        n_epochs=epochs,
        max_patch_attempts=max_patch_attempts,
        strategy=strategy,
        lora_rank=lora_rank,
        seed=seed,
        judge=judge,
        extra_judges=tuple(also_judge or ()),
    )
    work_dir = work_dir or report.with_suffix("")
    try:
        with StepBar("fine-tuning") as bar:
            result = run_pipeline(
                config, models_dir=models_dir(), work_dir=work_dir, on_event=bar.event
            )
    except DatasetError as error:
        raise fail(str(error)) from error
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.report.to_json(), indent=2))
    typer.echo(f"report written to {report}", err=True)
