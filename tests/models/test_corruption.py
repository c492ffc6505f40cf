"""A model version whose files no longer match their manifest is reported, never served.

The directory is written by hand (a manifest of sha256 and sizes), so this runs without torch,
as the API does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord, ModelKind, ModelStatus, ModelVersion
from tests.factories import Caller, create_job

FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x08" + b"\x00" * 99}


def model_directory(path: Path, files: dict[str, bytes]) -> str:
    """A model directory as workers.ml.checkpoints writes it; the manifest's sha256."""
    path.mkdir(parents=True)
    listed = {}
    for name, content in files.items():
        (path / name).write_bytes(content)
        listed[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    manifest = json.dumps({"files": listed, "metadata": {}}).encode()
    (path / "manifest.json").write_bytes(manifest)
    return hashlib.sha256(manifest).hexdigest()


def ready_version(session: Session, caller: Caller, path: Path) -> ModelVersion:
    job = create_job(session, caller)
    version = ModelVersion(
        name=f"ft:test:{job.id}",
        tenant_id=caller.auth.tenant.id,
        job_id=job.id,
        kind=ModelKind.FINE_TUNED,
        storage_uri=str(path),
        sha256=model_directory(path, FILES),
        size_bytes=sum(len(content) for content in FILES.values()),
        status=ModelStatus.READY,
    )
    session.add(version)
    session.commit()
    return version


def test_an_intact_file_is_served(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    response = client.get(
        f"/v1/models/{version.name}/files/model.safetensors", headers=caller.headers
    )
    assert response.status_code == 200 and response.content == FILES["model.safetensors"]


def test_a_corrupted_file_is_withheld_and_the_corruption_audited(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[50] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    weights.write_bytes(bytes(flipped))

    response = client.get(
        f"/v1/models/{version.name}/files/model.safetensors", headers=caller.headers
    )

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "checkpoint_corrupted"
    assert "failed its integrity check and is withheld" in error["message"]
    assert flipped.hex() not in response.text
    audit = session.scalars(
        select(AuditRecord).where(AuditRecord.action == "model.corruption_detected")
    ).one()
    assert audit.subject_id == version.name
    assert "sha256 does not match the manifest" in audit.payload["detail"]


def test_a_manifest_that_lists_pickle_weights_is_not_served(
    client: TestClient, session: Session, caller: Caller, tmp_path: Path
) -> None:
    version = ready_version(session, caller, tmp_path / "m")
    path = tmp_path / "m"
    pickle = b"\x80\x04K\x01."
    (path / "pytorch_model.bin").write_bytes(pickle)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["pytorch_model.bin"] = {
        "sha256": hashlib.sha256(pickle).hexdigest(),
        "size": len(pickle),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))

    listing = client.get(f"/v1/models/{version.name}/files", headers=caller.headers)
    download = client.get(
        f"/v1/models/{version.name}/files/pytorch_model.bin", headers=caller.headers
    )

    for response in (listing, download):
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "checkpoint_corrupted"
