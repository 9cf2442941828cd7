"""The demo from start to finish: services, topics, routes, two replicas, traffic, live view, summary."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live

from worker.cli.console import table
from worker.config import Settings, load_settings
from worker.demo.stack import DemoStack, cli
from worker.demo.traffic import sample
from worker.demo.watch import Tally, follow, produce

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes.yaml"


def run_demo(console: Console, queries: int, rate: float, replicas: int, routes: Path = ROUTES) -> int:
    """Run the demo; returns 0 when every query was answered (routed, no match or DLQ)."""
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="routeworker-demo-") as tmp:
        stack = DemoStack(Path(tmp), replicas)
        try:
            with console.status("starting the broker and Redis"):
                stack.start_services()
            redis = stack.redis.url if stack.redis else "none (in-process LRU)"
            console.print(f"broker {stack.bootstrap}  redis {redis}")
            with console.status("creating topics and applying routes"):
                env = stack.env()
                cli(["topics", "create", "--partitions", "4"], env)
                console.print(cli(["routes", "apply", str(routes), "--with-embeddings"], env).stdout.strip())
            with console.status(f"starting {replicas} worker replicas and waiting for readiness"):
                stack.start_workers()
                stack.wait_ready()
            tally = asyncio.run(_traffic(stack.bootstrap, settings, queries, rate))
        finally:
            codes = stack.stop()
    _summary(console, tally, codes)
    complete = tally.answered >= tally.produced == queries
    return 0 if complete and all(code == 0 for code in codes) else 1


async def _traffic(bootstrap: str, settings: Settings, queries: int, rate: float) -> Tally:
    tally = Tally()
    texts: dict[str, str] = {}
    records = sample(queries)
    with Live(tally.view(), refresh_per_second=4) as live:
        await asyncio.gather(
            produce(bootstrap, settings.topic_queries, records, rate, tally, texts),
            follow(bootstrap, settings.topic_intents, settings.topic_dlq, len(records), tally, texts, live,
                   timeout_s=queries / rate + 60),
        )  # fmt: skip
    return tally


def _summary(console: Console, tally: Tally, codes: list[int | None]) -> None:
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
        ("worker exit codes", " ".join(str(c) for c in codes)),
    ]
    console.print(table("demo summary", ["", "value"], rows))
    console.print(table("dead letters by code", ["code", "count"], sorted(tally.dlq.items())))
    console.print(table("answers by replica", ["replica", "answers"], sorted(tally.by_worker.items())))
    console.print(table("top routes", ["route", "queries"], tally.by_route.most_common(8)))
