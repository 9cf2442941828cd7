"""`routeworker routes apply|list|delete|replica`: publish route changes and run a replica."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.cli import replica_cmd
from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition
from worker.embedding import EncoderPool
from worker.embedding.pool import encoder_pool
from worker.replication import (
    MutationPlan,
    PublishReceipt,
    ReplicationError,
    RouteFileError,
    delete_routes,
    load_route_file,
    plan_routes,
    publish_plan,
    read_routes,
)
from worker.replication.routefile import dump_routes


def _run(action: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run an async command; broker and log errors become one red line and exit code 1."""
    try:
        return asyncio.run(action())
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
    if args.with_embeddings:
        with console.status("loading the embedding model"):
            encoder = await asyncio.to_thread(encoder_pool, settings)
    try:
        fingerprint = encoder.fingerprint if encoder is not None else None
        with console.status(f"reading {settings.topic_mutations}"):
            plan, state = await plan_routes(settings, routes, prune=args.prune, fingerprint=fingerprint)
        console.print(f"{settings.topic_mutations}: {len(state.routes)} routes in {state.records} records")
        _print_plan(plan)
        if args.dry_run or plan.is_empty:
            if args.dry_run:
                console.print("dry run: nothing published")
            return 0
        receipt = await _publish_with_progress(settings, plan, encoder)
    finally:
        if encoder is not None:
            encoder.close()
    console.print(f"published {receipt.published} mutations; log now at {receipt.positions}")
    return 0


async def _publish_with_progress(
    settings: Settings, plan: MutationPlan, encoder: EncoderPool | None
) -> PublishReceipt:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        label = "embedding and publishing" if encoder is not None else "publishing"
        task = progress.add_task(label, total=len(plan.changes))
        return await publish_plan(
            settings, plan, encoder=encoder, on_acked=lambda n: progress.advance(task, n)
        )


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

    apply = actions.add_parser("apply", help="make the log hold the routes of a YAML or JSON file")
    apply.add_argument("file", type=Path, help="route file: a list of routes")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, publish nothing")
    apply.add_argument("--prune", action="store_true", help="delete routes missing from the file")
    apply.add_argument(
        "--with-embeddings",
        action="store_true",
        help="embed utterances here and ship the vectors, so replicas need not embed",
    )
    apply.set_defaults(handler=_apply)

    listing = actions.add_parser("list", help="the routes the log holds now")
    listing.add_argument("--yaml", action="store_true", help="print them as a route file")
    listing.set_defaults(handler=_list)

    delete = actions.add_parser("delete", help="publish tombstones for routes")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.add_argument("--force", action="store_true", help="publish even for names not in the log")
    delete.set_defaults(handler=_delete)

    replica_cmd.register_action(actions)
