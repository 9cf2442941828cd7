"""`routes apply --replay`: the impact of a plan on recent traffic, the gate on it, the JSON report.

`routeworker routes apply routes.yaml --dry-run --replay 1h` (or ``--replay 500`` records) routes a
sample of ``queries`` through the current and the planned table (:mod:`worker.app.replay`) and
prints what moves. ``--fail-if-changed PCT`` exits with :data:`EXIT_CHANGED` when more than PCT %
of the sample changes route (without ``--dry-run``, nothing is published then). When ``queries``
cannot be read, the plan is still printed with one line saying why; the gate cannot judge then and
exits 1. An empty sample passes: nothing is known to move.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.app.replay import ReplayReport, ServedTable, replay_sample
from worker.app.traffic_sample import SampleSpec, SampleUnavailable, read_sample
from worker.cli.console import err_console
from worker.cli.replay_view import print_replay, replay_json
from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition
from worker.embedding import EncoderPool
from worker.replication import LogState, MutationPlan

#: exit status when more of the sample than --fail-if-changed changes route
EXIT_CHANGED = 4
#: queries embedded at most by default
DEFAULT_LIMIT = 2_000


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """A replay's report, or why there is none (``queries`` could not be read)."""

    report: ReplayReport | None
    unavailable: str | None = None


async def run_replay(
    settings: Settings,
    encoder: EncoderPool,
    args: argparse.Namespace,
    state: LogState,
    planned: Mapping[str, RouteDefinition],
    planned_calibration: RouteCalibrationRecord | None,
    out: Console,
) -> ReplayOutcome:
    """Read the sample ``args.replay`` asks for and print the impact of the plan on it."""
    spec = SampleSpec.parse(args.replay, limit=args.replay_limit)
    topic = settings.topic_queries
    try:
        with out.status(f"reading {spec.describe()} of {topic}"):
            sample = await read_sample(settings, spec)
    except SampleUnavailable as error:
        reason = " ".join(str(error).split())
        out.print(f"[yellow]replay: {reason}; the plan above is structural only[/yellow]")
        return ReplayOutcome(None, reason)
    current = ServedTable(state.routes, state.calibration, state.end_offsets)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("embedding the sample", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = await replay_sample(
            settings,
            encoder,
            spec,
            sample,
            current,
            ServedTable(planned, planned_calibration),
            progress=advance,
        )
    print_replay(report, topic, out, show_examples=args.show_examples)
    return ReplayOutcome(report)


def gate(outcome: ReplayOutcome | None, percent: float | None, out: Console) -> int:
    """The exit status ``--fail-if-changed percent`` asks for (0 without it)."""
    if percent is None or outcome is None:
        return 0
    if outcome.report is None:
        out.print(f"[red]--fail-if-changed {percent:g}: no sample to judge the change by[/red]")
        return 1
    impact = outcome.report.impact
    if impact.exceeds(percent):
        out.print(
            f"[red]{impact.share:.1%} of the sample changes route: more than --fail-if-changed "
            f"{percent:g}%[/red]"
        )
        return EXIT_CHANGED
    out.print(f"{impact.share:.1%} of the sample changes route: within --fail-if-changed {percent:g}%")
    return 0


def write_json(
    settings: Settings,
    state: LogState,
    plan: MutationPlan,
    outcome: ReplayOutcome | None,
    args: argparse.Namespace,
    status: int,
    *,
    published: bool,
) -> None:
    """The plan, the replay and the verdict as one JSON document on stdout (``--output json``)."""
    document: dict[str, Any] = {
        "topic_mutations": settings.topic_mutations,
        "routes": len(state.routes),
        "records": state.records,
        "plan": {
            "summary": plan.summary(),
            "changes": [{"kind": c.kind, "route": c.name, "details": c.details} for c in plan.changes],
        },
        "topic_queries": settings.topic_queries,
        "replay": None,
        "replay_unavailable": None,
        "fail_if_changed": args.fail_if_changed,
        "dry_run": args.dry_run,
        "published": published,
        "exit_status": status,
    }
    if outcome is not None:
        document["replay_unavailable"] = outcome.unavailable
        if outcome.report is not None:
            document["replay"] = replay_json(outcome.report, show_examples=args.show_examples)
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def check_arguments(args: argparse.Namespace) -> str | None:
    """Why the replay options do not go together (None when they do)."""
    if args.replay is None and args.fail_if_changed is not None:
        return "--fail-if-changed needs --replay"
    if args.replay is None and args.show_examples:
        return "--show-examples needs --replay"
    if args.fail_if_changed is not None and not 0 <= args.fail_if_changed <= 100:
        return "--fail-if-changed is a percentage, within [0, 100]"
    if args.replay_limit < 1:
        return "--replay-limit is at least 1"
    return None


def _sample_text(text: str) -> str:
    try:
        SampleSpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def add_arguments(apply: argparse.ArgumentParser) -> None:
    """The replay options of `routes apply`."""
    apply.add_argument(
        "--replay",
        type=_sample_text,
        default=None,
        metavar="WINDOW|N",
        help="route recent queries through the current and the planned table and print what moves: "
        "a window (30m, 1h, 2d) or the last N records",
    )
    apply.add_argument(
        "--replay-limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"embed at most N queries of the sample (default {DEFAULT_LIMIT})",
    )
    apply.add_argument(
        "--fail-if-changed",
        type=float,
        default=None,
        metavar="PCT",
        help=f"exit {EXIT_CHANGED} (and publish nothing) when more than PCT %% of the sample changes route",
    )
    apply.add_argument(
        "--show-examples",
        action="store_true",
        help="print the texts of the most affected queries (never their metadata)",
    )
    apply.add_argument(
        "--output", choices=("text", "json"), default="text", help="json: the report as JSON on stdout"
    )
