"""`routeworker routes apply|list|delete|calibrate|replica`: publish route changes and run a replica.

`routes apply` also calibrates: it self-fits the routes the log will hold (head, head weight and
thresholds, by cross-validation over their utterances) and publishes the calibration after the
route records, so every replica serves the same one (`--no-calibrate` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.app.serving import scoring_config, self_fit_config
from worker.cli import replica_cmd
from worker.cli.calibration_view import calibration_table
from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition
from worker.embedding import EncoderPool
from worker.embedding.pool import encoder_pool
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
broker); {EXIT_LOG_MOVED} the log moved since the plan was made (another admin published meanwhile):
nothing was published, run it again."""


def _run(action: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run an async command; broker and log errors become one red line and exit code 1."""
    try:
        return asyncio.run(action())
    except LogMoved as error:
        err_console.print(f"[red]routeworker:[/red] {' '.join(str(error).split())}")
        return EXIT_LOG_MOVED
    except (KafkaError, ReplicationError, TimeoutError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        err_console.print(f"[red]routeworker:[/red] {message}")
        return 1


def _print_plan(plan: MutationPlan) -> None:
    if plan.changes:
        rows = [(c.kind, c.name, c.details) for c in plan.changes]
        console.print(table("Plan", ("change", "route", "details"), rows))
    console.print(plan.summary())


def _apply(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        routes = load_route_file(args.file, settings.limits)
    except RouteFileError as error:
        err_console.print(f"[red]invalid route file[/red] {error.source}; nothing was published:")
        for problem in error.problems:
            err_console.print(f"  {problem}")
        return 1
    return _run(lambda: _apply_async(settings, routes, args))


async def _apply_async(settings: Settings, routes: list[RouteDefinition], args: argparse.Namespace) -> int:
    encoder: EncoderPool | None = None
    if args.with_embeddings or not args.no_calibrate:
        with console.status("loading the embedding model"):
            encoder = await asyncio.to_thread(encoder_pool, settings)
    try:
        fingerprint = encoder.fingerprint if encoder is not None and args.with_embeddings else None
        with console.status(f"reading {settings.topic_mutations}"):
            plan, state = await plan_routes(settings, routes, prune=args.prune, fingerprint=fingerprint)
        console.print(f"{settings.topic_mutations}: {len(state.routes)} routes in {state.records} records")
        _print_plan(plan)
        planned = planned_routes(state, plan)
        calibrate = (
            encoder is not None
            and not args.no_calibrate
            and bool(planned)
            and (not plan.is_empty or not calibration_is_current(state, planned, encoder.fingerprint))
        )
        if args.dry_run or (plan.is_empty and not calibrate):
            if args.dry_run:
                console.print(
                    "dry run: nothing published" + (" (a calibration would be)" if calibrate else "")
                )
            elif not args.no_calibrate:
                console.print("the calibration in the log is current")
            return 0
        if args.with_embeddings and encoder is not None:
            with console.status("embedding the added and changed routes"):
                plan = await embedded_plan(plan, encoder)
            planned = planned_routes(state, plan)
        record = None
        if calibrate and encoder is not None:
            record = await _calibrate(settings, state, planned, encoder)
        receipt = await _publish_with_progress(settings, plan, record)
    finally:
        if encoder is not None:
            encoder.close()
    calibrated = " and a calibration" if record is not None else ""
    console.print(f"published {len(plan.changes)} mutations{calibrated}; log now at {receipt.positions}")
    return 0


async def _calibrate(
    settings: Settings, state: LogState, planned: dict[str, RouteDefinition], encoder: EncoderPool
) -> RouteCalibrationRecord:
    """Self-fit the routes the log will hold and print what was chosen."""

    def calibrate(vectors: list[RouteVectors]) -> RouteCalibration:
        return self_fit(vectors, scoring_config(settings), self_fit_config(settings, len(vectors)))

    with console.status(
        f"calibrating {len(planned)} routes (self-fit: cross-validation over their utterances)"
    ):
        calibration, record = await calibrate_plan(planned, encoder, calibrate)
    console.print(calibration_table(calibration))
    previous = state.calibration
    if previous is not None and previous.method.startswith("fit on"):
        err_console.print(
            f"[yellow]this replaces a calibration fitted on labelled examples ({previous.method}): "
            "run `routeworker fit --examples ... --publish` again to restore one[/yellow]"
        )
    return record


async def _publish_with_progress(
    settings: Settings, plan: MutationPlan, calibration: RouteCalibrationRecord | None
) -> PublishReceipt:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("publishing", total=len(plan.changes))
        return await publish_plan(
            settings, plan, on_acked=lambda n: progress.advance(task, n), calibration=calibration
        )


def _calibrate_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    return _run(lambda: _calibrate_async(settings))


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
    return _run(lambda: _list_async(settings, args))


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
    return _run(lambda: _delete_async(settings, args))


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
