"""Helpers of the pipeline integration tests: topics, routes, producing, reading, worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition, encode
from worker.health import probe

ROUTES: dict[str, list[str]] = {
    "weather": ["what is the weather like today", "will it rain tomorrow", "is it going to be sunny"],
    "banking": [
        "transfer money to my savings account",
        "what is my account balance",
        "send money to a friend",
    ],
    "music": ["play some jazz music", "put on my workout playlist", "skip this song"],
    "travel": ["book a flight to paris", "find me a hotel in rome", "cancel my train ticket"],
    "greeting": ["hello there", "good morning", "hi, how are you"],
}
QUERY_TEXTS = [
    "will it be sunny this weekend",
    "move 200 dollars into savings",
    "play something relaxing",
    "i need a flight to berlin on friday",
    "hey, good evening",
    "how do i reset my router password",
]

ROOT = Path(__file__).resolve().parents[2]
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Topics:
    """Topic and group names private to one test, so tests share the session broker safely."""

    queries: str
    intents: str
    mutations: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> Topics:
        tag = uuid.uuid4().hex[:8]
        return cls(f"queries-{tag}", f"intents-{tag}", f"mutations-{tag}", f"dlq-{tag}", f"group-{tag}")

    def options(self, bootstrap: str) -> dict[str, Any]:
        """Settings for a worker of these topics: fast group membership and fetches for tests."""
        return {
            "kafka_bootstrap": bootstrap,
            "group_id": self.group,
            "topic_queries": self.queries,
            "topic_intents": self.intents,
            "topic_mutations": self.mutations,
            "topic_dlq": self.dlq,
            "kafka_heartbeat_interval_ms": 200,
            "kafka_session_timeout_ms": 3000,
            "kafka_fetch_max_wait_ms": 20,
            "commit_interval_ms": 200,
            "shutdown_timeout_s": 20,
        }

    def settings(self, bootstrap: str, **overrides: Any) -> Settings:
        return load_settings(**{**self.options(bootstrap), **overrides})

    def env(self, bootstrap: str, store_path: Path, **overrides: Any) -> dict[str, str]:
        """Environment of a ``routeworker run`` process for these topics."""
        values = {**self.options(bootstrap), "store_path": store_path, **overrides}
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
        env.update({f"ROUTEWORKER_{k.upper()}": str(v) for k, v in values.items()})
        env["HF_HUB_OFFLINE"] = "1"
        return env


async def create_topics(bootstrap: str, topics: Topics, partitions: int = 2) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, partitions, 1) for t in (topics.queries, topics.intents, topics.dlq)]
            + [NewTopic(topics.mutations, 1, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()


def route_definitions() -> list[RouteDefinition]:
    return [RouteDefinition(name=name, utterances=utterances) for name, utterances in ROUTES.items()]


async def produce(bootstrap: str, topic: str, records: Iterable[Record]) -> None:
    """Produce records in order and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers or None)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def publish_routes(bootstrap: str, topic: str, definitions: Sequence[RouteDefinition]) -> None:
    """Route definitions on the mutation log: key = route name, value = the full definition."""
    await produce(bootstrap, topic, [(d.name.encode(), encode(d), []) for d in definitions])


class TopicReader:
    """Reads topics from the beginning in the background; ``wait_for`` polls what it has read."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=20
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)

    async def wait_for(self, condition: Callable[[list[Any]], bool], within: float = 60) -> list[Any]:
        async with asyncio.timeout(within):
            while not condition(self.records):
                assert self._task is not None
                assert not self._task.done(), "reader stopped"
                await asyncio.sleep(0.05)
        return self.records

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                found[p] = offset
        return found
    finally:
        await consumer.stop()


async def log_end(bootstrap: str, topic: str, expected: int) -> dict[int, int]:
    """Per partition, the offset after the last record, found by reading ``expected`` records.

    (Tansu's ListOffsets answers the start of the last produced batch, not the log end, so the
    end is read instead of asked for.)
    """
    async with TopicReader(bootstrap, [topic]) as reader:
        records = await reader.wait_for(lambda rs: len(rs) >= expected)
    ends: dict[int, int] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


class WorkerProcess:
    """``python -m worker.cli.main run`` with the given environment; output goes to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str, within: float = 60) -> None:
        async with asyncio.timeout(within):
            while text not in self.log():
                assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}:\n{self.log()}"
                await asyncio.sleep(0.05)

    def signal(self, number: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(number)

    async def wait(self, within: float = 60) -> int:
        async with asyncio.timeout(within):
            while self.proc.poll() is None:  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        """Always called (finally): kill whatever still runs, close the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def build_table(encoder: Any) -> Any:
    """A route table of :data:`ROUTES` embedded by ``encoder`` (an EncoderPool), as a replica builds it."""
    import numpy as np

    from worker.routing import Route, RouteTable, RouteVectors

    routes = [
        RouteVectors(
            Route(name, tuple(utterances)),
            encoder.embed_sync(utterances),
            np.zeros((0, encoder.dim), dtype=np.float32),
            encoder.fingerprint,
        )
        for name, utterances in ROUTES.items()
    ]
    return RouteTable.from_routes(routes, ((0, len(routes)),), encoder.dim, encoder.fingerprint)


@dataclass
class RunningWorker:
    topics: Topics
    bootstrap: str
    health_port: int
    process: WorkerProcess

    def settings(self) -> Settings:
        return self.topics.settings(self.bootstrap)

    def env(self) -> dict[str, str]:
        return self.topics.env(self.bootstrap, Path("unused.sqlite3"))


async def wait_ready(port: int, process: WorkerProcess, within: float = 120) -> None:
    async with asyncio.timeout(within):
        while True:
            assert process.proc.poll() is None, process.log()
            try:
                if (await asyncio.to_thread(probe, port, "/readyz", timeout_s=1.0))[0] == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
