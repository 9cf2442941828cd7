"""`routeworker topics create`: the four topics, created if missing (safe to run on every deploy).

The mutation log is compacted with its retention set explicitly (see
:func:`worker.replication.topics.mutation_topic_configs`); each topic gets
``--replication-factor`` copies of its partitions (three, or every broker of a smaller cluster).
"""

from __future__ import annotations

import argparse
import asyncio

from aiokafka.errors import KafkaError

from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.kafka_access import check_access
from worker.replication import ReplicationError, ensure_topics, topic_specs
from worker.replication.topics import (
    DEFAULT_REPLICATION_FACTOR,
    DEFAULT_TOMBSTONE_RETENTION_MS,
    TopicSpec,
    TopicStatus,
)


def _create(args: argparse.Namespace) -> int:
    settings = load_settings()
    specs = topic_specs(
        settings, args.partitions, args.mutation_partitions, int(args.tombstone_retention_hours * 3_600_000)
    )
    try:
        statuses = asyncio.run(_checked_create(settings, specs, args.replication_factor))
    except (KafkaError, ReplicationError) as error:
        message = " ".join(str(error).split())
        err_console.print(f"[red]routeworker:[/red] cannot create topics: {type(error).__name__}: {message}")
        return 1
    rows = [(s.name, s.partitions, s.replication_factor or "?", s.outcome, s.warning or "") for s in statuses]
    columns = ("topic", "partitions", "replicas", "status", "note")
    console.print(table(f"Topics on {settings.kafka_bootstrap}", columns, rows))
    return 0


async def _checked_create(
    settings: Settings, specs: list[TopicSpec], replication_factor: int | None
) -> list[TopicStatus]:
    await check_access(settings)  # TLS and SASL; creating topics needs CREATE, said by the broker
    return await ensure_topics(settings, specs, replication_factor)


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
    create.add_argument(
        "--replication-factor",
        type=_positive,
        default=None,
        help=f"copies of each partition (default: {DEFAULT_REPLICATION_FACTOR}, or every broker of a "
        "smaller cluster); existing topics are left as they are",
    )
    create.add_argument(
        "--tombstone-retention-hours",
        type=float,
        default=DEFAULT_TOMBSTONE_RETENTION_MS / 3_600_000,
        help="how long a route's tombstone stays in the mutation log (delete.retention.ms); a replica "
        "down for longer replays the whole log instead of resuming (default: %(default)g, 7 days)",
    )
    create.set_defaults(handler=_create)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
