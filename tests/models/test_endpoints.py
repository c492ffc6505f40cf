"""The models API: base models and the tenant's versions, lineage, files and their downloads.

Model directories are real ones on disk with a manifest (``tests.factories.write_model_dir``),
but their weights are a few opaque bytes: nothing here loads torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord, ModelKind, ModelStatus, ModelVersion
from contracts.manifest import MANIFEST, file_sha256
from tests.factories import BASE_MODEL, Caller, create_caller, create_job, create_model_version

MODELS = "/v1/models"
WEIGHTS = b"\x00\x01safetensors-ish bytes\xff" * 64  # 1,536 bytes: enough to cut ranges from
CONFIG = b'{"model_type": "llama"}'
QUARANTINE_REASON = "safety drift: ASR rose from 0.000 to 1.000 (+1.000 > threshold 0.050)"


@dataclass
class Lineage:
    finetuned: ModelVersion
    patched: ModelVersion
    checkpoint: ModelVersion

    @property
    def urls(self) -> list[str]:
        """Every URL of the patched model (the one a customer downloads)."""
        name = self.patched.name
        return [
            f"{MODELS}/{name}",
            f"{MODELS}/{name}/files",
            f"{MODELS}/{name}/files/model.safetensors",
            f"{MODELS}/{name}/files/{MANIFEST}",
        ]


@pytest.fixture
def models(session: Session, caller: Caller, tmp_path: Path) -> Lineage:
    return create_lineage(session, caller, tmp_path)


def create_lineage(session: Session, caller: Caller, tmp_path: Path) -> Lineage:
    """What a drifted-then-patched job leaves: a checkpoint and the fine-tuned model
    (quarantined), and the patched model (ready) whose parent is the fine-tuned one."""
    job = create_job(session, caller, suffix="demo")
    name = f"ft:{BASE_MODEL}:demo:{job.id}"
    checkpoint = create_model_version(
        session,
        caller,
        tmp_path / "checkpoint",
        name=f"{name}:ckpt-step-3",
        kind=ModelKind.CHECKPOINT,
        job=job,
        status=ModelStatus.QUARANTINED,
        reason="an intermediate checkpoint is never safety-verified",
        step=3,
    )
    finetuned = create_model_version(
        session,
        caller,
        tmp_path / "finetuned",
        name=name,
        job=job,
        status=ModelStatus.QUARANTINED,
        reason=f"{QUARANTINE_REASON}; replaced by its patched version",
    )
    patched = create_model_version(
        session,
        caller,
        tmp_path / "patched",
        name=f"{name}:patched",
        kind=ModelKind.PATCHED,
        parent=finetuned,
        job=job,
        files={"model.safetensors": WEIGHTS, "config.json": CONFIG},
    )
    return Lineage(finetuned, patched, checkpoint)


def audit_records(session: Session, action: str) -> list[AuditRecord]:
    statement = select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
    return list(session.scalars(statement))


def test_list_shows_base_models_then_the_tenants_versions(
    client: TestClient, caller: Caller, models: Lineage
) -> None:
    body = client.get(MODELS, headers=caller.headers).json()

    assert body["object"] == "list"
    assert [(m["id"], m["kind"]) for m in body["data"]] == [
        (BASE_MODEL, "base"),
        (models.patched.name, "patched"),
        (models.finetuned.name, "fine_tuned"),
        (models.checkpoint.name, "checkpoint"),
    ]
    base, patched, finetuned, _ = body["data"]
    assert (base["owned_by"], base["downloadable"]) == ("safepatch", False)
    assert (patched["owned_by"], patched["downloadable"]) == (caller.auth.tenant.id, True)
    assert (finetuned["status"], finetuned["downloadable"]) == ("quarantined", False)
    assert QUARANTINE_REASON in finetuned["status_reason"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


def test_retrieve_shows_lineage_metrics_and_integrity(
    client: TestClient, caller: Caller, models: Lineage
) -> None:
    patched = client.get(f"{MODELS}/{models.patched.name}", headers=caller.headers).json()

    assert patched["lineage"] == [BASE_MODEL, models.finetuned.name, models.patched.name]
    assert patched["parent"] == models.finetuned.name
    assert (patched["job_id"], patched["status"]) == (models.patched.job_id, "ready")
    assert patched["sha256"] == file_sha256(Path(models.patched.storage_uri) / MANIFEST)
    assert patched["size_bytes"] == models.patched.size_bytes > len(WEIGHTS) + len(CONFIG)
    assert patched["metrics"]["asr"] == 0.0
    finetuned = client.get(f"{MODELS}/{models.finetuned.name}", headers=caller.headers).json()
    assert finetuned["lineage"] == [BASE_MODEL, models.finetuned.name]
    assert finetuned["parent"] == BASE_MODEL
    base = client.get(f"{MODELS}/{BASE_MODEL}", headers=caller.headers).json()
    assert (base["kind"], base["lineage"], base["parent"]) == ("base", [BASE_MODEL], None)


def test_an_unknown_model_is_a_404(client: TestClient, caller: Caller) -> None:
    response = client.get(f"{MODELS}/ft:nothing:here", headers=caller.headers)

    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model 'ft:nothing:here' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_files_are_listed_with_their_sha256(
    client: TestClient, caller: Caller, models: Lineage
) -> None:
    name = models.patched.name
    body = client.get(f"{MODELS}/{name}/files", headers=caller.headers).json()

    assert (body["object"], body["model"], body["sha256"]) == ("list", name, models.patched.sha256)
    listed = {item["name"]: item for item in body["data"]}
    assert set(listed) == {MANIFEST, "model.safetensors", "config.json"}
    weights = listed["model.safetensors"]
    assert weights["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights["bytes"] == len(WEIGHTS)
    assert weights["url"] == f"{MODELS}/{name}/files/model.safetensors"
    assert listed[MANIFEST]["sha256"] == models.patched.sha256


def test_a_full_download_has_the_sha256_as_its_etag_and_is_audited(
    client: TestClient, caller: Caller, models: Lineage, session: Session
) -> None:
    url = f"{MODELS}/{models.patched.name}/files/model.safetensors"
    response = client.get(url, headers=caller.headers)

    assert response.status_code == 200
    assert response.content == WEIGHTS
    assert response.headers["etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    manifest = client.get(
        f"{MODELS}/{models.patched.name}/files/{MANIFEST}", headers=caller.headers
    )
    assert manifest.headers["etag"] == f'"{models.patched.sha256}"'

    downloads = audit_records(session, "model.downloaded")
    assert [(r.subject_id, r.payload["file"]) for r in downloads] == [
        (models.patched.name, "model.safetensors"),
        (models.patched.name, MANIFEST),
    ]
    assert downloads[0].actor == caller.auth.actor
    assert downloads[0].tenant_id == caller.auth.tenant.id
    assert downloads[0].payload["ranges"] is None


def test_a_ranged_download_resumes_with_if_range(
    client: TestClient, caller: Caller, models: Lineage, session: Session
) -> None:
    url = f"{MODELS}/{models.patched.name}/files/model.safetensors"
    etag = f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'

    first = client.get(url, headers=caller.headers | {"Range": "bytes=0-499"})
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-499/{len(WEIGHTS)}"
    assert first.content == WEIGHTS[:500]
    assert first.headers["etag"] == etag

    # Resume where the first request stopped, if the file is still the one we started.
    rest = client.get(url, headers=caller.headers | {"Range": "bytes=500-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes 500-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
    assert first.content + rest.content == WEIGHTS

    # A stale validator means the file changed: the whole file comes back instead of a range.
    stale = client.get(url, headers=caller.headers | {"Range": "bytes=500-", "If-Range": '"0"'})
    assert stale.status_code == 200 and stale.content == WEIGHTS

    # The bytes sent, parsed: a stale If-Range sent the whole file, and the record says so.
    ranges = [r.payload["ranges"] for r in audit_records(session, "model.downloaded")]
    end = len(WEIGHTS) - 1
    assert ranges == [[{"start": 0, "end": 499}], [{"start": 500, "end": end}], None]


def test_a_range_past_the_end_is_a_416(client: TestClient, caller: Caller, models: Lineage) -> None:
    url = f"{MODELS}/{models.patched.name}/files/model.safetensors"
    response = client.get(url, headers=caller.headers | {"Range": f"bytes={len(WEIGHTS)}-"})

    assert response.status_code == 416
    assert WEIGHTS not in response.content


@pytest.mark.parametrize("which", ["finetuned", "checkpoint"])
def test_a_quarantined_model_is_a_403_naming_the_reason_and_serves_nothing(
    client: TestClient, caller: Caller, models: Lineage, session: Session, which: str
) -> None:
    version: ModelVersion = getattr(models, which)
    for url in (
        f"{MODELS}/{version.name}/files",
        f"{MODELS}/{version.name}/files/model.safetensors",
    ):
        response = client.get(url, headers=caller.headers)
        assert response.status_code == 403, url
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("model_quarantined", "model")
        assert version.status_reason is not None and version.status_reason in error["message"]
    assert audit_records(session, "model.downloaded") == []
    # Still visible, with the reason: only the weights are withheld.
    shown = client.get(f"{MODELS}/{version.name}", headers=caller.headers).json()
    assert (shown["status"], shown["status_reason"]) == ("quarantined", version.status_reason)


def test_a_base_model_is_not_downloadable(
    client: TestClient, caller: Caller, session: Session
) -> None:
    for url in (f"{MODELS}/{BASE_MODEL}/files", f"{MODELS}/{BASE_MODEL}/files/model.safetensors"):
        response = client.get(url, headers=caller.headers)
        assert response.status_code == 403, url
        assert response.json()["error"]["code"] == "model_not_downloadable"
    assert audit_records(session, "model.downloaded") == []


@pytest.mark.parametrize(
    "filename",
    [
        "tokenizer.json",  # not in the manifest, not on disk
        "notes.txt",  # on disk in the model's directory, but not in the manifest
        "..%2Fpatched%2Fnotes.txt",
        "..%2F..%2Fcheckpoint%2Fmodel.safetensors",
        "%2Fetc%2Fpasswd",
        "%2E%2E%2Fnotes.txt",
        "model.safetensors%00",
        ".%2Fmodel.safetensors",
        "MODEL.SAFETENSORS",
    ],
)
def test_unknown_files_and_path_tricks_are_404s_that_serve_nothing(
    client: TestClient, caller: Caller, models: Lineage, session: Session, filename: str
) -> None:
    directory = Path(models.patched.storage_uri)
    (directory / "notes.txt").write_bytes(b"not listed: never served")
    response = client.get(
        f"{MODELS}/{models.patched.name}/files/{filename}", headers=caller.headers
    )

    assert response.status_code == 404, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert b"never served" not in response.content and WEIGHTS[:32] not in response.content
    assert audit_records(session, "model.downloaded") == []


def test_an_absolute_path_is_a_404(
    client: TestClient, caller: Caller, models: Lineage, session: Session
) -> None:
    target = Path(models.patched.storage_uri) / "model.safetensors"
    response = client.get(f"{MODELS}/{models.patched.name}/files/{target}", headers=caller.headers)

    assert response.status_code == 404
    assert WEIGHTS[:32] not in response.content
    assert audit_records(session, "model.downloaded") == []


def test_a_corrupted_file_is_withheld_and_audited(
    client: TestClient, caller: Caller, models: Lineage, session: Session
) -> None:
    weights = Path(models.patched.storage_uri) / "model.safetensors"
    tampered = b"\xff" + WEIGHTS[1:]  # same size: only the sha256 can tell
    weights.write_bytes(tampered)
    response = client.get(
        f"{MODELS}/{models.patched.name}/files/model.safetensors", headers=caller.headers
    )

    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "checkpoint_corrupted")
    assert "model.safetensors" in error["message"]
    assert tampered not in response.content
    # The evidence is committed although the request failed.
    [record] = audit_records(session, "model.corruption_detected")
    assert (record.subject_type, record.subject_id) == ("model", models.patched.name)
    assert record.payload["file"] == "model.safetensors"
    # The tenant reads the file's name, not where the server keeps it.
    assert record.payload["detail"] == "model.safetensors: sha256 does not match the manifest"
    assert record.tenant_id == caller.auth.tenant.id
    assert audit_records(session, "model.downloaded") == []


def test_a_deleted_file_is_detected_as_corruption(
    client: TestClient, caller: Caller, models: Lineage, session: Session
) -> None:
    (Path(models.patched.storage_uri) / "config.json").unlink()
    response = client.get(
        f"{MODELS}/{models.patched.name}/files/config.json", headers=caller.headers
    )

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "checkpoint_corrupted"
    assert len(audit_records(session, "model.corruption_detected")) == 1


def test_another_tenant_gets_404_for_every_url(
    client: TestClient, models: Lineage, session: Session
) -> None:
    other = create_caller(session)

    listed = client.get(MODELS, headers=other.headers).json()
    assert [m["id"] for m in listed["data"]] == [BASE_MODEL]
    for version in (models.patched, models.finetuned, models.checkpoint):
        for url in (
            f"{MODELS}/{version.name}",
            f"{MODELS}/{version.name}/files",
            f"{MODELS}/{version.name}/files/model.safetensors",
            f"{MODELS}/{version.name}/files/{MANIFEST}",
        ):
            response = client.get(url, headers=other.headers | {"Range": "bytes=0-9"})
            assert response.status_code == 404, url
            assert response.json()["error"]["code"] == "model_not_found"
    assert audit_records(session, "model.downloaded") == []
    assert audit_records(session, "model.corruption_detected") == []


def test_the_models_api_needs_an_api_key(client: TestClient, models: Lineage) -> None:
    for url in [MODELS, *models.urls]:
        assert client.get(url).status_code == 401, url
