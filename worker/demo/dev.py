"""`routeworker dev`: a private broker and Redis in the foreground, for trying your own routes.

It starts the services on free loopback ports, creates the topics (and applies a route file when
given one), prints where they are and the exact commands to run next, and keeps them up until
Ctrl-C or SIGTERM, when it stops both and removes everything they wrote.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from worker.config import Settings, load_settings
from worker.demo.stack import BROKERS, cli, embedded_broker
from worker.kafka_client import client_options
from worker.local.redis import LocalRedis
from worker.replication import TopicStatus, ensure_topics, topic_specs

__all__ = ["BROKERS", "DEFAULT_BROKER", "DevStack", "next_commands", "run_dev"]

#: the private brokers `routeworker dev --broker` can start are the demo's (BROKERS)
DEFAULT_BROKER = "kafka"
DESCRIPTIONS = {"kafka": "Apache Kafka 4.4.0 (KRaft, one node)", "tansu": "Tansu (in memory)"}


@dataclass(frozen=True)
class DevStack:
    """Where the running services are."""

    broker: str
    bootstrap: str
    redis_url: str | None

    def environment(self) -> dict[str, str]:
        """The settings every routeworker command run against this stack needs."""
        env = {"ROUTEWORKER_KAFKA_BOOTSTRAP": self.bootstrap}
        if self.redis_url is not None:
            env["ROUTEWORKER_REDIS_URL"] = self.redis_url
        return env


def next_commands(stack: DevStack, routes: Path | None, health_port: int = 8080) -> list[str]:
    """The commands to paste into another terminal, in order."""
    exports = [f"export {name}={shlex.quote(value)}" for name, value in stack.environment().items()]
    apply = [] if routes is not None else ["routeworker routes apply examples/routes.yaml --with-embeddings"]
    return [
        *exports,
        *apply,
        f"ROUTEWORKER_HEALTH_PORT={health_port} routeworker run &",
        'routeworker route "where is my parcel" "I was charged twice"',
        f"curl -s localhost:{health_port}/readyz",
    ]


def run_dev(
    say: Callable[[str], None],
    *,
    broker: str = DEFAULT_BROKER,
    partitions: int = 4,
    routes: Path | None = None,
    stop: threading.Event | None = None,
) -> DevStack:
    """Run the stack until ``stop`` is set (by SIGTERM/SIGINT when not given); returns what ran.

    ``broker`` is ``kafka`` (Apache Kafka, the reference: a few seconds to start) or ``tansu``.
    """
    stop = stop if stop is not None else _stop_on_signals()
    service = embedded_broker(broker)
    redis: LocalRedis | None = None
    try:
        say(f"starting {DESCRIPTIONS[broker]} and Redis ...")
        service.start()
        if shutil.which("redis-server"):
            redis = LocalRedis().start()
        stack = DevStack(broker, service.bootstrap, redis.url if redis is not None else None)
        settings = load_settings(kafka_bootstrap=stack.bootstrap)
        statuses = asyncio.run(_create_topics(settings, partitions))
        say("topics: " + ", ".join(f"{s.name} ({s.partitions})" for s in statuses))
        if routes is not None:
            say(_apply(routes, stack))
        say(f"broker {stack.bootstrap}   redis {stack.redis_url or 'none (redis-server not installed)'}")
        say("next, in another terminal:")
        for command in next_commands(stack, routes):
            say(f"  {command}")
        say("Ctrl-C stops the broker and Redis; their data goes with them.")
        stop.wait()
        say("stopping ...")
        return stack
    finally:
        if redis is not None:
            redis.close()
        service.close()


async def _create_topics(settings: Settings, partitions: int) -> list[TopicStatus]:
    """Create the topics and wait until the broker's metadata lists them all (the next commands
    look them up at once; a topic just created may be missing from metadata for a moment)."""
    specs = topic_specs(settings, partitions)
    statuses = await ensure_topics(settings, specs)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        async with asyncio.timeout(30):
            while not {s.name for s in specs} <= set(await admin.list_topics()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the broker's metadata, not our state: nothing to wait on
    finally:
        await admin.close()
    return statuses


def _apply(routes: Path, stack: DevStack) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
    env.update(stack.environment(), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    return cli(["routes", "apply", str(routes), "--with-embeddings"], env).stdout.strip()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(number: int, frame: object) -> None:
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, handler)
    return stop
