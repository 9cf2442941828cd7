"""Secrets from the deployment environment never reach logs, reprs or `config show`.

Kubernetes and compose hand the SASL password and the Redis URL (password inside) to the worker as
environment variables; whatever the worker logs about its settings must not echo them.
"""

from __future__ import annotations

import json
import logging

import pytest

from worker.cli.main import main
from worker.config import Settings, load_settings
from worker.errors import ConfigError

SASL_PASSWORD = "s3cr3t-sasl-Pa55"
REDIS_PASSWORD = "s3cr3t-redis-Pa55"
KEY_PASSWORD = "s3cr3t-tls-key-Pa55"
SECRETS = (SASL_PASSWORD, REDIS_PASSWORD, KEY_PASSWORD)

logger = logging.getLogger("routeworker.test.secrets")


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SASL_USERNAME", "routeworker")
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("ROUTEWORKER_REDIS_URL", f"redis://:{REDIS_PASSWORD}@redis.cache.svc:6379/0")
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SSL_KEY_PASSWORD", KEY_PASSWORD)
    settings = load_settings()
    # the secrets did arrive: the test would prove nothing otherwise
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == SASL_PASSWORD
    assert settings.redis_url is not None
    assert REDIS_PASSWORD in settings.redis_url.get_secret_value()
    return settings


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_logging_the_settings_reveals_no_secret(
    secret_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.info("settings %s", secret_settings.redacted())
        logger.info("settings %r", secret_settings)
        logger.info("settings %s", secret_settings)
        logger.debug("password field %s / %r", secret_settings.kafka_sasl_password, secret_settings.redis_url)
    assert len(caplog.records) == 4
    assert_clean(caplog.text)
    for record in caplog.records:
        assert_clean(record.getMessage())


def test_reprs_and_dumps_reveal_no_secret(secret_settings: Settings) -> None:
    assert_clean(repr(secret_settings))
    assert_clean(str(secret_settings))
    assert_clean(f"{secret_settings}")
    assert_clean(secret_settings.model_dump_json())
    assert_clean(str(secret_settings.model_dump()))
    assert_clean(json.dumps(secret_settings.redacted()))
    redacted = secret_settings.redacted()
    assert redacted["kafka_sasl_username"] == "routeworker", "only secrets are masked"
    assert redacted["kafka_sasl_password"] != SASL_PASSWORD


def test_config_show_reveals_no_secret(secret_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    out, err = capsys.readouterr()
    assert "ROUTEWORKER_KAFKA_SASL_PASSWORD" in out
    assert "ROUTEWORKER_KAFKA_SSL_KEY_PASSWORD" in out
    assert_clean(out + err)


def test_a_config_error_next_to_secrets_reveals_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("ROUTEWORKER_REDIS_URL", f"redis://:{REDIS_PASSWORD}@redis:6379/0")
    monkeypatch.setenv("ROUTEWORKER_BATCH_SIZE", "not-a-number")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert_clean(str(info.value))
    assert main(["config", "show"]) == 2
    out, err = capsys.readouterr()
    assert "ROUTEWORKER_BATCH_SIZE" in err
    assert_clean(out + err)
