"""Request and response bodies of the fine-tuning jobs API, in OpenAI's shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.db.models import FineTuningJob, JobEvent, ModelVersion
from app.jobs.states import TERMINAL
from contracts.safety import AUTO_PATCH, DEFAULT_STRATEGY, DRIFT_THRESHOLD, PatchStrategy

Auto = Literal["auto"]

MAX_METADATA_PAIRS = 16


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """OpenAI's newer way to give the hyperparameters: ``{"type": "supervised", "supervised":
    {"hyperparameters": {...}}}``. Only supervised fine-tuning is offered."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Only 'supervised'.")
    supervised: SupervisedMethod | None = None
    # Declared so that a DPO or reinforcement request is refused for its `type`, not for an
    # unrecognized argument.
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None

    @field_validator("type")
    @classmethod
    def _supervised_only(cls, value: str) -> str:
        if value != "supervised":
            raise ValueError(
                f"only 'supervised' fine-tuning is supported, not {value!r}; "
                "give the hyperparameters under method.supervised.hyperparameters"
            )
        return value


class SafetySettings(BaseModel):
    """Our extension: when a fine-tuned model counts as drifted, and what to do about it."""

    model_config = ConfigDict(extra="forbid")

    asr_threshold: float = Field(
        DRIFT_THRESHOLD,
        ge=0,
        le=1,
        description="Drift when ASR(fine-tuned) - ASR(base) exceeds this.",
    )
    auto_patch: bool = Field(AUTO_PATCH, description="Patch a drifted model at once.")
    strategy: PatchStrategy = Field(DEFAULT_STRATEGY, description="How to patch.")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Base model to fine-tune.")
    training_file: str = Field(min_length=1, max_length=64, description="ID of an uploaded file.")
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    # Either (OpenAI deprecated the first in favour of the second); both only if they agree.
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Random if not given.")
    # Part of the fine-tuned model's name (ft:model:suffix:id), hence no colons.
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    metadata: dict[str, str] | None = None
    safety: SafetySettings = Field(default_factory=SafetySettings)

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs")
        if any(len(key) > 64 or len(item) > 512 for key, item in value.items()):
            raise ValueError("keys are limited to 64 characters and values to 512")
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


# `skipped`: drifted, but the job asked for no automatic patch (the model is quarantined).
PatchStatus = Literal["not_needed", "pending", "running", "patched", "failed", "skipped"]


class SafetyRead(BaseModel):
    """The job's safety block: settings, metrics per model, the drift decision, the patch.

    Filled in while the job runs: ``baseline`` once the base model's numbers are known,
    ``fine_tuned`` after the final evaluation, then ``drift`` and ``patch_status`` (``pending``
    until the drift decision, then ``not_needed``, ``skipped``, or ``running`` while the patch
    stage runs, ``patched`` or ``failed`` at the end), and ``patch``/``patched`` per attempt.
    """

    asr_threshold: float
    auto_patch: bool
    strategy: str
    baseline: dict[str, Any] | None = None
    fine_tuned: dict[str, Any] | None = None
    patched: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    patch_status: PatchStatus = "pending"
    # strategy, attempt, example {prompt, reply}, epochs, accepted, reasons; at the end also
    # seconds, cer and every attempt. Kept when the patch missed the rule.
    patch: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: FineTuningJob) -> SafetyRead:
        # Settings as created, plus whatever the worker has recorded so far (results keys).
        values = SafetySettings().model_dump() | (job.safety_settings or {})
        if values.get("patch_status") == "running" and job.status in TERMINAL:
            # The job ended inside the patch stage (an error, a cancellation): no patch.
            values["patch_status"] = "failed"
        return cls.model_validate({key: values[key] for key in cls.model_fields if key in values})


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


class SupervisedMethodRead(BaseModel):
    hyperparameters: dict[str, Any]


class MethodRead(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethodRead


class JobRead(BaseModel):
    """A ``fine_tuning.job``, plus our ``stage``, ``cancel_requested``, ``suffix`` and
    ``safety``."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    model: str
    status: str
    stage: str | None
    created_at: int
    finished_at: int | None
    # While the job fine-tunes: when training should end, from the measured seconds per step
    # (evaluation and any patch follow). Null before the first step and after training.
    estimated_finish: int | None
    fine_tuned_model: str | None
    error: JobError | None
    hyperparameters: dict[str, Any]
    method: MethodRead
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    suffix: str | None
    user_provided_suffix: str | None
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] | None
    cancel_requested: bool
    safety: SafetyRead

    @classmethod
    def of(cls, job: FineTuningJob) -> JobRead:
        created_at = unix(job.created_at)
        assert created_at is not None
        return cls(
            id=job.id,
            organization_id=job.tenant_id,
            model=job.model,
            status=job.status,
            stage=job.stage,
            created_at=created_at,
            finished_at=unix(job.finished_at),
            estimated_finish=unix(job.estimated_finish),
            fine_tuned_model=job.fine_tuned_model,
            error=JobError.model_validate(job.error) if job.error else None,
            hyperparameters=job.hyperparameters,
            method=MethodRead(supervised=SupervisedMethodRead(hyperparameters=job.hyperparameters)),
            training_file=job.training_file,
            validation_file=job.validation_file,
            result_files=[],  # no results file is compiled; metrics are in the events
            trained_tokens=job.trained_tokens,
            seed=job.seed,
            suffix=job.suffix,
            user_provided_suffix=job.suffix,
            metadata=job.user_metadata,
            integrations=None,  # none are offered
            cancel_requested=job.cancel_requested,
            safety=SafetyRead.of(job),
        )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobRead]
    has_more: bool


class JobEventRead(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> JobEventRead:
        created_at = unix(event.created_at)
        assert created_at is not None
        return cls(
            id=event.id,
            created_at=created_at,
            level=event.level,
            type=event.type,
            message=event.message,
            data=event.data,
        )


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventRead]
    has_more: bool


class CheckpointRead(BaseModel):
    """A ``fine_tuning.job.checkpoint``: the model at the end of one epoch."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]
    status: str
    status_reason: str | None

    @classmethod
    def of(cls, version: ModelVersion) -> CheckpointRead:
        created_at = unix(version.created_at)
        assert created_at is not None and version.job_id is not None
        return cls(
            id=version.id,
            created_at=created_at,
            fine_tuned_model_checkpoint=version.name,
            fine_tuning_job_id=version.job_id,
            step_number=version.step or 0,
            metrics=version.metrics or {},
            status=version.status,
            status_reason=version.status_reason,
        )


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointRead]
    has_more: bool
    first_id: str | None
    last_id: str | None
