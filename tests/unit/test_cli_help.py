"""`routeworker --help` lists every command with one line each."""

from __future__ import annotations

import pytest

from worker.cli.main import main

COMMANDS = ("demo", "dev", "config", "fit", "model", "run", "route", "schemas", "routes", "topics")


def test_help_lists_every_command_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("  COMMAND") + 1
    listed = lines[start : start + len(COMMANDS)]
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert all(len(line.split(maxsplit=1)) == 2 for line in listed), "each command has its help on its line"
