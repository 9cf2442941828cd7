"""The README's configuration table is generated from the settings model, and kept in sync."""

from __future__ import annotations

from pathlib import Path

from worker.config_docs import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_current() -> None:
    stale = "README settings table is stale: run `routeworker config docs`"
    assert settings_table() in README.read_text(), stale
