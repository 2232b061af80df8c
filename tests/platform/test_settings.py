"""One settings object: embedded defaults, real services by environment, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celeriac.platform.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("CELERIAC_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CELERIAC_VAR_DIR", str(tmp_path / "var"))


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings()
    var = tmp_path / "var"
    assert settings.database_url == f"sqlite:///{var / 'celeriac.db'}"
    assert settings.is_embedded_broker
    assert settings.blob.backend == "local"
    assert settings.blob.local_dir == var / "blobs"
    assert settings.keys.provider == "local"
    assert settings.keys.keyring_path == var / "keyring.json"
    assert settings.celery_result_backend == f"db+sqlite:///{var / 'results.db'}"


def test_generated_secrets_are_private_and_stable(tmp_path: Path) -> None:
    first = load_settings()
    secret_file = tmp_path / "var" / "secrets" / "jwt-hs256"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert len(first.jwt_secret()) >= 32
    assert load_settings().jwt_secret() == first.jwt_secret()


def test_environment_switches_to_real_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_DATABASE_URL", "postgresql+psycopg://u@db:5432/celeriac")
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://cache:6379/0")
    monkeypatch.setenv("CELERIAC_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("CELERIAC_BLOB__BACKEND", "s3")
    monkeypatch.setenv("CELERIAC_BLOB__S3_BUCKET", "celeriac-data")
    monkeypatch.setenv("CELERIAC_WORKERS__COMPUTE_CONCURRENCY", "8")
    settings = load_settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.is_embedded_broker
    assert settings.celery_result_backend == "redis://cache:6379/1"
    assert (settings.blob.backend, settings.blob.s3_bucket) == ("s3", "celeriac-data")
    assert settings.workers.compute_concurrency == 8


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CELERIAC_DATABASE_URL", "mysql://root@db/x"),
        ("CELERIAC_BROKER_URL", "kafka://broker:9092"),
        ("CELERIAC_REDIS_URL", "http://cache"),
        ("CELERIAC_WORKERS__COMPUTE_CONCURRENCY", "zero"),
        ("CELERIAC_API__PORT", "70000"),
        ("CELERIAC_BLOB__BACKEND", "ftp"),
        ("CELERIAC_NO_SUCH_SETTING", "1"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert variable in message
    assert "\n" not in message


def test_the_client_variables_do_not_stop_the_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README has a tenant export CELERIAC_URL and CELERIAC_API_KEY for celeriac-client;
    ``celeriac admin ...`` in that shell refused them as typos."""
    monkeypatch.setenv("CELERIAC_URL", "http://localhost:8000")
    monkeypatch.setenv("CELERIAC_API_KEY", "ck_live_x")
    assert load_settings().api.port == 8000
    monkeypatch.setenv("CELERIAC_API_KEYS", "ck_live_x")
    with pytest.raises(SettingsError, match="CELERIAC_API_KEYS"):
        load_settings()


def test_url_passwords_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_DATABASE_URL", "mysql://admin:hunter2@db/x")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert "hunter2" not in str(excinfo.value)


def test_short_jwt_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_AUTH__JWT_HS256_SECRET", "too-short")
    with pytest.raises(SettingsError, match="CELERIAC_AUTH__JWT_HS256_SECRET"):
        load_settings()


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.environment = "prod"  # type: ignore[misc]
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KEYS__PROVIDER": "kms", "KEYS__MODE": "pooled"}, "KMS_POOLED_KEY_ID"),
        ({"BLOB__BACKEND": "s3"}, "CELERIAC_BLOB__S3_BUCKET"),
        ({"BLOB__S3_SSE": "tenant_key"}, "CELERIAC_KEYS__PROVIDER=kms"),
        ({"KEYS__DELETION_WINDOW_DAYS": "3"}, "CELERIAC_KEYS__DELETION_WINDOW_DAYS"),
        ({"KEYS__KMS_ALIAS_PREFIX": "celeriac/"}, "CELERIAC_KEYS__KMS_ALIAS_PREFIX"),
    ],
)
def test_unsafe_or_incomplete_key_and_blob_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"CELERIAC_{name}", value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_no_setting_turns_tenant_encryption_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benches measure clear blobs with a patch of their own (bench/clear_blobs.py);
    the product has no switch for it, whatever the environment is called."""
    monkeypatch.setenv("CELERIAC_KEYS__ENCRYPTION", "false")
    monkeypatch.setenv("CELERIAC_ENVIRONMENT", "benchmark")
    with pytest.raises(SettingsError, match="CELERIAC_KEYS__ENCRYPTION"):
        load_settings()
    monkeypatch.delenv("CELERIAC_KEYS__ENCRYPTION")
    defaults = load_settings().keys
    assert (defaults.mode, defaults.deletion_window_days) == ("per_tenant", 30)
