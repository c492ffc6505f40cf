"""Typed configuration from ``SAFEPATCH_*`` environment variables and a ``.env`` file.

With no database or broker URL the service runs *embedded*: a SQLite file and a Kombu filesystem
broker under the data directory, so one machine needs no servers at all. Production sets both URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.redact import mask_url
from contracts.chat import DEFAULT_MAX_EXAMPLE_TOKENS, DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_LINE_BYTES

# Passwords that ship in docker-compose.yml and in examples; production must not run with them.
DEFAULT_PASSWORDS = frozenset({"postgres", "safepatch", "password", "changeme"})
REDIS_SCHEMES = ("redis", "rediss")


class Settings(BaseSettings):
    """All runtime configuration; read once per process through ``get_settings()``."""

    # hide_input_in_errors: a validation error would print every input, the URLs' passwords
    # included; our own messages name the field and show its URL masked (mask_url).
    model_config = SettingsConfigDict(
        env_prefix="SAFEPATCH_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    env: Literal["dev", "prod"] = Field("dev", description="prod fails fast on unsafe defaults.")
    data_dir: Path = Field(Path("data"), description="Database, broker spool, models, artifacts.")
    # The URLs carry passwords: left out of repr(settings).
    database_url: str | None = Field(
        None, repr=False, description="SQLAlchemy URL; unset = SQLite file."
    )
    database_app_role: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL role the API and workers connect as; `safepatch db upgrade`, "
        "run as the tables' owner, grants it what they need and nothing more (app.db.grants).",
    )
    broker_url: str | None = Field(
        None, repr=False, description="Celery broker; unset = filesystem broker."
    )
    result_backend: str | None = Field(
        None, repr=False, description="Celery results; job state lives in SQL."
    )
    queue: str = Field("gpu", description="Celery queue the GPU workers consume.")
    log_level: str = Field("INFO", description="Root log level.")
    host: str = Field("127.0.0.1", description="Default bind address of `safepatch serve`.")
    port: int = Field(8000, description="Default port of `safepatch serve`.")
    broker_visibility_timeout_s: int = Field(
        12 * 3600,
        ge=1,
        description="Redis redelivers an unacked message after this; must exceed job_lease_s.",
    )
    job_lease_s: int = Field(
        900,
        ge=1,
        description="A running job whose worker stopped renewing this long is taken over.",
    )
    job_heartbeat_s: float = Field(
        2.0,
        gt=0,
        description="How often a worker renews its job's lease and looks for a cancellation; "
        "at most a third of job_lease_s.",
    )
    db_retry_s: float = Field(
        60.0,
        ge=0,
        description="How long a worker retries a database write while the database is away "
        "before it gives the attempt up (the job is then resumed, never failed for it).",
    )
    # Hostile input (docs/reliability.md): every limit answers a 4xx that names it.
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest file POST /v1/files takes (else 413)."
    )
    max_request_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest body of any other request (else 413)."
    )
    # The upload limits' defaults are the chat contract's (contracts.chat.DEFAULT_MAX_*).
    upload_max_examples: int = Field(
        DEFAULT_MAX_EXAMPLES, ge=1, description="Examples per uploaded file."
    )
    upload_min_examples: int = Field(
        10, ge=1, description="Fewest examples per uploaded file (OpenAI's minimum)."
    )
    upload_max_line_bytes: int = Field(
        DEFAULT_MAX_LINE_BYTES,
        ge=1,
        description="Bytes per line (one example) of an uploaded file.",
    )
    upload_max_example_tokens: int = Field(
        DEFAULT_MAX_EXAMPLE_TOKENS,
        ge=1,
        description="Tokens per example, bounded from above by UTF-8 bytes plus a template "
        "allowance (contracts.chat.example_token_bound).",
    )
    # Per-tenant limits (docs/reliability.md#rate-limits-and-quotas).
    rate_limit_requests: int = Field(
        600,
        ge=0,
        description="Requests a tenant may make per rate_limit_window_s, in bursts of up to as "
        "many (else 429 with Retry-After); 0 turns the limit off.",
    )
    rate_limit_window_s: float = Field(60.0, gt=0, description="The rate limit's window.")
    client_rate_limit_requests: int = Field(
        1200,
        ge=0,
        description="Requests one client address may make per rate_limit_window_s, counted "
        "before its API key is checked (else 429 with Retry-After); 0 turns it off.",
    )
    rate_limit_redis_url: str | None = Field(
        None,
        repr=False,
        description="Redis that holds the counts, shared by every API process; unset: the "
        "broker if it is Redis, else in process memory (one API process, embedded mode).",
    )
    rate_limit_key_prefix: str = Field(
        "safepatch:ratelimit:", description="Prefix of the rate limit's Redis keys."
    )
    max_active_jobs_per_tenant: int = Field(
        6,
        ge=1,
        description="Jobs a tenant may have validating, queued or running at once (else 429).",
    )
    storage_quota_bytes_per_tenant: int = Field(
        100 * 1024**3,
        ge=1,
        description="Total bytes of a tenant's uploaded files and model versions (an upload or a "
        "new job past it: 413).",
    )
    max_job_epoch_tokens: int = Field(
        1_000_000_000,
        ge=1,
        description="Largest n_epochs x training-file tokens (estimated as its bytes) a job may "
        "ask for (else 400).",
    )
    model_reverify_s: float = Field(
        86400.0,
        ge=0,
        description="A model file verified against its manifest is trusted while its size, "
        "mtime, ctime and inode are unchanged, for at most this long; then hashed again.",
    )
    broker_check_cache_s: float = Field(
        5.0, ge=0, description="How long /readyz reuses the broker check's last result."
    )
    admin_key_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the operator's admin key, from `safepatch admin "
        "create-admin-key`; unset: the admin endpoints refuse every caller.",
    )
    audit_anchor_path: Path | None = Field(
        None,
        description="File outside the database where the audit chain's head is published "
        "(app/audit/anchors.py); verification checks against it. Unset: no publication.",
    )
    audit_anchor_interval_s: float = Field(
        300.0, gt=0, description="How often each worker publishes the audit chain's head."
    )
    judge: str | None = Field(
        None,
        description="The judge drift and acceptance read (`reply`, `keyword`, `guard`); unset: "
        "the pipeline's default, the whole-reply judge (docs/judging.md).",
    )
    extra_judges: list[str] = Field(
        [],
        description="Judges whose readings jobs report next to the default whole-reply judge's "
        "(`keyword`, `guard`); decisions read only the default (docs/judging.md).",
    )
    guard_judge_dir: Path | None = Field(
        None,
        description="Local guard classifier (Llama Guard 3 format) for the `guard` judge, on GPU "
        "hosts; never downloaded.",
    )

    @field_validator(
        "database_url",
        "database_app_role",
        "broker_url",
        "result_backend",
        "admin_key_sha256",
        "audit_anchor_path",
        "rate_limit_redis_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `SAFEPATCH_DATABASE_URL=` in the environment must mean "embedded", even over a .env file.
        return None if value == "" else value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _heartbeat_well_under_the_lease(self) -> Settings:
        # Two missed heartbeats (a stalled write, a garbage-collection pause) must not cost a
        # live worker its job.
        if self.job_heartbeat_s * 3 > self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s}) must be at most a third of "
                f"job_lease_s ({self.job_lease_s})"
            )
        return self

    @model_validator(mode="after")
    def _redelivery_after_the_lease(self) -> Settings:
        # A message redelivered (visibility timeout) while its job's lease is live is dropped as a
        # duplicate and acknowledged; only one redelivered after the lease ran out can take a
        # dead worker's job over. So redelivery must come later than the lease's expiry.
        if self.broker_visibility_timeout_s <= self.job_lease_s:
            raise ValueError(
                f"broker_visibility_timeout_s ({self.broker_visibility_timeout_s}) must be longer "
                f"than job_lease_s ({self.job_lease_s}): a redelivered message would find the "
                "job still leased and be dropped"
            )
        return self

    @model_validator(mode="after")
    def _fail_fast_in_prod(self) -> Settings:
        if self.env != "prod":
            return self
        if self.database_url is None or self.broker_url is None:
            raise ValueError(
                "env=prod needs SAFEPATCH_DATABASE_URL and SAFEPATCH_BROKER_URL "
                "(the embedded SQLite + filesystem broker are single-host only)"
            )
        for name, url in self._urls():
            problem = _production_problem(name, url)
            if problem is not None:
                raise ValueError(f"env=prod: {name} {mask_url(url)} {problem}")
        limited = self.rate_limit_requests or self.client_rate_limit_requests
        if limited and self.effective_rate_limit_redis_url is None:
            raise ValueError(
                "env=prod needs Redis for the rate limit (SAFEPATCH_RATE_LIMIT_REDIS_URL, or a "
                "redis:// broker): counted in each API process, the limit would be multiplied "
                "by the number of processes"
            )
        return self

    def _urls(self) -> list[tuple[str, str]]:
        urls = {
            "database_url": self.database_url,
            "broker_url": self.broker_url,
            "result_backend": self.result_backend,
            "rate_limit_redis_url": self.rate_limit_redis_url,
        }
        return [(name, url) for name, url in urls.items() if url is not None]

    @property
    def embedded(self) -> bool:
        """True when no servers are configured: `serve` then migrates and runs its own worker."""
        return self.database_url is None and self.broker_url is None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'safepatch.db'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost//"

    @property
    def effective_rate_limit_redis_url(self) -> str | None:
        if self.rate_limit_redis_url is not None:
            return self.rate_limit_redis_url
        if self.broker_url is not None and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def hide_sql_parameters(self) -> bool:
        """SQL parameters carry tenants' data (prompts, metadata, key hashes): in production a
        database error logs the statement without them (SQLAlchemy's ``hide_parameters``)."""
        return self.env == "prod"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        if self.effective_broker_url.startswith("filesystem://"):
            # Producer and consumer share one spool folder; `control` holds the exchange
            # bindings (kombu's default is a folder relative to the working directory).
            return {
                "data_folder_in": str(self.broker_dir / "queue"),
                "data_folder_out": str(self.broker_dir / "queue"),
                "control_folder": str(self.broker_dir / "control"),
                "polling_interval": 0.1,
            }
        return {"visibility_timeout": self.broker_visibility_timeout_s}

    def ensure_dirs(self) -> None:
        """Create the data directory tree (idempotent)."""
        for path in (self.data_dir, self.models_dir, self.artifacts_dir, self.files_dir):
            path.mkdir(parents=True, exist_ok=True)
        if self.effective_broker_url.startswith("filesystem://"):
            for key in ("data_folder_in", "control_folder"):
                Path(self.broker_transport_options[key]).mkdir(parents=True, exist_ok=True)


def _production_problem(name: str, url: str) -> str | None:
    """What makes ``url`` unfit for production, or None.

    The database and Redis take connections from anything on their network, so each needs a
    password, and not one that ships in examples."""
    parts = urlsplit(url)
    password = parts.password
    if password in DEFAULT_PASSWORDS:
        return "uses a default password; set a real secret"
    if name == "database_url" and not password:
        if parts.scheme.startswith("sqlite"):
            return "is SQLite, which serves one host; use PostgreSQL"
        return "has no password; connect with a role that needs one"
    if parts.scheme in REDIS_SCHEMES and not password:
        return "has no password; run Redis with requirepass (redis://:PASSWORD@host:6379/0)"
    return None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings. Tests change the environment, then call ``cache_clear()``."""
    return Settings()
