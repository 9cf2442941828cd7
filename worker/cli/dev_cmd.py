"""`routeworker dev`: a private broker and Redis in the foreground until Ctrl-C (see worker.demo.dev)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from worker.cli.console import console
from worker.demo.dev import BROKERS, DEFAULT_BROKER, run_dev


def _dev(args: argparse.Namespace) -> int:
    run_dev(
        lambda line: console.print(escape(line), soft_wrap=True, highlight=False),
        broker=args.broker,
        partitions=args.partitions,
        routes=args.routes,
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dev", help="a private broker and Redis for your own routes, until Ctrl-C")
    parser.add_argument(
        "--broker", choices=sorted(BROKERS), default=DEFAULT_BROKER, help="which private broker"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions of queries, intents and DLQ")
    parser.add_argument(
        "--routes", type=Path, default=None, help="a route file to apply once the topics exist"
    )
    parser.set_defaults(handler=_dev)
