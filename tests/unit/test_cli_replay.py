"""`routes apply --replay`: the gate, the options, and what the report shows (texts only when asked)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

import worker.cli.routes_cmd as routes_cmd
from worker.app.replay import ReplayReport
from worker.cli.main import main
from worker.cli.replay_cmd import EXIT_CHANGED, ReplayOutcome, check_arguments, gate
from worker.cli.replay_view import nothing_to_replay, print_replay, replay_json
from worker.kafka_access import Need, Operation
from worker.routing import Decision
from worker.routing.impact import RouteImpact, compare

SECRET_TEXT = "my card number is 4111"


def _impact() -> RouteImpact:
    before = [
        Decision("payments", 0.8, (), ()),
        Decision("payments", 0.7, (), ()),
        Decision("x", 0.9, (), ()),
    ]
    after = [Decision("billing", 0.9, (), ()), Decision(None, 0.3, (), ()), Decision("x", 0.9, (), ())]
    return compare(before, after, ["q1", "q2", "q3"], [SECRET_TEXT, "refund please", "other"])


def _report(impact: RouteImpact | None = None, records: int = 4, malformed: int = 1) -> ReplayReport:
    impact = impact if impact is not None else _impact()
    return ReplayReport(
        sample="the last 1h (at most 2000 records)",
        records=records,
        malformed={"invalid_json": malformed} if malformed else {},
        queries=impact.queries,
        unembeddable=0,
        embedded=impact.queries,
        impact=impact,
        current_calibration="calibration aaa",
        planned_calibration="calibration bbb",
        model="model@fp32:1",
        read_seconds=0.1,
        tables_seconds=0.2,
        embed_seconds=0.3,
        route_seconds=0.01,
    )


def _printed(report: ReplayReport, show_examples: bool) -> str:
    out = Console(file=io.StringIO(), width=200)
    print_replay(report, "queries", out, show_examples=show_examples)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_the_gate_fails_above_the_share_and_cannot_judge_without_a_sample() -> None:
    out = Console(file=io.StringIO())
    outcome = ReplayOutcome(_report())  # 2 of 3 change route
    assert gate(outcome, None, out) == 0
    assert gate(outcome, 66, out) == EXIT_CHANGED
    assert gate(outcome, 67, out) == 0
    assert gate(ReplayOutcome(None, "topic 'queries' does not exist"), 50, out) == 1
    assert gate(ReplayOutcome(_report(compare([], [], [], []), records=0, malformed=0)), 0, out) == 0


def test_texts_are_shown_only_with_show_examples() -> None:
    report = _report()
    hidden = _printed(report, show_examples=False)
    assert "2 of 3 queries change route (66.7%)" in hidden
    assert "payments" in hidden
    assert "billing" in hidden
    assert "(no match)" in hidden
    assert SECRET_TEXT not in hidden
    assert "--show-examples shows them" in hidden
    assert "1 malformed (invalid_json 1)" in hidden
    assert SECRET_TEXT in _printed(report, show_examples=True)
    assert all("text" not in e for e in replay_json(report, show_examples=False)["examples"])
    shown = replay_json(report, show_examples=True)
    assert [e["text"] for e in shown["examples"]] == ["refund please", SECRET_TEXT]  # largest change first
    assert shown["moves"] == [
        {"from": "payments", "to": None, "count": 1},
        {"from": "payments", "to": "billing", "count": 1},
    ]


def test_a_sample_with_nothing_to_replay_is_one_line() -> None:
    empty = compare([], [], [], [])
    line = nothing_to_replay(_report(empty, records=0, malformed=0), "queries")
    assert line == "replay: queries holds no records in the last 1h (at most 2000 records): nothing to replay"
    malformed = nothing_to_replay(_report(empty, records=3, malformed=3), "queries")
    assert malformed is not None
    assert "all 3 records" in malformed
    assert "invalid_json 3" in malformed
    printed = _printed(_report(empty, records=3, malformed=3), show_examples=True).strip()
    assert len(printed.splitlines()) == 1
    assert nothing_to_replay(_report(), "queries") is None


def _args(**given: object) -> argparse.Namespace:
    defaults = {"replay": None, "fail_if_changed": None, "show_examples": False, "replay_limit": 2000}
    return argparse.Namespace(**{**defaults, **given})


def test_options_that_need_a_replay() -> None:
    assert check_arguments(_args()) is None
    assert check_arguments(_args(replay="1h", fail_if_changed=5.0)) is None
    assert check_arguments(_args(fail_if_changed=5.0)) == "--fail-if-changed needs --replay"
    assert check_arguments(_args(show_examples=True)) == "--show-examples needs --replay"
    assert check_arguments(_args(replay="1h", fail_if_changed=101.0)) is not None
    assert check_arguments(_args(replay="1h", replay_limit=0)) is not None


def test_the_command_line_refuses_a_gate_without_a_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("- name: billing\n  utterances: [pay my bill]\n")
    assert main(["routes", "apply", str(routes), "--dry-run", "--fail-if-changed", "5"]) == 2
    assert "--fail-if-changed needs --replay" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["routes", "apply", str(routes), "--dry-run", "--replay", "yesterday"])
    assert "neither a duration" in capsys.readouterr().err


def test_the_text_report_lists_the_largest_moves_and_counts_the_rest() -> None:
    routes = [f"r{i:02d}" for i in range(30)]
    before = [Decision(r, 0.5, (), ()) for r in routes for _ in range(2 if r < "r05" else 1)]
    after = [Decision(None, 0.4, (), ()) for _ in before]
    ids = [str(i) for i in range(len(before))]
    report = _report(compare(before, after, ids, ids), records=len(before), malformed=0)
    printed = _printed(report, show_examples=False)
    assert "Moves (the 20 largest)" in printed
    assert "and 10 smaller moves of 10 queries" in printed
    assert len(replay_json(report, show_examples=False)["moves"]) == 30


def test_a_dry_run_needs_only_read_access_to_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("- name: billing\n  utterances: [pay my bill]\n")
    asked: list[set[Operation]] = []

    def run(action: object, settings: object, needs: Sequence[Need]) -> int:
        asked.append({need.operation for need in needs})
        return 0

    monkeypatch.setattr(routes_cmd, "_run", run)
    assert main(["routes", "apply", str(routes), "--dry-run", "--replay", "1h"]) == 0
    assert main(["routes", "apply", str(routes)]) == 0
    assert asked == [{Operation.READ}, {Operation.READ, Operation.WRITE}]
