"""The demo from start to finish: services, topics, routes, two replicas, traffic and a live view.

It reports what came out (:class:`DemoOutcome`); the command line prints the summary.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live

from worker.config import Settings, load_settings
from worker.demo.stack import DemoStack, cli
from worker.demo.traffic import sample
from worker.demo.watch import Tally, follow, produce

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes.yaml"


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo saw: the answers tallied, and each worker's exit code."""

    queries: int
    tally: Tally
    exit_codes: list[int | None]

    @property
    def complete(self) -> bool:
        """Every query answered (routed, no match or DLQ) and every worker stopped cleanly."""
        answered = self.tally.answered >= self.tally.produced == self.queries
        return answered and all(code == 0 for code in self.exit_codes)


def run_demo(
    console: Console, queries: int, rate: float, replicas: int, routes: Path = ROUTES
) -> DemoOutcome:
    """Run the demo, showing its progress on ``console``."""
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
    return DemoOutcome(queries, tally, codes)


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
