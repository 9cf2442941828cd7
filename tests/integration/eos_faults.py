"""A fault scenario for the processing guarantees: real `routeworker run` processes on Apache Kafka,
killed with SIGKILL at random points while queries flow, one joining and one leaving; then a
read_committed reader counts every query's answers.

Valid queries are answered by routed intents (counted by ``query_id``), malformed ones by dead
letters (counted by the record key, which the dead letter keeps). Each must be seen exactly once:
``lost`` counts those never seen, ``duplicated`` the extra copies, ``unexpected`` answers to nothing
that was sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pipeline_harness import (
    QUERY_TEXTS,
    Topics,
    WorkerProcess,
    create_topics,
    publish_routes,
    route_definitions,
)

from worker.contracts import DeadLetter, RoutedIntent

logger = logging.getLogger(__name__)

MALFORMED = [b"{not json", b'{"id": "x", "text": "   "}', b'["a", "list"]', b'{"text": "no id"}']


@dataclass
class Outcome:
    """What one scenario sent, what a read_committed reader saw, and what happened to the workers."""

    mode: str
    sent_valid: int
    sent_malformed: int
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    kills: int = 0
    joins: int = 0
    leaves: int = 0
    exits: dict[str, int] = field(default_factory=dict)  # exit status -> workers
    seconds: float = 0.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """How the scenario runs: queries (every ``malformed_every``-th malformed), paced over
    ``seconds``, ``workers`` at a time, ``kills`` SIGKILLs at random points, a join and a leave."""

    queries: int = 5000
    malformed_every: int = 10
    seconds: float = 30.0
    workers: int = 2
    kills: int = 5
    partitions: int = 4
    seed: int = 14


def _records(plan: Plan) -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    records: list[tuple[bytes, bytes]] = []
    valid: set[str] = set()
    malformed: set[str] = set()
    for i in range(plan.queries):
        if i % plan.malformed_every == plan.malformed_every - 1:
            key = f"bad-{i}"
            malformed.add(key)
            records.append((key.encode(), MALFORMED[i % len(MALFORMED)]))
        else:
            qid = f"q{i}"
            valid.add(qid)
            text = f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} #{i % 97}"
            records.append((f"conv-{i % 53}".encode(), orjson.dumps({"id": qid, "text": text})))
    return records, valid, malformed


class Replicas:
    """The worker processes of a scenario; each slot keeps its store across restarts."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self._env = env
        self._workdir = workdir
        self.running: dict[int, WorkerProcess] = {}
        self.finished: list[WorkerProcess] = []
        self._started = 0
        self._slots = 0
        self._since: dict[int, float] = {}

    def start(self, slot: int | None = None) -> int:
        """Start a worker in ``slot`` (a replacement: same store), or in a new slot."""
        if slot is None:
            slot, self._slots = self._slots, self._slots + 1
        self._started += 1
        self._since[slot] = time.monotonic()
        env = {**self._env, "ROUTEWORKER_STORE_PATH": str(self._workdir / f"store-{slot}.sqlite3")}
        env["ROUTEWORKER_REPLICA_ID"] = f"replica-{slot}-{self._started}"
        self.running[slot] = WorkerProcess(env, self._workdir / f"worker-{slot}-{self._started}.log")
        return slot

    def since(self, slot: int) -> float:
        """When the slot's worker was started."""
        return self._since[slot]

    def oldest(self) -> int:
        """The slot of the worker running longest."""
        return min(self.running, key=self.since)

    def reap(self) -> None:
        """Move workers that exited on their own (a fenced zombie stops loudly) to ``finished``."""
        for slot, worker in list(self.running.items()):
            if worker.proc.poll() is not None:
                logger.warning("worker %s exited with %s", slot, worker.proc.returncode)
                self.finished.append(self.running.pop(slot))

    def serving(self) -> list[int]:
        """Slots of the workers that have partitions assigned (they consume and produce)."""
        return sorted(slot for slot, worker in self.running.items() if "assigned " in worker.log())

    async def kill(self, rng: random.Random, slot: int | None = None) -> int:
        """SIGKILL a serving worker: the one in ``slot``, or one chosen at random (waits for it
        to serve)."""
        async with asyncio.timeout(90):
            while not self.serving() or (slot is not None and slot not in self.serving()):
                self.reap()
                await asyncio.sleep(0.1)
        slot = rng.choice(self.serving()) if slot is None else slot
        worker = self.running.pop(slot)
        worker.signal(signal.SIGKILL)
        await worker.wait(10)
        self.finished.append(worker)
        return slot

    async def leave(self, slot: int) -> None:
        """SIGTERM: the worker finishes its in-flight work, commits and leaves the group."""
        worker = self.running.pop(slot)
        worker.signal(signal.SIGTERM)
        await worker.wait(60)
        self.finished.append(worker)

    async def stop_all(self) -> None:
        for worker in self.running.values():
            worker.signal(signal.SIGTERM)
        for worker in self.running.values():
            await worker.wait(90)
        self.finished += self.running.values()
        self.running = {}

    def close(self) -> None:
        for worker in [*self.running.values(), *self.finished]:
            worker.close()

    def exits(self) -> dict[str, int]:
        return dict(Counter(str(w.proc.returncode) for w in self.finished))

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()[-3000:]}" for w in self.finished)


async def produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], seconds: float
) -> None:
    """The upstream: ``records`` at a steady pace over ``seconds``, idempotent and acks=all, so a
    leader killed after acknowledging cannot lose a query before the workers see it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True)
    await producer.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = []
        for i, (key, value) in enumerate(records):
            delay = start + i * seconds / len(records) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _chaos(replicas: Replicas, plan: Plan, rng: random.Random, outcome: Outcome) -> None:
    """Kill -9 at random points of the production window; a worker joins, later one leaves."""
    events = [(rng.uniform(0.05, 0.9) * plan.seconds, "kill") for _ in range(plan.kills)]
    events += [(0.3 * plan.seconds, "join"), (0.6 * plan.seconds, "leave")]
    started = time.monotonic()
    for at, what in sorted(events):
        await asyncio.sleep(max(at - (time.monotonic() - started), 0))
        replicas.reap()
        if what == "kill":
            slot = await replicas.kill(rng)
            outcome.kills += 1
            replicas.start(slot)  # its replacement, on the same store
        elif what == "join":
            replicas.start()
            outcome.joins += 1
        elif what == "leave" and len(replicas.running) > 1:
            await replicas.leave(min(replicas.serving() or [replicas.oldest()], key=replicas.since))
            outcome.leaves += 1
        while len(replicas.running) < 1:
            replicas.start()


class Answers:
    """Reads routed intents and dead letters (read_committed) and counts answers per query."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self._topics = topics
        self.counts: Counter[str] = Counter()
        self._consumer = AIOKafkaConsumer(
            topics.intents,
            topics.dlq,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )

    async def __aenter__(self) -> Answers:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    def _take(self, record: Any) -> None:
        if record.topic == self._topics.intents:
            self.counts[RoutedIntent.model_validate_json(record.value).query_id] += 1
        else:
            letter = DeadLetter.model_validate_json(record.value)
            key = record.key.decode() if record.key is not None else f"?{letter.source.offset}"
            self.counts[key] += 1

    async def read_until(self, expected: set[str], within: float, alive: Any) -> None:
        """Read until every expected answer is in (or ``within`` seconds passed)."""
        deadline = time.monotonic() + within
        while not expected <= self.counts.keys() and time.monotonic() < deadline:
            alive()
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    self._take(record)

    async def read_to_end(self) -> None:
        """Read everything up to the topics' current (last stable) end."""
        tps = [TopicPartition(t, p) for t in (self._topics.intents, self._topics.dlq) for p in range(8)]
        known = [tp for tp in tps if tp.partition in (self._consumer.partitions_for_topic(tp.topic) or set())]
        ends = await self._consumer.end_offsets(known)
        async with asyncio.timeout(60):
            while not await self._reached(ends):
                for records in (await self._consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        self._take(record)

    async def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return False
        return True


async def run_scenario(bootstrap: str, mode: str, plan: Plan, workdir: Path) -> tuple[Outcome, str]:
    """Run one scenario in ``mode`` (at_least_once / exactly_once); the outcome and the workers' logs."""
    started = time.monotonic()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)  # one per mode in one test
    rng = random.Random(plan.seed)
    topics = Topics.fresh()
    await create_topics(bootstrap, topics, partitions=plan.partitions)
    await publish_routes(bootstrap, topics.mutations, route_definitions())
    records, valid, malformed = _records(plan)
    outcome = Outcome(mode, len(valid), len(malformed), seed=plan.seed)
    env = topics.env(
        bootstrap,
        workdir / "unused.sqlite3",
        processing_guarantee=mode,
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=300,
        commit_interval_ms=1000,  # the default cadence of at-least-once commits
        shutdown_timeout_s=20,
    )
    replicas = Replicas(env, workdir)
    try:
        for _ in range(plan.workers):
            replicas.start()
        async with Answers(bootstrap, topics) as answers:
            await asyncio.gather(
                produce_paced(bootstrap, topics.queries, records, plan.seconds),
                _chaos(replicas, plan, rng, outcome),
            )

            def alive() -> None:
                replicas.reap()
                if not replicas.running:
                    replicas.start()

            await answers.read_until(valid | malformed, within=240, alive=alive)
            await replicas.stop_all()
            await answers.read_to_end()
        counts = answers.counts
        expected = valid | malformed
        outcome.answered = len(expected & counts.keys())
        outcome.lost = len(expected - counts.keys())
        outcome.duplicated = sum(n - 1 for key, n in counts.items() if key in expected)
        outcome.unexpected = sum(n for key, n in counts.items() if key not in expected)
        outcome.exits = replicas.exits()
        outcome.seconds = round(time.monotonic() - started, 1)
        return outcome, replicas.logs()
    finally:
        replicas.close()
