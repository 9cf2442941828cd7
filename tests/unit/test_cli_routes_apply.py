"""`routes apply` when the log moved between its plan and its publish: exit 3, one line, nothing
published (issue 13, item 8; the race itself is tested on Apache Kafka in
tests/integration/test_concurrent_admins.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import worker.cli.routes_cmd as routes_cmd
from worker.cli.main import main
from worker.replication import LogMoved, LogState, plan_changes


def test_a_log_that_moved_is_exit_3_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("- name: billing\n  utterances: [pay my bill]\n")
    published: list[Any] = []

    async def plan(settings: Any, wanted: Any, **options: Any) -> tuple[Any, LogState]:
        return plan_changes({}, wanted), LogState({}, {0: 7}, 7, 0)

    async def publish(settings: Any, plan: Any, **options: Any) -> Any:
        published.append(plan)
        raise LogMoved("route-mutations", {0: 7}, {0: 9})

    monkeypatch.setattr(routes_cmd, "plan_routes", plan)
    monkeypatch.setattr(routes_cmd, "publish_plan", publish)
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["routes", "apply", str(routes), "--prune"]) == routes_cmd.EXIT_LOG_MOVED == 3
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "moved since the plan was made" in error
    assert "{0: 7}" in error
    assert "{0: 9}" in error
    assert len(published) == 1
