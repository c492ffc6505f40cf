from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.core import db
from app.core.settings import get_settings
from safepatch.cli import cli

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


def test_create_admin_key_prints_the_key_and_the_hash_to_configure() -> None:
    result = runner.invoke(cli, ["admin", "create-admin-key"])
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert key.startswith("spa-") and len(key) == 52
    assert f"SAFEPATCH_ADMIN_KEY_SHA256={hashlib.sha256(key.encode()).hexdigest()}" in result.stderr


def test_audit_verify_exits_1_on_a_broken_chain(embedded_env: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["admin", "create-tenant", "acme"]).exit_code == 0

    intact = runner.invoke(cli, ["admin", "audit-verify"])
    assert intact.exit_code == 0, intact.output
    report = json.loads(intact.stdout)
    assert (report["ok"], report["checked"], report["head"]["seq"]) == (True, 2, 2)
    anchor = ["--anchor-seq", "2", "--anchor-hash", report["head"]["hash"]]
    assert runner.invoke(cli, ["admin", "audit-verify", *anchor]).exit_code == 0

    with sqlite3.connect(embedded_env / "safepatch.db") as connection:
        connection.execute("DROP TRIGGER audit_records_no_update")
        connection.execute("UPDATE audit_records SET actor = 'mallory' WHERE seq = 1")
    broken = runner.invoke(cli, ["admin", "audit-verify"])
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["first_broken"]["seq"] == 1

    half = runner.invoke(cli, ["admin", "audit-verify", "--anchor-seq", "2"])
    assert half.exit_code == 2 and "needs both" in half.stderr


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
