"""`routeworker demo`: the whole system on embedded defaults, with a live view and a summary."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from worker.cli.console import console, table
from worker.demo.runner import ROUTES, DemoOutcome, run_demo
from worker.local.errors import ServiceError


def _demo(args: argparse.Namespace) -> int:
    try:
        outcome = run_demo(
            console, queries=args.queries, rate=args.rate, replicas=args.replicas, routes=args.routes
        )
    except ServiceError as exc:  # no Java, no jars, a broker that did not start: say why, no trace
        print(f"routeworker demo: {exc}", file=sys.stderr)
        return 1
    _summary(outcome)
    return 0 if outcome.complete else 1


def _summary(outcome: DemoOutcome) -> None:
    tally = outcome.tally
    elapsed = time.monotonic() - tally.started
    lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.zeros(1)
    rows = [
        ("queries produced", tally.produced),
        ("routed", tally.routed),
        ("no match", tally.no_match),
        ("dead-lettered", sum(tally.dlq.values())),
        ("p50 latency ms (query timestamp → intent)", f"{np.percentile(lat, 50):.1f}"),
        ("p99 latency ms", f"{np.percentile(lat, 99):.1f}"),
        ("throughput /s (paced by --rate)", f"{tally.answered / max(elapsed, 1e-6):.1f}"),
        ("worker exit codes", " ".join(str(c) for c in outcome.exit_codes)),
    ]
    console.print(table("demo summary", ["", "value"], rows))
    console.print(table("dead letters by code", ["code", "count"], sorted(tally.dlq.items())))
    console.print(table("answers by replica", ["replica", "answers"], sorted(tally.by_worker.items())))
    console.print(table("top routes", ["route", "queries"], tally.by_route.most_common(8)))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run everything locally on sample traffic and watch it live")
    parser.add_argument("--queries", type=int, default=400, help="sample queries to produce")
    parser.add_argument("--rate", type=float, default=40.0, help="queries per second")
    parser.add_argument("--replicas", type=int, default=2, help="worker replicas")
    parser.add_argument("--routes", type=Path, default=ROUTES, help="route file to apply")
    parser.set_defaults(handler=_demo)
