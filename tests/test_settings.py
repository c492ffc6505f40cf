from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        *("DATA_DIR", "DATABASE_URL", "DATABASE_APP_ROLE", "BROKER_URL", "RESULT_BACKEND"),
        *("ENV", "QUEUE", "RATE_LIMIT_REDIS_URL", "JOB_LEASE_S"),
    ):
        monkeypatch.delenv(f"SAFEPATCH_{name}", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env, and ./data resolves inside tmp_path


def test_defaults_are_embedded_under_an_absolute_data_dir(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.embedded
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve()}/data/safepatch.db"
    assert settings.effective_broker_url.startswith("filesystem://")
    assert settings.models_dir == settings.data_dir / "models"
    assert settings.artifacts_dir == settings.data_dir / "artifacts"
    options = settings.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"]
    assert Path(options["control_folder"]).is_relative_to(settings.data_dir)


def test_environment_variables_and_dotenv_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("SAFEPATCH_QUEUE=from-dotenv\nSAFEPATCH_DATA_DIR=/srv/x\n")
    monkeypatch.setenv("SAFEPATCH_DATA_DIR", "/srv/from-env")
    monkeypatch.setenv("SAFEPATCH_BROKER_URL", "redis://cache:6379/0")
    settings = Settings()
    assert settings.queue == "from-dotenv"
    assert settings.data_dir == Path("/srv/from-env")  # the environment wins over .env
    assert not settings.embedded
    assert settings.broker_transport_options == {"visibility_timeout": 12 * 3600}


def test_an_empty_url_means_embedded_even_over_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("SAFEPATCH_DATABASE_URL=postgresql://db/x\n")
    monkeypatch.setenv("SAFEPATCH_DATABASE_URL", "")
    assert Settings().database_url is None


def test_prod_requires_servers() -> None:
    with pytest.raises(ValidationError, match="SAFEPATCH_DATABASE_URL"):
        Settings(env="prod", broker_url="redis://r:6379/0")


@pytest.mark.parametrize("password", ["postgres", "safepatch", "changeme"])
def test_prod_refuses_default_passwords(password: str) -> None:
    with pytest.raises(ValidationError, match="default password"):
        Settings(
            env="prod",
            database_url=f"postgresql+psycopg://app:{password}@db/safepatch",
            broker_url="redis://r:6379/0",
        )


def test_prod_with_real_secrets_is_fine() -> None:
    settings = Settings(
        env="prod",
        database_url="postgresql+psycopg://app:s3cr3t-Xy9@db/safepatch",
        broker_url="redis://:an0ther-secret@r:6379/0",
    )
    assert not settings.embedded


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("SAFEPATCH_QUEUE", "one")
    assert get_settings() is get_settings()
    monkeypatch.setenv("SAFEPATCH_QUEUE", "two")
    assert get_settings().queue == "one"
    get_settings.cache_clear()
    assert get_settings().queue == "two"
    get_settings.cache_clear()


@pytest.mark.parametrize(("visibility", "lease"), [(900, 900), (600, 900), (10, 60)])
def test_redelivery_must_come_after_the_lease_expires(visibility: int, lease: int) -> None:
    """A message Redis redelivers while the job's lease is live is dropped as a duplicate, so a
    visibility timeout no longer than the lease could never hand a dead worker's job over."""
    with pytest.raises(ValidationError, match="must be longer than job_lease_s"):
        Settings(broker_visibility_timeout_s=visibility, job_lease_s=lease)


def test_the_heartbeat_must_be_well_under_the_lease() -> None:
    with pytest.raises(ValidationError, match="at most a third of job_lease_s"):
        Settings(job_lease_s=5, job_heartbeat_s=2)
    settings = Settings(job_lease_s=6, job_heartbeat_s=2, broker_visibility_timeout_s=7)
    assert (settings.job_lease_s, settings.job_heartbeat_s) == (6, 2)


def test_the_defaults_satisfy_both_rules() -> None:
    settings = Settings()
    assert settings.broker_visibility_timeout_s > settings.job_lease_s
    assert settings.job_heartbeat_s * 3 <= settings.job_lease_s


PROD_DATABASE = "postgresql+psycopg://app:s3cr3t-Xy9@db/safepatch"
PROD_BROKER = "redis://:an0ther-secret@r:6379/0"


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ({"database_url": "postgresql+psycopg://app@db/safepatch"}, "database_url .* no password"),
        ({"database_url": "postgresql+psycopg://db/safepatch"}, "database_url .* no password"),
        ({"database_url": "sqlite:////srv/safepatch.db"}, "database_url .* is SQLite"),
        ({"broker_url": "redis://r:6379/0"}, "broker_url redis://r:6379/0 has no password"),
        ({"broker_url": "rediss://user@r:6380/0"}, "broker_url .* has no password"),
        ({"rate_limit_redis_url": "redis://r:6379/1"}, "rate_limit_redis_url .* no password"),
        ({"result_backend": "redis://r:6379/2"}, "result_backend .* no password"),
        ({"result_backend": "redis://:changeme@r:6379/2"}, "result_backend .* default password"),
    ],
)
def test_prod_refuses_servers_without_a_password(urls: dict[str, str], problem: str) -> None:
    # Anything on the database's or Redis's network could otherwise connect.
    settings: dict[str, Any] = {"database_url": PROD_DATABASE, "broker_url": PROD_BROKER} | urls
    with pytest.raises(ValidationError, match=problem):
        Settings(env="prod", **settings)
    Settings(env="dev", **settings)  # a developer's local servers may run without one


def test_prod_takes_passwords_for_every_redis_url() -> None:
    settings = Settings(
        env="prod",
        database_url=PROD_DATABASE,
        broker_url=PROD_BROKER,
        rate_limit_redis_url="redis://limits:l1m1ts-pw@r:6379/1",
        result_backend="rediss://:r3sults-pw@r:6380/2",
    )
    assert settings.hide_sql_parameters
    assert not Settings().hide_sql_parameters


@pytest.mark.parametrize(
    "urls",
    [
        # A default password in the database URL, a missing one in the broker's: both errors
        # name the URL without the other's secret.
        {"database_url": "postgresql+psycopg://app:postgres@db/x", "broker_url": PROD_BROKER},
        {"database_url": PROD_DATABASE, "broker_url": "redis://r:6379/0"},
    ],
)
def test_settings_errors_do_not_print_passwords(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEPATCH_ENV", "prod")
    for name, value in urls.items():
        monkeypatch.setenv(f"SAFEPATCH_{name.upper()}", value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    shown = str(raised.value) + repr(raised.value)
    # pydantic shortens the input it prints from the middle: look for the passwords' tails too.
    for secret in ("s3cr3t-Xy9", "an0ther-secret", "app:postgres@"):
        assert secret[2:] not in shown


def test_the_urls_are_masked_in_messages_and_left_out_of_repr() -> None:
    with pytest.raises(ValidationError, match=r"postgresql\+psycopg://app:\*\*\*@db/x uses a"):
        Settings(
            env="prod",
            database_url="postgresql+psycopg://app:postgres@db/x",
            broker_url=PROD_BROKER,
        )
    settings = Settings(
        database_url=PROD_DATABASE, broker_url=PROD_BROKER, rate_limit_redis_url=PROD_BROKER
    )
    assert "secret" not in repr(settings) and "s3cr3t" not in repr(settings)


def test_the_application_role_is_a_plain_identifier() -> None:
    assert Settings(database_app_role="safepatch_app").database_app_role == "safepatch_app"
    assert Settings(database_app_role="").database_app_role is None
    with pytest.raises(ValidationError, match="database_app_role"):
        Settings(database_app_role='app"; DROP TABLE x; --')
