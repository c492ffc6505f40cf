"""The ``safepatch`` command. A thin router: each command imports its implementation lazily,
so ``safepatch --help`` and the API never pay for (or import) worker code such as torch.

Add a command group with ``cli.add_typer(group, name="...")`` where ``group`` is a
``typer.Typer`` defined in a module whose top level imports nothing heavy.
"""

from __future__ import annotations

from typing import Annotated

import typer

from safepatch.models import models_app
from safepatch.pipeline import pipeline

cli = typer.Typer(
    name="safepatch",
    help="Fine-tuning as a service that watches safety drift and repairs it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
admin_cli = typer.Typer(
    help="Tenants, API keys, the admin key and audit verification.", no_args_is_help=True
)
cli.add_typer(db_cli, name="db")
cli.add_typer(admin_cli, name="admin")
cli.add_typer(models_app, name="models")
cli.command("pipeline")(pipeline)


def _setup() -> None:
    from app.core.logging import configure_logging
    from app.core.settings import get_settings

    configure_logging(get_settings().log_level)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [SAFEPATCH_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [SAFEPATCH_PORT].")] = None,
) -> None:
    """Serve the API. Embedded mode (no database/broker URL) also migrates and runs a worker."""
    from app.core.settings import get_settings
    from safepatch.serve import serve as run_server

    _setup()
    settings = get_settings()
    run_server(settings, host=host or settings.host, port=port or settings.port)


@cli.command()
def worker(
    name: Annotated[
        str | None, typer.Option(help="Celery node name; default safepatch-<GPU>@<host>.")
    ] = None,
) -> None:
    """Run one GPU worker (queue gpu, one job at a time). Start one per GPU."""
    from app.core.settings import get_settings
    from workers.celery_app import start_worker

    _setup()
    start_worker(node_name=name, loglevel=get_settings().log_level)


@cli.command()
def demo(
    model: Annotated[
        str, typer.Option(help="Base model; the default is built on first use.")
    ] = "smollm2-135m-safe",
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
    epochs: Annotated[
        int | None, typer.Option(min=1, max=50, help="n_epochs of the job (default: auto).")
    ] = None,
    learning_rate_multiplier: Annotated[
        float | None,
        typer.Option(min=0, max=10, help="learning_rate_multiplier of the job (default: auto)."),
    ] = None,
) -> None:
    """The main job end to end on the embedded service: fine-tune, drift, patch, download.
    Exit status 2: the job's model was quarantined (the patch missed the acceptance rule)."""
    from safepatch.demo import run_demo

    raise typer.Exit(
        run_demo(
            model=model,
            timeout_s=timeout,
            epochs=epochs,
            learning_rate_multiplier=learning_rate_multiplier,
        )
    )


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations to SAFEPATCH_DATABASE_URL (or the embedded SQLite file)."""
    from app.core.settings import get_settings
    from app.db import migrate

    _setup()
    settings = get_settings()
    settings.ensure_dirs()
    migrate.upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}")


@admin_cli.command("create-tenant")
def create_tenant(name: str) -> None:
    """Create a tenant and print its first API key (shown only this once)."""
    from app.auth import service
    from app.core.db import session_scope
    from app.core.errors import AppError

    try:
        with session_scope() as session:
            tenant, api_key, key = service.create_tenant(session, name=name, actor="cli:admin")
    except AppError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from error
    typer.echo(f"tenant {tenant.id} ({tenant.name}), key {api_key.id}", err=True)
    typer.echo(key)


@admin_cli.command("create-admin-key")
def create_admin_key() -> None:
    """Print a new admin key (stdout, shown only this once) and the SHA-256 to configure."""
    from app.auth.service import create_admin_key as new_admin_key

    key, sha256 = new_admin_key()
    typer.echo(f"configure the API with SAFEPATCH_ADMIN_KEY_SHA256={sha256}", err=True)
    typer.echo(key)


@admin_cli.command("audit-verify")
def audit_verify(
    anchor_seq: Annotated[
        int | None, typer.Option(min=1, help="seq of a head kept from an earlier run.")
    ] = None,
    anchor_hash: Annotated[str | None, typer.Option(help="That head's hash.")] = None,
    published_anchor: Annotated[
        bool,
        typer.Option(help="Also check against the anchor at SAFEPATCH_AUDIT_ANCHOR_PATH."),
    ] = True,
) -> None:
    """Check the whole audit chain and print the result as JSON, every broken link listed.
    Exit 1 if a link is broken, 2 on bad arguments or an unreadable anchor file."""
    import json

    from app.audit import service
    from app.audit.schemas import AuditVerification
    from app.core.db import session_scope
    from app.core.errors import AppError
    from app.core.settings import get_settings

    _setup()
    anchor_path = get_settings().audit_anchor_path if published_anchor else None
    try:
        with session_scope() as session:
            result = service.verify(
                session, anchor_seq=anchor_seq, anchor_hash=anchor_hash, anchor_path=anchor_path
            )
    except AppError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(AuditVerification.of(result).model_dump(), indent=2))
    raise typer.Exit(0 if result.chain.ok else 1)


@admin_cli.command("audit-anchor")
def audit_anchor() -> None:
    """Publish the audit chain's head to SAFEPATCH_AUDIT_ANCHOR_PATH (workers also do it every
    SAFEPATCH_AUDIT_ANCHOR_INTERVAL_S) and print the anchor. Exit 1 if the chain since the
    published anchor is broken (nothing is published), 2 if no path is configured."""
    import json

    from app.audit import anchors
    from app.core.db import session_scope
    from app.core.errors import AppError
    from app.core.settings import get_settings

    _setup()
    path = get_settings().audit_anchor_path
    if path is None:
        typer.secho("error: set SAFEPATCH_AUDIT_ANCHOR_PATH", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        with session_scope() as session:
            publication = anchors.publish(session, path)
    except AppError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error
    if publication.refused is not None:
        for link in publication.refused.broken:
            typer.secho(f"broken: seq {link.seq}: {link.reason}", fg=typer.colors.RED, err=True)
        typer.echo(f"not published: the chain since the anchor in {path} is broken", err=True)
        raise typer.Exit(1)
    anchor = publication.anchor
    if anchor is None:
        typer.echo("nothing to publish: the audit trail is empty", err=True)
        return
    state = "published" if publication.published else "unchanged"
    published_at = anchor.published_at.isoformat()
    typer.echo(
        json.dumps({"seq": anchor.seq, "hash": anchor.hash, "published_at": published_at})
        + f"  ({state})"
    )


@admin_cli.command("revoke-key")
def revoke_key(key_id: str) -> None:
    """Revoke an API key by its id (key-...): it is refused from now on."""
    from app.auth import service
    from app.core.db import session_scope
    from app.core.errors import AppError

    try:
        with session_scope() as session:
            api_key = service.revoke_api_key(session, key_id=key_id, actor="cli:admin")
    except AppError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from error
    typer.echo(
        f"revoked {api_key.id} ({api_key.prefix}...) of tenant {api_key.tenant_id}", err=True
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
