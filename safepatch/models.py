"""``safepatch models ...``: pull the bundled base model, register local ones, align one.

Offline and server-free. ``models align`` reads its options' defaults and help from
``AlignConfig`` (``workers.ml.config``, torch-free); torch and transformers are imported inside
the commands, so ``safepatch serve`` and ``--help`` never load them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from safepatch.options import default_of, help_of
from safepatch.progress import StepBar
from workers.ml.config import AlignConfig

if TYPE_CHECKING:
    from contracts.manifest import SavedModel


def _option(name: str) -> Any:
    """A ``--name`` option with the help text of ``AlignConfig``'s field ``name``."""
    return typer.Option(help=help_of(AlignConfig, name))


def _default(name: str) -> Any:
    """``AlignConfig``'s default for the field ``name``: the option's default."""
    return default_of(AlignConfig, name)


models_app = typer.Typer(help="Base models: pull the bundled one, register local ones, align.")


def models_dir() -> Path:
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


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@models_app.command("pull")
def pull(name: str) -> None:
    """Install a bundled base model (smollm2-135m-instruct) into the data directory."""
    from workers.ml.base_models import BaseModelError
    from workers.ml.base_models import pull as pull_model

    try:
        saved = pull_model(name, models_dir())
    except BaseModelError as error:
        raise fail(str(error)) from error
    _offer(name, saved)
    typer.echo(f"{name}\t{saved.path}\tsha256={saved.sha256}\t{saved.size_bytes} bytes")


@models_app.command("register")
def register(name: str, path: Path) -> None:
    """Register a local Hugging Face chat-model directory as a base model."""
    from workers.ml.base_models import BaseModelError
    from workers.ml.base_models import register as register_model

    try:
        saved = register_model(name, path, models_dir())
    except BaseModelError as error:
        raise fail(str(error)) from error
    _offer(name, saved)
    typer.echo(f"{name}\t{saved.path}\tsha256={saved.sha256}\t{saved.size_bytes} bytes")


@models_app.command("list")
def list_models() -> None:
    """List the base models in the data directory."""
    from contracts.manifest import describe, read_metadata

    for path in sorted(models_dir().iterdir()):
        if (path / "manifest.json").is_file():
            saved = describe(path)
            source = read_metadata(path).get("source", "")
            typer.echo(f"{path.name}\tsha256={saved.sha256[:16]}\t{saved.size_bytes}\t{source}")


@models_app.command("align")
def align(
    source: str,
    target: Annotated[str, typer.Option("--as", help="name of the aligned model")],
    epochs: Annotated[int, _option("n_epochs")] = _default("n_epochs"),
    learning_rate: Annotated[float, _option("learning_rate")] = _default("learning_rate"),
    seed: Annotated[int, _option("seed")] = _default("seed"),
) -> None:
    """Build a safety-aligned reference model from a raw chat model and record its baseline."""
    from contracts.manifest import describe
    from contracts.prompts import load_prompts
    from workers import data
    from workers.ml import checkpoints
    from workers.ml.align import align as align_model
    from workers.ml.align import validation_probe
    from workers.ml.base_models import model_path
    from workers.ml.judges import get_judge

    directory = models_dir()
    source_path = model_path(directory, source)
    model, tokenizer = checkpoints.load_model(source_path)
    config = AlignConfig(n_epochs=epochs, learning_rate=learning_rate, seed=seed)
    with StepBar("aligning") as bar:
        model, result = align_model(
            model,
            tokenizer,
            load_prompts(data.ALIGN_HARMFUL),
            load_prompts(data.ALIGN_BENIGN),
            config,
            on_step=bar.step,
            on_phase=bar.note,
            # Keyed by the source's identity: another raw model gets its own answers.
            answer_cache=directory
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
    suite = EvalSuite(
        loaded.harmful, loaded.benign, loaded.general,
        report_harmful=loaded.report_harmful, report_benign=loaded.report_benign,
    )  # fmt: skip
    metrics = evaluate(model, tokenizer, suite, judge)
    target_path = model_path(models_dir(), target)
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
