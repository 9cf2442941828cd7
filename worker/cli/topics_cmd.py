"""`routeworker topics create`: the four topics, created if missing (safe to run on every deploy)."""

from __future__ import annotations

import argparse
import asyncio

from aiokafka.errors import KafkaError

from worker.cli.console import console, err_console, table
from worker.config import load_settings
from worker.replication import ensure_topics, topic_specs


def _create(args: argparse.Namespace) -> int:
    settings = load_settings()
    specs = topic_specs(settings, args.partitions, args.mutation_partitions)
    try:
        statuses = asyncio.run(ensure_topics(settings, specs, args.replication_factor))
    except KafkaError as error:
        err_console.print(f"[red]routeworker:[/red] cannot create topics: {type(error).__name__}: {error}")
        return 1
    rows = [(s.name, s.partitions, s.outcome, s.warning or "") for s in statuses]
    console.print(
        table(f"Topics on {settings.kafka_bootstrap}", ("topic", "partitions", "status", "note"), rows)
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("topics", help="create the Kafka topics")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="create queries, routed-intents, queries.dlq and the compacted mutation log"
    )
    create.add_argument("--partitions", type=int, default=6, help="partitions of queries, intents and DLQ")
    create.add_argument(
        "--mutation-partitions", type=int, default=1, help="partitions of the mutation log (never change it)"
    )
    create.add_argument("--replication-factor", type=int, default=1)
    create.set_defaults(handler=_create)
