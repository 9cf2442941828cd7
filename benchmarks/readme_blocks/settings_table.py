"""The settings table: every ``ROUTEWORKER_*`` variable, from the settings model."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block
from worker.config_docs import settings_rows


@block("settings-table")
def settings(results: Path) -> str:
    return settings_rows()
