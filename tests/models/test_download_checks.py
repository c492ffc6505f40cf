"""A model file is hashed once per API process, then trusted while ``stat`` says it is the same
file; a file changed after its check is caught on its next download. Each download audits the
byte ranges it sent, parsed, and refuses a bad ``Range`` before it audits anything."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord
from app.models import integrity
from tests.factories import Caller
from tests.models.test_corruption import FILES, ready_version

WEIGHTS = FILES["model.safetensors"]


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the download checks hash in full (the real hash: this only records it)."""
    hashed: list[Path] = []
    real = integrity.file_sha256

    def recording(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(integrity, "file_sha256", recording)
    # Files here were written a moment ago: trust a check made any time after the last change
    # (the real margin, for timestamps' coarse clock, is two seconds).
    monkeypatch.setattr(integrity, "RACY_MARGIN_NS", 0)
    return hashed


def records(session: Session, action: str) -> list[AuditRecord]:
    statement = select(AuditRecord).where(AuditRecord.action == action)
    return list(session.scalars(statement.order_by(AuditRecord.seq)))


def download(client: TestClient, caller: Caller, name: str, **headers: str):  # type: ignore[no-untyped-def]
    url = f"/v1/models/{name}/files/model.safetensors"
    return client.get(url, headers=caller.headers | headers)


def test_a_file_is_hashed_once_then_trusted(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path, hashes: list[Path]
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    time.sleep(0.05)  # the check comes after the last write, by more than a clock tick

    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=10-"}, {}):
        response = download(client, caller, version.name, **headers)
        assert response.status_code in (200, 206)
    assert hashes == [tmp_path / "m" / "model.safetensors"]


def test_a_file_changed_after_its_check_is_caught(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path, hashes: list[Path]
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    time.sleep(0.05)
    assert download(client, caller, version.name).content == WEIGHTS

    weights = tmp_path / "m" / "model.safetensors"
    time.sleep(0.05)  # a clock tick later, as any real change comes
    flipped = bytearray(WEIGHTS)
    flipped[50] ^= 0xFF  # same size, same inode: only the timestamps say it changed
    weights.write_bytes(bytes(flipped))

    response = download(client, caller, version.name)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "checkpoint_corrupted"
    assert len(records(session, "model.corruption_detected")) == 1
    assert len(hashes) == 2


def test_a_check_made_right_after_a_change_is_not_trusted(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path, hashes: list[Path]
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    integrity.RACY_MARGIN_NS = 60 * 10**9  # the file changed "just" before each check
    for _ in range(2):
        assert download(client, caller, version.name).status_code == 200
    assert len(hashes) == 2


def test_a_stale_check_is_redone(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path, hashes: list[Path]
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    time.sleep(0.05)
    client.app.state.settings.model_reverify_s = 0  # type: ignore[attr-defined]
    for _ in range(2):
        assert download(client, caller, version.name).status_code == 200
    assert len(hashes) == 2


def test_the_audit_names_the_bytes_sent(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    etag = f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
    sent = [
        download(client, caller, version.name, Range="bytes=-10"),
        download(client, caller, version.name, Range="bytes=0-4, 90-95, 3-7"),
        download(client, caller, version.name, Range="bytes=50-", **{"If-Range": etag}),
    ]
    assert [r.status_code for r in sent] == [206, 206, 206]
    assert sent[0].headers["content-range"] == "bytes 90-99/100"
    assert sent[2].content == WEIGHTS[50:]

    ranges = [r.payload["ranges"] for r in records(session, "model.downloaded")]
    assert ranges == [
        [{"start": 90, "end": 99}],
        [{"start": 0, "end": 7}, {"start": 90, "end": 95}],
        [{"start": 50, "end": 99}],
    ]
    assert all("bytes=" not in str(r.payload) for r in records(session, "model.downloaded"))


@pytest.mark.parametrize(
    ("header", "status"),
    [("items=0-1", 400), ("bytes=abc", 400), ("bytes=9-3", 400), ("bytes=100-", 416)],
)
def test_a_bad_range_is_refused_with_our_error_body_and_not_audited(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path, header: str, status: int
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    response = download(client, caller, version.name, Range=header)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == "Range"
    assert records(session, "model.downloaded") == []
