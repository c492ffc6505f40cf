"""The per-tenant storage quota: what a tenant's uploaded files and its model versions take.

Both count. A job writes a checkpoint per epoch and a fine-tuned (and maybe a patched) model,
each as large as the base model, so uploads alone would let a tenant fill the shared storage
with artifacts. An upload past the quota is refused (413), and so is a new job once the quota is
used up, since every job adds models; both say what takes the room.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.auth import repository as auth_repository
from app.core.errors import PayloadTooLarge
from app.files import repository as files_repository
from app.models import repository as models_repository

CODE = "storage_quota_exceeded"


@dataclass(frozen=True)
class StorageUse:
    files: int
    models: int

    @property
    def total(self) -> int:
        return self.files + self.models

    def describe(self) -> str:
        return f"{self.total} bytes (files {self.files}, models {self.models})"


def storage_use(session: Session, tenant_id: str) -> StorageUse:
    """What the tenant's files (as uploaded) and model versions (as their manifests list) take.
    The tenant's row is locked until the caller's transaction ends, so two requests at once
    cannot both take the last room."""
    auth_repository.lock_tenant(session, tenant_id)
    return StorageUse(
        files=files_repository.total_bytes(session, tenant_id),
        models=models_repository.total_bytes(session, tenant_id),
    )


def check_upload(session: Session, tenant_id: str, *, quota: int, size: int) -> None:
    """413 when a file of ``size`` bytes would take the tenant past ``quota``."""
    use = storage_use(session, tenant_id)
    if use.total + size > quota:
        raise PayloadTooLarge(
            f"Storage quota exceeded: your organization's files and models take "
            f"{use.describe()} and this file {size}, over the quota of {quota} bytes. Delete "
            "files you no longer need (DELETE /v1/files/{id}), then upload again.",
            param="file",
            code=CODE,
        )


def check_new_job(session: Session, tenant_id: str, *, quota: int) -> None:
    """413 when the tenant's quota is used up: the job's checkpoints and models would not fit."""
    use = storage_use(session, tenant_id)
    if use.total >= quota:
        raise PayloadTooLarge(
            f"Storage quota exceeded: your organization's files and models take "
            f"{use.describe()}, the quota is {quota} bytes, and a job stores a model per epoch. "
            "Delete files you no longer need (DELETE /v1/files/{id}), then create the job again.",
            param="training_file",
            code=CODE,
        )
