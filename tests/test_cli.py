from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.core import db
from app.core.settings import get_settings

runner = CliRunner()


@pytest.fixture
def embedded_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("SAFEPATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAFEPATCH_DATABASE_URL", "")
    monkeypatch.setenv("SAFEPATCH_BROKER_URL", "")
    get_settings.cache_clear()
    db.reset_engine()
    yield tmp_path
    db.reset_engine()
    get_settings.cache_clear()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "demo", "db", "admin"):
        assert command in result.output


def test_db_upgrade_then_create_tenant_prints_a_key_once(embedded_env: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert (embedded_env / "safepatch.db").exists()

    created = runner.invoke(cli, ["admin", "create-tenant", "acme"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("sp-") and len(key) == 51

    again = runner.invoke(cli, ["admin", "create-tenant", "acme"])
    assert again.exit_code == 1
    assert "already exists" in again.stderr


def test_revoke_key_revokes_by_id(embedded_env: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    created = runner.invoke(cli, ["admin", "create-tenant", "acme"])
    key_id = created.stderr.split("key ")[-1].strip()
    assert key_id.startswith("key-"), created.stderr

    revoked = runner.invoke(cli, ["admin", "revoke-key", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked {key_id}" in revoked.stderr
    missing = runner.invoke(cli, ["admin", "revoke-key", "key-missing"])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
