"""Every ORM model, imported here so ``Base.metadata`` is complete for Alembic and the tests."""

from app.db.models.api_key import APIKey
from app.db.models.audit_record import AuditRecord
from app.db.models.base_model import BaseModelRecord
from app.db.models.evaluation import Evaluation
from app.db.models.file import File, FileStatus
from app.db.models.job import FineTuningJob
from app.db.models.job_event import JobEvent
from app.db.models.model_version import ModelKind, ModelStatus, ModelVersion
from app.db.models.tenant import Tenant

__all__ = [
    "APIKey",
    "AuditRecord",
    "BaseModelRecord",
    "Evaluation",
    "File",
    "FileStatus",
    "FineTuningJob",
    "JobEvent",
    "ModelKind",
    "ModelStatus",
    "ModelVersion",
    "Tenant",
]
