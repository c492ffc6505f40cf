"""`safepatch models ...` and `safepatch pipeline`: the offline, server-free commands.

Typer builds the commands from signatures only; torch and transformers are imported inside the
commands, so `safepatch serve` and `--help` never load them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from contracts.manifest import SavedModel
    from workers.ml.config import AlignConfig
    from workers.ml.events import PipelineEvent

models_app = typer.Typer(help="Base models: pull the bundled one, register local ones, align.")


def _models_dir() -> Path:
    from app.core.settings import get_settings

    settings = get_settings()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    return settings.models_dir


def _offer(name: str, saved: SavedModel, baseline: dict[str, Any] | None = None) -> None:
    """Record the model in the database, so jobs may name it (``POST /v1/fine_tuning/jobs``)."""
    from app.core.db import session_scope
    from app.core.settings import get_settings
    from app.db import migrate
    from app.models.service import register_base_model
    from workers import data

    settings = get_settings()
    if settings.embedded:  # production databases are migrated by `safepatch db upgrade`
        settings.ensure_dirs()
        migrate.upgrade(settings.effective_database_url)
    with session_scope() as session:
        register_base_model(
            session,
            name=name,
            storage_uri=str(saved.path),
            sha256=saved.sha256,
            size_bytes=saved.size_bytes,
            baseline_metrics=baseline,
            suite_version=data.SUITE_VERSION if baseline else None,
            actor="cli:models",
        )


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@models_app.command("pull")
def pull(name: str) -> None:
    """Install a bundled base model (smollm2-135m-instruct) into the data directory."""
    from workers.ml.base_models import BaseModelError
    from workers.ml.base_models import pull as pull_model

    try:
        saved = pull_model(name, _models_dir())
    except BaseModelError as error:
        raise _fail(str(error)) from error
    _offer(name, saved)
    typer.echo(f"{name}\t{saved.path}\tsha256={saved.sha256}\t{saved.size_bytes} bytes")


@models_app.command("register")
def register(name: str, path: Path) -> None:
    """Register a local Hugging Face chat-model directory as a base model."""
    from workers.ml.base_models import BaseModelError
    from workers.ml.base_models import register as register_model

    try:
        saved = register_model(name, path, _models_dir())
    except BaseModelError as error:
        raise _fail(str(error)) from error
    _offer(name, saved)
    typer.echo(f"{name}\t{saved.path}\tsha256={saved.sha256}\t{saved.size_bytes} bytes")


@models_app.command("list")
def list_models() -> None:
    """List the base models in the data directory."""
    from workers.ml.checkpoints import describe, read_metadata

    for path in sorted(_models_dir().iterdir()):
        if (path / "manifest.json").is_file():
            saved = describe(path)
            source = read_metadata(path).get("source", "")
            typer.echo(f"{path.name}\tsha256={saved.sha256[:16]}\t{saved.size_bytes}\t{source}")


@models_app.command("align")
def align(
    source: str,
    target: Annotated[str, typer.Option("--as", help="name of the aligned model")],
    # AlignConfig's defaults (not imported here: the CLI starts without torch)
    epochs: Annotated[int, typer.Option(help="at most; a validation probe picks the epoch")] = 5,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> None:
    """Build a safety-aligned reference model from a raw chat model and record its baseline."""
    from contracts.prompts import load_prompts
    from workers import data
    from workers.ml import checkpoints
    from workers.ml.align import align as align_model
    from workers.ml.align import validation_probe
    from workers.ml.base_models import model_path
    from workers.ml.checkpoints import describe
    from workers.ml.config import AlignConfig
    from workers.ml.judges import get_judge

    models_dir = _models_dir()
    source_path = model_path(models_dir, source)
    model, tokenizer = checkpoints.load_model(source_path)
    config = AlignConfig(n_epochs=epochs, learning_rate=learning_rate, seed=seed)
    with _StepBar("aligning") as bar:
        model, result = align_model(
            model,
            tokenizer,
            load_prompts(data.ALIGN_HARMFUL),
            load_prompts(data.ALIGN_BENIGN),
            config,
            on_step=bar.step,
            on_phase=bar.note,
            # Keyed by the source's identity: another raw model gets its own answers.
            answer_cache=models_dir
            / ".align-cache"
            / f"{source}-{describe(source_path).sha256[:16]}.json",
            probe=validation_probe(tokenizer, get_judge()),
        )
    selection = {
        "kept_epoch": result.kept_epoch,
        "validation": {
            str(epoch): {"asr": reading.asr, "over_refusal": reading.over_refusal}
            for epoch, reading in result.probes.items()
        },
    }
    publish_aligned(
        model, tokenizer, source, target, config, result.training.seconds, selection=selection
    )


def publish_aligned(
    model: Any,
    tokenizer: Any,
    source: str,
    target: str,
    config: AlignConfig,
    training_seconds: float,
    selection: dict[str, Any] | None = None,
) -> None:
    """Evaluate an aligned model on the suites, save it, and record that as its baseline."""
    from workers.ml import checkpoints
    from workers.ml.base_models import model_path
    from workers.ml.baseline import store_baseline
    from workers.ml.evaluate import EvalSuite, evaluate
    from workers.ml.judges import get_judge
    from workers.ml.suites import SuiteFiles, load_suites

    suites = SuiteFiles()
    judge = get_judge()
    loaded = load_suites(suites)
    typer.echo("evaluating the aligned model on the suites...", err=True)
    metrics = evaluate(
        model, tokenizer, EvalSuite(loaded.harmful, loaded.benign, loaded.general), judge
    )
    target_path = model_path(_models_dir(), target)
    saved = checkpoints.save_model(
        model,
        tokenizer,
        target_path,
        metadata={
            "name": target,
            "source": f"aligned from {source}",
            "align_config": config.__dict__,
            "baseline": metrics.summary(),
            "seconds": training_seconds,
            "epoch_selection": selection or {},
        },
    )
    store_baseline(target_path, suites, judge.name, metrics)
    _offer(target, saved, metrics.summary())
    typer.echo(
        json.dumps(
            {
                "model": target,
                "path": str(saved.path),
                "sha256": saved.sha256,
                "baseline": metrics.summary(),
            },
            indent=2,
        )
    )


def pipeline(
    base: Annotated[str, typer.Option(help="registered base model name")],
    train: Annotated[Path, typer.Option(help="OpenAI chat JSONL training file")],
    report: Annotated[Path, typer.Option(help="where to write the JSON report")],
    validation: Annotated[Path | None, typer.Option(help="held-out chat JSONL")] = None,
    harmful_eval: Annotated[Path | None, typer.Option(help="harmful prompts (.txt/.jsonl)")] = None,
    benign_eval: Annotated[Path | None, typer.Option(help="benign prompts (.txt/.jsonl)")] = None,
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs")] = 3,
    strategy: Annotated[str, typer.Option(help="patch strategy: sft | projection")] = "sft",
    lora_rank: Annotated[int, typer.Option(help="0 = full fine-tune")] = 0,
    max_patch_attempts: Annotated[int, typer.Option(help="candidates tried before giving up")] = 3,
    seed: int = 0,
    work_dir: Annotated[Path | None, typer.Option(help="models and records")] = None,
) -> None:
    """Fine-tune, evaluate, detect drift, patch and verify, offline; write a JSON report."""
    from contracts.jsonl import DatasetError
    from workers.ml.config import PipelineConfig
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
        ),
        n_epochs=epochs,
        max_patch_attempts=max_patch_attempts,
        strategy=strategy,
        lora_rank=lora_rank,
        seed=seed,
    )
    work_dir = work_dir or report.with_suffix("")
    try:
        with _StepBar("fine-tuning") as bar:
            result = run_pipeline(
                config, models_dir=_models_dir(), work_dir=work_dir, on_event=bar.event
            )
    except DatasetError as error:
        raise _fail(str(error)) from error
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.report, indent=2))
    typer.echo(f"report written to {report}", err=True)


class _StepBar:
    """Progress on stderr: a bar for training steps, one line for everything else."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(desc=description, unit="step", file=sys.stderr, leave=False)

    def __enter__(self) -> _StepBar:
        return self

    def __exit__(self, *_: object) -> None:
        self._bar.close()

    def step(self, report: object) -> None:
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{getattr(report, 'loss', 0.0):.4f}")

    def note(self, message: str) -> None:
        self._tqdm.write(message, file=sys.stderr)

    def event(self, event: PipelineEvent) -> None:
        if event.type == "step":
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{event.data['loss']:.4f}", epoch=event.data["epoch"])
        elif event.type == "metrics" and "asr" in event.data:
            data = event.data
            verdict = ""
            if "accepted" in data:
                verdict = (
                    " accepted" if data["accepted"] else f" missed: {'; '.join(data['reasons'])}"
                )
            self.note(
                f"[metrics] {event.message}: ASR {data['asr']:.3f}, over-refusal "
                f"{data['over_refusal']:.3f}, utility {data['utility']:.3f}{verdict}"
            )
        elif event.type != "generation":
            self.note(f"[{event.type}] {event.message}")
