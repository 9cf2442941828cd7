"""`routeworker demo`: the whole system on embedded defaults, with a live view and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.console import console
from worker.demo.runner import ROUTES, run_demo


def _demo(args: argparse.Namespace) -> int:
    return run_demo(console, queries=args.queries, rate=args.rate, replicas=args.replicas, routes=args.routes)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run everything locally on sample traffic and watch it live")
    parser.add_argument("--queries", type=int, default=400, help="sample queries to produce")
    parser.add_argument("--rate", type=float, default=40.0, help="queries per second")
    parser.add_argument("--replicas", type=int, default=2, help="worker replicas")
    parser.add_argument("--routes", type=Path, default=ROUTES, help="route file to apply")
    parser.set_defaults(handler=_demo)
