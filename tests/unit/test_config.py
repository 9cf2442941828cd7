"""Settings: env and file sources, one-line errors naming the setting, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli.main import main
from worker.config import load_settings
from worker.errors import ConfigError


def test_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEWORKER_BATCH_SIZE", "64")
    monkeypatch.setenv("ROUTEWORKER_TOPIC_QUERIES", "in")
    settings = load_settings()
    assert settings.batch_size == 64
    assert settings.topic_queries == "in"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("ROUTEWORKER_BATCH_SIZE", "0", "ROUTEWORKER_BATCH_SIZE"),
        ("ROUTEWORKER_BATCH_SIZE", "many", "ROUTEWORKER_BATCH_SIZE"),
        ("ROUTEWORKER_MODEL_VARIANT", "fp8", "ROUTEWORKER_MODEL_VARIANT"),
        ("ROUTEWORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "kafka_sasl_mechanism"),
        ("ROUTEWORKER_NOT_A_SETTING", "1", None),
    ],
)
def test_bad_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str | None
) -> None:
    monkeypatch.setenv(name, value)
    if needle is None:  # unknown env vars with the prefix are ignored by the env source
        load_settings()
        return
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_file_source_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('batch_size = 16\ntopic_dlq = "dead"\n')
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(path))
    monkeypatch.setenv("ROUTEWORKER_BATCH_SIZE", "8")
    settings = load_settings()
    assert settings.batch_size == 8
    assert settings.topic_dlq == "dead"


def test_unknown_key_in_file_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("batch_sise: 16\n")
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match="BATCH_SISE"):
        load_settings()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.batch_size = 3  # type: ignore[misc]


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROUTEWORKER_KAFKA_SASL_PASSWORD", "hunter2-sasl")
    monkeypatch.setenv("ROUTEWORKER_REDIS_URL", "redis://:hunter2-redis@cache:6379/0")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.redacted())
    assert main(["config", "show"]) == 0
    assert "hunter2" not in capsys.readouterr().out


def test_cli_reports_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTEWORKER_MAX_TOP_N", "-3")
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "ROUTEWORKER_MAX_TOP_N" in err


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("worker.yaml", "- batch_size\n- 16\n", "must hold a mapping"),
        ("worker.json", "[1, 2]", "must hold a mapping"),
        ("worker.yaml", "batch_size: [", "while parsing"),
        ("worker.toml", "= broken", "Invalid statement"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("ROUTEWORKER_CONFIG_FILE: ")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_json_file_and_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "worker.json"
    path.write_text('{"BATCH_SIZE": 12}')
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(path))
    assert load_settings().batch_size == 12
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()
