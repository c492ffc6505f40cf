"""The storage quota: an upload that would take the tenant's files past
``SAFEPATCH_STORAGE_QUOTA_BYTES_PER_TENANT`` is a 413 that says how much is used, and nothing is
stored; deleting files frees the room."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import AuditRecord, File
from tests.factories import Caller, create_caller, make_settings
from tests.files.test_endpoints import FILES, chat_jsonl, stored_blobs, upload

SIZE = len(chat_jsonl(3))  # every upload here: 3 examples, the same size, other content
QUOTA = 2 * SIZE + SIZE // 2


def content(i: int) -> bytes:
    # "Q0000001" is as long as "Question": the same size, other content.
    return chat_jsonl(3).replace(b"Question", f"Q{i:07d}".encode())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, upload_min_examples=1, storage_quota_bytes_per_tenant=QUOTA)


def test_an_upload_past_the_quota_is_a_413_and_nothing_is_stored(
    client: TestClient, caller: Caller, session: Session, settings: Settings
) -> None:
    kept = [upload(client, caller, content(i)) for i in range(2)]
    assert [status for status, _ in kept] == [200, 200]
    blobs = stored_blobs(settings)
    used = 2 * SIZE

    status, body = upload(client, caller, content(2))
    assert status == 413
    assert body["error"] == {
        "message": "Storage quota exceeded: your organization's files and models take "
        f"{used} bytes (files {used}, models 0) and this file {len(content(2))}, over the "
        f"quota of {QUOTA} bytes. Delete files you no longer need (DELETE /v1/files/{{id}}), "
        "then upload again.",
        "type": "invalid_request_error",
        "param": "file",
        "code": "storage_quota_exceeded",
    }
    assert len(session.scalars(select(File)).all()) == 2
    assert stored_blobs(settings) == blobs
    created = session.scalars(select(AuditRecord).where(AuditRecord.action == "file.created"))
    assert len(created.all()) == 2

    # The quota is per tenant; a deleted file frees its bytes.
    other = create_caller(session)
    assert upload(client, other, content(3))[0] == 200
    client.delete(f"{FILES}/{kept[0][1]['id']}", headers=caller.headers)
    assert upload(client, caller, content(2))[0] == 200


def test_the_quota_counts_what_the_tenant_uploaded_even_when_content_is_shared(
    client: TestClient, caller: Caller
) -> None:
    # Identical content is stored once on disk, but each upload counts against the quota:
    # otherwise what a tenant may keep would depend on what other tenants uploaded.
    data = content(0)
    assert [upload(client, caller, data)[0] for _ in range(3)] == [200, 200, 413]
