"""`routeworker routes apply|list|delete|calibrate|replica`: publish route changes and run a replica.

`routes apply` also calibrates: it self-fits the routes the log will hold (head, head weight and
thresholds, by cross-validation over their utterances) and publishes the calibration after the
route records, so every replica serves the same one (`--no-calibrate` skips it). With `--replay`
it routes recent queries through the current and the planned table and prints what would move
(:mod:`worker.cli.replay_cmd`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.app.serving import scoring_config, self_fit_config
from worker.cli import replay_cmd, replica_cmd
from worker.cli.calibration_view import calibration_table
from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition
from worker.embedding import EncoderPool
from worker.embedding.pool import encoder_pool
from worker.kafka_access import Need, check_access, log_reader_needs, publisher_needs
from worker.replication import (
    LogMoved,
    LogState,
    MutationPlan,
    PublishReceipt,
    ReplicationError,
    RouteFileError,
    calibrate_plan,
    calibration_is_current,
    delete_routes,
    embedded_plan,
    load_route_file,
    plan_routes,
    planned_routes,
    publish_calibration,
    publish_plan,
    read_routes,
)
from worker.replication.routefile import dump_routes
from worker.routing import RouteCalibration, RouteVectors, self_fit

#: exit status of `routes apply` when the log moved between planning and publishing
EXIT_LOG_MOVED = 3

APPLY_EPILOG = f"""exit status: 0 published (or nothing to do, or --dry-run); 1 an error (bad file, no
broker; with --fail-if-changed, also a queries topic that cannot be read); 2 options that do not go
together; {EXIT_LOG_MOVED} the log moved since the plan was made (another admin published meanwhile):
nothing was published, run it again; {replay_cmd.EXIT_CHANGED} more of the replayed sample than
--fail-if-changed changes route: nothing was published.

  routeworker routes apply routes.yaml --dry-run --replay 1h --fail-if-changed 5"""


def _run(action: Callable[[], Coroutine[Any, Any, int]], settings: Settings, needs: Sequence[Need]) -> int:
    """Check Kafka access for ``needs``, then run an async command; broker and log errors become
    one red line and exit code 1 (a refused access too, in :func:`worker.cli.main.main`)."""

    async def checked() -> int:
        await check_access(settings, needs)
        return await action()

    try:
        return asyncio.run(checked())
    except LogMoved as error:
        err_console.print(f"[red]routeworker:[/red] {' '.join(str(error).split())}")
        return EXIT_LOG_MOVED
    except (KafkaError, ReplicationError, TimeoutError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        err_console.print(f"[red]routeworker:[/red] {message}")
        return 1


def _print_plan(plan: MutationPlan, out: Console) -> None:
    if plan.changes:
        rows = [(c.kind, c.name, c.details) for c in plan.changes]
        out.print(table("Plan", ("change", "route", "details"), rows))
    out.print(plan.summary())


def _apply(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        routes = load_route_file(args.file, settings.limits)
    except RouteFileError as error:
        err_console.print(f"[red]invalid route file[/red] {error.source}; nothing was published:")
        for problem in error.problems:
            err_console.print(f"  {problem}")
        return 1
    mismatch = replay_cmd.check_arguments(args)
    if mismatch is not None:
        err_console.print(f"[red]routeworker routes apply:[/red] {mismatch}")
        return 2
    # a dry run only reads the log (and, with --replay, queries: a refusal there is one line, not fatal)
    needs = log_reader_needs(settings) if args.dry_run else publisher_needs(settings)
    return _run(lambda: _apply_async(settings, routes, args), settings, needs)


async def _apply_async(settings: Settings, routes: list[RouteDefinition], args: argparse.Namespace) -> int:
    as_json = args.output == "json"
    out = err_console if as_json else console  # stdout carries the JSON document alone
    encoder: EncoderPool | None = None
    if args.with_embeddings or not args.no_calibrate or args.replay is not None:
        with out.status("loading the embedding model"):
            encoder = await asyncio.to_thread(encoder_pool, settings)
    try:
        fingerprint = encoder.fingerprint if encoder is not None and args.with_embeddings else None
        with out.status(f"reading {settings.topic_mutations}"):
            plan, state = await plan_routes(settings, routes, prune=args.prune, fingerprint=fingerprint)
        out.print(f"{settings.topic_mutations}: {len(state.routes)} routes in {state.records} records")
        _print_plan(plan, out)
        planned = planned_routes(state, plan)
        calibrate = (
            encoder is not None
            and not args.no_calibrate
            and bool(planned)
            and (not plan.is_empty or not calibration_is_current(state, planned, encoder.fingerprint))
        )
        record = None
        if calibrate and encoder is not None and (not args.dry_run or args.replay is not None):
            # made before the replay, so the planned table serves what would be published
            record = await _calibrate(settings, state, planned, encoder, out)
        outcome: replay_cmd.ReplayOutcome | None = None
        if args.replay is not None and encoder is not None:
            planned_calibration = record if record is not None else state.calibration
            outcome = await replay_cmd.run_replay(
                settings, encoder, args, state, planned, planned_calibration, out
            )
        status = replay_cmd.gate(outcome, args.fail_if_changed, out)
        publishes = not args.dry_run and status == 0 and (not plan.is_empty or record is not None)
        if not publishes:
            if args.dry_run:
                would = " (nor the calibration above)" if record is not None else " (a calibration would be)"
                out.print("dry run: nothing published" + (would if calibrate else ""))
            elif status != 0:
                out.print("[red]nothing published[/red]")
            elif not args.no_calibrate:
                out.print("the calibration in the log is current")
            if as_json:
                replay_cmd.write_json(settings, state, plan, outcome, args, status, published=False)
            return status
        if args.with_embeddings and encoder is not None:
            with out.status("embedding the added and changed routes"):
                plan = await embedded_plan(plan, encoder)
        receipt = await _publish_with_progress(settings, plan, record, out)
    finally:
        if encoder is not None:
            encoder.close()
    calibrated = " and a calibration" if record is not None else ""
    out.print(f"published {len(plan.changes)} mutations{calibrated}; log now at {receipt.positions}")
    if as_json:
        replay_cmd.write_json(settings, state, plan, outcome, args, 0, published=True)
    return 0


async def _calibrate(
    settings: Settings,
    state: LogState,
    planned: dict[str, RouteDefinition],
    encoder: EncoderPool,
    out: Console = console,
) -> RouteCalibrationRecord:
    """Self-fit the routes the log will hold and print what was chosen."""

    def calibrate(vectors: list[RouteVectors]) -> RouteCalibration:
        return self_fit(vectors, scoring_config(settings), self_fit_config(settings, len(vectors)))

    with out.status(f"calibrating {len(planned)} routes (self-fit: cross-validation over their utterances)"):
        calibration, record = await calibrate_plan(planned, encoder, calibrate)
    out.print(calibration_table(calibration))
    previous = state.calibration
    if previous is not None and previous.method.startswith("fit on"):
        err_console.print(
            f"[yellow]this replaces a calibration fitted on labelled examples ({previous.method}): "
            "run `routeworker fit --examples ... --publish` again to restore one[/yellow]"
        )
    return record


async def _publish_with_progress(
    settings: Settings,
    plan: MutationPlan,
    calibration: RouteCalibrationRecord | None,
    out: Console = console,
) -> PublishReceipt:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("publishing", total=len(plan.changes))
        return await publish_plan(
            settings, plan, on_acked=lambda n: progress.advance(task, n), calibration=calibration
        )


def _calibrate_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    return _run(lambda: _calibrate_async(settings), settings, publisher_needs(settings))


async def _calibrate_async(settings: Settings) -> int:
    with console.status("loading the embedding model"):
        encoder = await asyncio.to_thread(encoder_pool, settings)
    try:
        with console.status(f"reading {settings.topic_mutations}"):
            state = await read_routes(settings)
        if not state.routes:
            err_console.print(f"[red]{settings.topic_mutations} holds no routes to calibrate[/red]")
            return 1
        record = await _calibrate(settings, state, state.routes, encoder)
        receipt = await publish_calibration(settings, record)
    finally:
        encoder.close()
    console.print(f"published the calibration; log now at {receipt.positions}")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = load_settings()
    return _run(lambda: _list_async(settings, args), settings, log_reader_needs(settings))


async def _list_async(settings: Settings, args: argparse.Namespace) -> int:
    state = await read_routes(settings)
    routes = [state.routes[name] for name in sorted(state.routes)]
    if args.yaml:
        sys.stdout.write(dump_routes(routes))
        return 0
    rows = [
        (
            r.name,
            len(r.utterances),
            len(r.negative_utterances),
            "default" if r.threshold is None else f"{r.threshold:g}",
            r.embeddings.fingerprint if r.embeddings is not None else "-",
        )
        for r in routes
    ]
    title = f"{settings.topic_mutations}: {len(routes)} routes"
    console.print(table(title, ("route", "utterances", "negatives", "threshold", "shipped vectors"), rows))
    if state.skipped:
        err_console.print(f"[yellow]{state.skipped} malformed records were skipped[/yellow]")
    return 0


def _delete(args: argparse.Namespace) -> int:
    settings = load_settings()
    return _run(lambda: _delete_async(settings, args), settings, publisher_needs(settings))


async def _delete_async(settings: Settings, args: argparse.Namespace) -> int:
    if not args.force:
        state = await read_routes(settings)
        unknown = [name for name in args.names if name not in state.routes]
        if unknown:
            err_console.print(f"[red]not in the log:[/red] {', '.join(unknown)} (--force publishes anyway)")
            return 1
    receipt = await delete_routes(settings, args.names)
    console.print(f"deleted {', '.join(args.names)}; log now at {receipt.positions}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("routes", help="publish route changes to the mutation log; run a replica")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    apply = actions.add_parser(
        "apply",
        help="make the log hold the routes of a YAML or JSON file",
        epilog=APPLY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("file", type=Path, help="route file: a list of routes")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, publish nothing")
    apply.add_argument("--prune", action="store_true", help="delete routes missing from the file")
    apply.add_argument(
        "--with-embeddings",
        action="store_true",
        help="embed utterances here and ship the vectors, so replicas need not embed",
    )
    apply.add_argument(
        "--no-calibrate",
        action="store_true",
        help="publish no calibration (changed routes fall back to nearest utterances)",
    )
    replay_cmd.add_arguments(apply)
    apply.set_defaults(handler=_apply)

    calibrate = actions.add_parser("calibrate", help="self-fit the log's routes and publish the calibration")
    calibrate.set_defaults(handler=_calibrate_command)

    listing = actions.add_parser("list", help="the routes the log holds now")
    listing.add_argument("--yaml", action="store_true", help="print them as a route file")
    listing.set_defaults(handler=_list)

    delete = actions.add_parser("delete", help="publish tombstones for routes")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.add_argument("--force", action="store_true", help="publish even for names not in the log")
    delete.set_defaults(handler=_delete)

    replica_cmd.register_action(actions)
