"""Fault suite (issue 13): a real stack on Apache Kafka per scenario, faults injected while queries flow.

    python benchmarks/faults.py                          # every scenario, 3,000 queries each
    python benchmarks/faults.py --queries 1000 --only worker-kill-9,broker-freeze-30s

Each scenario starts its own Apache Kafka (one node, or three with replication factor 3 and
min.insync.replicas 2), fresh topics, the routes on the mutation log, and real `routeworker run`
processes (two or three; :class:`eos_faults.Replicas`, the harness of the exactly-once fault
scenario, reused here). Queries are produced at a steady pace over ``--seconds`` with malformed
ones mixed in (every tenth; :data:`eos_faults.MALFORMED`), the fault is injected on a schedule, and
a downstream reader (:class:`Downstream`, an :class:`eos_faults.Answers`: read_committed, the same
as a plain reader at least once) counts every query's answers: routed intents by ``query_id``,
dead letters by record key.

Per scenario: queries sent (valid and malformed), answered, lost (never answered), duplicated
(extra copies: at least once, a crash or a revoke timeout replays the work since the last commit),
dead letters by code, the longest stall (the longest time between two answers produced, by
their record timestamps), and the replicas' exit statuses (-9: killed by the scenario). Prints a
table and writes benchmarks/results/faults.json; the README block ``faults-table`` is rendered
from it (``python benchmarks/readme.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the harness of the integration tests

from eos_faults import MALFORMED, Answers, Replicas, produce_paced  # noqa: E402
from pipeline_harness import QUERY_TEXTS, Topics, publish_routes, route_definitions  # noqa: E402
from replication_harness import FAST_CLEANING, clean_until_gone, produce_raw, raw_keys  # noqa: E402
from small_disk import SmallDisk  # noqa: E402

from worker.contracts import DeadLetter, RouteDefinition, RoutedIntent  # noqa: E402
from worker.local.kafka import LocalKafka  # noqa: E402
from worker.local.redis import LocalRedis  # noqa: E402
from worker.pipeline.failpoints import ROUTE_QUERY_ENV  # noqa: E402
from worker.replication import read_routes  # noqa: E402
from worker.routing.index import table_digest  # noqa: E402
from worker.routing.store import RouteStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
BROKER_DOWN_S = 20.0  # how long the killed broker stays down before its restart
SMALL_INTENTS = 1500  # max.message.bytes of routed-intents in the poison scenario
# the poison-query scenario: the workers' route failpoint names this text (worker.pipeline.failpoints)
POISON_MARKER = "poison-query-failpoint"
POISON_EVERY = 50  # every 50th valid query carries it
# the compaction scenario: routes deleted while a replica is offline, their tombstones compacted away
DELETED_ROUTES = ("music", "travel")
# tombstones live 5 s past the cleaning that first sees them: long enough that the replicas that
# stay up poll the log well within it (they never need a replay), short enough for the scenario
COMPACTING = {**FAST_CLEANING, "delete.retention.ms": "5000"}
AFTER_RETURN = 300  # queries produced once the replica is back, so it answers some
logger = logging.getLogger("faults")
# a traceback's last line, also inside an exception group ("    | sqlite3.OperationalError: ...")
_RAISED = re.compile(r"^[\s|+-]*([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*)")


@dataclass
class Plan:
    """The load every scenario gets: ``queries`` (every ``malformed_every``-th malformed) paced
    over ``seconds``, spread over ``partitions`` by 53 conversation keys."""

    queries: int = 3000
    seconds: float = 20.0
    malformed_every: int = 10
    partitions: int = 6
    seed: int = 13


@dataclass
class Row:
    """One scenario's outcome."""

    scenario: str
    fault: str
    workers: int
    sent_valid: int = 0
    sent_malformed: int = 0
    sent_special: int = 0  # queries of the scenario's own (too large an intent)
    stored: int = 0  # queries the broker holds afterwards (less than sent: the upstream lost some)
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # code -> queries
    # the scenario's own checks beyond the counts (e.g. the replicas agree); a failed one is an error
    checks: list[str] = field(default_factory=list)
    longest_stall_s: float = 0.0
    exits: dict[str, int] = field(default_factory=dict)  # exit status -> replicas
    exit_reasons: list[str] = field(default_factory=list)  # the last error line of each failed exit
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


class Downstream(Answers):
    """The downstream reader: answers per query, when each was produced, each dead letter's code."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        super().__init__(bootstrap, topics)
        self._dlq = topics.dlq
        self.stamps: list[float] = []
        self.codes: dict[str, str] = {}  # answer key -> dead letter code
        self.reasons: dict[str, str] = {}  # answer key -> dead letter reason
        self.routes: Counter[tuple[str, str | None]] = Counter()  # (replica, route) -> intents

    def _take(self, record: Any) -> None:
        super()._take(record)
        self.stamps.append(record.timestamp / 1000)  # when the replica produced it (CreateTime)
        if record.topic == self._dlq:
            letter = DeadLetter.model_validate_json(record.value)
            key = record.key.decode() if record.key is not None else f"?{letter.source.offset}"
            self.codes[key] = letter.error_code.value
            self.reasons[key] = letter.reason
        else:
            intent = RoutedIntent.model_validate_json(record.value)
            self.routes[(intent.worker, intent.route)] += 1

    def longest_stall(self) -> float:
        """The longest time between two answers produced (by the replicas' clocks, so the reader's
        own outage during a broker fault does not count)."""
        stamps = sorted(self.stamps)
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


@dataclass
class Stack:
    """What a scenario's fault acts on."""

    kafka: LocalKafka
    topics: Topics
    replicas: Replicas
    plan: Plan
    rng: random.Random
    workdir: Path
    redis: LocalRedis | None = None
    row: Row = field(default_factory=lambda: Row("", "", 0))
    disk: SmallDisk | None = None
    poison: set[str] = field(default_factory=set)  # keys of the queries the failpoint names
    extra: set[str] = field(default_factory=set)  # queries the fault itself produced (answers expected)
    returned: str | None = None  # the replica id of a replica the fault brought back

    async def at(self, fraction: float, started: float) -> None:
        """Sleep until ``fraction`` of the production window has passed."""
        await asyncio.sleep(max(started + fraction * self.plan.seconds - time.monotonic(), 0.0))


Fault = Callable[[Stack, float], Awaitable[None]]
Check = Callable[[Stack, "Downstream"], Awaitable[None]]


async def no_check(stack: Stack, downstream: Downstream) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    name: str
    fault_text: str
    fault: Fault
    workers: int = 2
    nodes: int = 1
    redis: bool = False
    intents_configs: dict[str, str] = field(default_factory=dict)
    big_every: int = 0  # every big_every-th valid query carries 2 kB of metadata (intent too large)
    small_disk: bool = False  # replica 0's store on a small filesystem of the scenario's own
    poison_every: int = 0  # every poison_every-th valid query names the workers' route failpoint
    env: dict[str, str] = field(default_factory=dict)  # the workers' extra environment
    mutations_configs: dict[str, str] = field(default_factory=dict)
    check: Check = no_check  # after the replicas stopped: the scenario's own checks (Row.checks)


# --- the faults --------------------------------------------------------------------------------


async def kill_a_worker(stack: Stack, started: float) -> None:
    await stack.at(0.4, started)
    slot = await stack.replicas.kill(stack.rng)
    stack.row.notes.append(f"replica {slot} killed (SIGKILL) at 40%, not replaced")


async def join_and_leave(stack: Stack, started: float) -> None:
    await stack.at(0.25, started)
    stack.replicas.start()
    stack.row.notes.append("a replica joins at 25%")
    await stack.at(0.6, started)
    await stack.replicas.leave(stack.replicas.oldest())
    stack.row.notes.append("the oldest leaves (SIGTERM) at 60%")


async def kill_and_restart_the_broker(stack: Stack, started: float) -> None:
    await stack.at(0.4, started)
    stack.kafka.kill()
    down = time.monotonic()
    await asyncio.sleep(BROKER_DOWN_S)
    await asyncio.to_thread(stack.kafka.start)
    stack.row.notes.append(
        f"broker SIGKILLed at 40%, restarted on its log dir after {BROKER_DOWN_S:g} s, "
        f"serving again {time.monotonic() - down:.1f} s after the kill"
    )


async def freeze_the_broker(stack: Stack, started: float) -> None:
    await stack.at(0.3, started)
    stack.kafka.freeze()
    await asyncio.sleep(30)
    stack.kafka.thaw()
    stack.row.notes.append("broker SIGSTOPped at 30% for 30 s, then SIGCONT")


async def kill_and_restart_redis(stack: Stack, started: float) -> None:
    assert stack.redis is not None
    await stack.at(0.3, started)
    port = stack.redis.port
    pid = stack.redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(3)
    stack.redis.stop()  # reaps it, removes its directory
    stack.redis = await asyncio.to_thread(LocalRedis(port).start)
    stack.row.notes.append("redis SIGKILLed at 30%, a new one on the same port 3 s later")


async def poison(stack: Stack, started: float) -> None:
    await stack.at(0.3, started)
    bootstrap = stack.kafka.bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:  # a mutation no replica can apply: skipped and counted by every replica, never fatal
        await producer.send_and_wait(stack.topics.mutations, b'{"name": "poisoned", "utter', key=b"poisoned")
    finally:
        await producer.stop()
    stack.row.notes.append(
        f"a malformed mutation at 30%; every 30th query's intent exceeds the intents topic's "
        f"max.message.bytes ({SMALL_INTENTS})"
    )


async def kill_the_busiest_leader(stack: Stack, started: float) -> None:
    await stack.at(0.4, started)
    bootstrap = stack.kafka.bootstrap
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(stack.topics.queries, p) for p in range(stack.plan.partitions)]
        ends = await consumer.end_offsets(tps)
        busiest = max(tps, key=lambda tp: ends[tp])
        leader = consumer._client.cluster.leader_for_partition(busiest)
    finally:
        await consumer.stop()
    node = stack.kafka.node(int(leader))
    node.kill()
    stack.row.notes.append(f"node {leader} (leader of {busiest.topic}[{busiest.partition}]) SIGKILLed at 40%")
    await stack.at(0.8, started)
    await asyncio.to_thread(node.start)
    stack.row.notes.append("it restarts on its log dir at 80%")


async def fill_the_disk(stack: Stack, started: float) -> None:
    """Replica 0's store lives on a 2 MB tmpfs (its store path is a symlink there): filled at
    30%, then routes are published, which that replica must write to SQLite."""
    assert stack.disk is not None
    await stack.at(0.3, started)
    filled = await asyncio.to_thread(stack.disk.fill)
    definitions = [
        RouteDefinition(name=f"extra-{i}", utterances=[f"extra route {i} phrase {j}" for j in range(4)])
        for i in range(20)
    ]
    await publish_routes(stack.kafka.bootstrap, stack.topics.mutations, definitions)
    stack.row.notes.append(
        f"replica 0's store filesystem filled at 30% ({filled / 1e6:.1f} MB written until ENOSPC), "
        f"then {len(definitions)} routes published"
    )


async def poison_queries(stack: Stack, started: float) -> None:
    """Nothing to do on a schedule: the poison queries are in the stream (see :func:`records`)."""
    stack.row.notes.append(
        f"every {POISON_EVERY}th valid query contains {POISON_MARKER!r}, which the workers' route "
        f"failpoint names ({ROUTE_QUERY_ENV}): routing raises for it inside the worker process"
    )


def checked(row: Row, ok: bool, text: str) -> None:
    """Record one of the scenario's own checks; a failed one makes the scenario an error."""
    row.checks.append(f"{'ok' if ok else 'FAILED'}: {text}")
    if not ok:
        row.error = row.error or f"check failed: {text}"


async def check_poison_queries(stack: Stack, downstream: Downstream) -> None:
    row = stack.row
    codes = Counter(downstream.codes.get(key, "no dead letter") for key in stack.poison)
    checked(
        row,
        codes == {"routing_failed": len(stack.poison)},
        f"each of the {len(stack.poison)} poison queries is a dead letter routing_failed ({dict(codes)})",
    )
    reasons = {downstream.reasons.get(key, "") for key in stack.poison}
    checked(row, all("FailpointHit" in r for r in reasons), "their reasons name the failpoint")
    if reasons:
        row.notes.append(f"a poison query's reason: {sorted(reasons)[0][:160]}")
    logs = [w.log() for w in stack.replicas.finished]
    batches = [
        tuple(map(int, m))
        for log in logs
        for m in re.findall(r"routing failed on (\d+) of (\d+) queries", log)
    ]
    shared = sum(1 for failed, of in batches if of > failed)
    checked(
        row,
        shared > 0,
        f"{shared} of {len(batches)} batches with a poison query routed the rest of the batch",
    )
    statuses = [w.proc.returncode for w in stack.replicas.finished]
    checked(
        row,
        len(statuses) == stack.row.workers and set(statuses) == {0},
        f"no crash loop: the {stack.row.workers} replicas ran to the end and exited 0 ({statuses})",
    )
    armed = sum("fault injection is ON" in log for log in logs)
    checked(row, armed == len(logs), f"{armed} of {len(logs)} replicas logged that the failpoint is on")


async def compact_tombstones_while_offline(stack: Stack, started: float) -> None:
    """Replica 0 is killed; routes are deleted and the cleaner drops their tombstones; replica 0
    comes back on its store, must replay the whole log, and then answers queries of its own."""
    row, replicas, bootstrap = stack.row, stack.replicas, stack.kafka.bootstrap
    await stack.at(0.15, started)
    await replicas.kill(stack.rng, slot=0)
    offline = time.monotonic()
    settings = stack.topics.settings(bootstrap)
    await produce_raw(settings, [(name.encode(), None) for name in DELETED_ROUTES])  # tombstones
    for name in DELETED_ROUTES:
        await clean_until_gone(settings, name.encode(), timeout_s=120)
    left = {key for key in await raw_keys(settings) if key is not None}
    checked(
        row,
        not left & {n.encode() for n in DELETED_ROUTES},
        f"the log holds no record of {', '.join(DELETED_ROUTES)} (tombstones compacted away)",
    )
    row.notes.append(
        f"replica 0 SIGKILLed at 15%; {', '.join(DELETED_ROUTES)} deleted and their tombstones compacted "
        f"away (delete.retention.ms {COMPACTING['delete.retention.ms']}) "
        f"{time.monotonic() - offline:.1f} s later"
    )
    slot = replicas.start(0)  # on its own store: it would resume from its stored offsets
    worker = replicas.running[slot]
    stack.returned = worker_id(worker)
    async with asyncio.timeout(240):
        while "assigned " not in worker.log():  # noqa: ASYNC110 - another process's log
            await asyncio.sleep(0.2)
    row.notes.append(f"replica 0 back {time.monotonic() - offline:.1f} s after the kill, serving")
    after = [
        (f"conv-{i % 53}".encode(), f"after-{i}", QUERY_TEXTS[i % len(QUERY_TEXTS)])
        for i in range(AFTER_RETURN)
    ]
    stream = [
        (key, orjson.dumps({"id": qid, "text": f"{text} #{i}"})) for i, (key, qid, text) in enumerate(after)
    ]
    stack.extra |= {qid for _, qid, _ in after}
    row.sent_special += len(stream)
    await produce_paced(bootstrap, stack.topics.queries, stream, 5.0)


def worker_id(worker: Any) -> str:
    """The replica id a worker of :class:`eos_faults.Replicas` routes as: its log is
    ``worker-SLOT-N.log``, its id ``replica-SLOT-N``."""
    return "replica-" + Path(worker.log_path).stem.removeprefix("worker-")


async def check_replicas_agree(stack: Stack, downstream: Downstream) -> None:
    row = stack.row
    logs = {worker_id(w): w.log() for w in stack.replicas.finished}
    back = logs.get(stack.returned or "", "")
    checked(
        row,
        "(tombstone_horizon)" in back,
        "the returned replica found its stored offsets untrusted and replayed the whole log "
        "(tombstone_horizon)",
    )
    others = sum("replaying all of" in log for rid, log in logs.items() if rid != stack.returned)
    row.notes.append(f"full replays logged by the replicas that stayed up: {others}")
    answered = sum(n for (rid, _), n in downstream.routes.items() if rid == stack.returned)
    wrong = sum(
        n
        for (rid, route), n in downstream.routes.items()
        if rid == stack.returned and route in DELETED_ROUTES
    )
    checked(
        row,
        answered > 0 and wrong == 0,
        f"the returned replica answered {answered} queries, {wrong} of them with a deleted route",
    )
    log = await read_routes(stack.topics.settings(stack.kafka.bootstrap))
    tables = {}
    for slot in range(row.workers):
        stored = await asyncio.to_thread(RouteStore(stack.workdir / f"store-{slot}.sqlite3").load)
        tables[slot] = (
            sorted(r.name for r in stored.routes),
            table_digest((r.name, r.digest) for r in stored.routes),
        )
    names = {tuple(names) for names, _ in tables.values()}
    digests = {digest for _, digest in tables.values()}
    checked(
        row,
        len(digests) == 1 and names == {tuple(sorted(log.routes))},
        f"the {len(tables)} replicas' stores hold the same table ({len(digests)} digest(s)), "
        f"the log's routes {sorted(log.routes)}",
    )
    deleted_kept = sorted({n for names_of, _ in tables.values() for n in names_of} & set(DELETED_ROUTES))
    checked(row, not deleted_kept, f"no replica keeps a deleted route ({deleted_kept or 'none'})")


SCENARIOS = [
    Scenario("worker-kill-9", "kill -9 of one of three workers", kill_a_worker, workers=3),
    Scenario("join-leave", "a worker joins, another leaves", join_and_leave, workers=2),
    Scenario("broker-kill-9", "broker kill -9, restart on the same log dir", kill_and_restart_the_broker),
    Scenario("broker-freeze-30s", "broker SIGSTOP 30 s, SIGCONT", freeze_the_broker),
    Scenario("redis-kill", "Redis kill -9, restarted", kill_and_restart_redis, redis=True),
    Scenario(
        "poison",
        "poison mutation, intents too large for their topic",
        poison,
        intents_configs={"max.message.bytes": str(SMALL_INTENTS)},
        big_every=30,
    ),
    Scenario("sqlite-disk-full", "replica 0's SQLite filesystem full", fill_the_disk, small_disk=True),
    Scenario(
        "leader-kill-rf3",
        "3 brokers, RF 3, min.insync 2: kill -9 of the busiest partition's leader",
        kill_the_busiest_leader,
        nodes=3,
    ),
    Scenario(
        "poison-query",
        "queries routing raises on (the workers' route failpoint), mixed into the stream",
        poison_queries,
        poison_every=POISON_EVERY,
        env={ROUTE_QUERY_ENV: POISON_MARKER},
        check=check_poison_queries,
    ),
    Scenario(
        "tombstones-compacted",
        "routes deleted and their tombstones compacted away while a replica is offline",
        compact_tombstones_while_offline,
        workers=3,
        # a replica away longer than delete.retention.ms (no margin here) cannot resume
        env={"ROUTEWORKER_RESUME_MARGIN_S": "0"},
        mutations_configs=COMPACTING,
        check=check_replicas_agree,
    ),
]


# --- the run -----------------------------------------------------------------------------------


async def stored(bootstrap: str, topic: str, partitions: int) -> int:
    """Records the broker holds in ``topic`` (its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


@dataclass
class Stream:
    """The queries of a scenario and the answer each expects: valid ones an intent (by
    ``query_id``); malformed ones, those whose intent is too large and poison ones a dead letter
    (by record key)."""

    records: list[tuple[bytes, bytes]]
    valid: set[str]
    malformed: set[str]
    big: set[str]
    poison: set[str]


def records(plan: Plan, big_every: int, poison_every: int = 0) -> Stream:
    """The stream of a scenario (see :class:`Stream`)."""
    out: list[tuple[bytes, bytes]] = []
    valid: set[str] = set()
    malformed: set[str] = set()
    big: set[str] = set()
    poison: set[str] = set()
    for i in range(plan.queries):
        if i % plan.malformed_every == plan.malformed_every - 1:
            key = f"bad-{i}"
            malformed.add(key)
            out.append((key.encode(), MALFORMED[i % len(MALFORMED)]))
            continue
        doc: dict[str, Any] = {"id": f"q{i}", "text": f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} #{i % 97}"}
        if big_every and i % big_every == 1:
            key = f"big-{i}"
            big.add(key)
            doc["metadata"] = {"notes": "x" * 2000}
            out.append((key.encode(), orjson.dumps(doc)))
            continue
        if poison_every and i % poison_every == 3:
            key = f"poison-{i}"  # its own key; its partition's batches hold valid queries too
            poison.add(key)
            doc["text"] = f"{POISON_MARKER} {doc['text']}"
            out.append((key.encode(), orjson.dumps(doc)))
            continue
        valid.add(f"q{i}")
        out.append((f"conv-{i % 53}".encode(), orjson.dumps(doc)))
    return Stream(out, valid, malformed, big, poison)


async def create(bootstrap: str, topics: Topics, plan: Plan, scenario: Scenario) -> None:
    rf = 3 if scenario.nodes == 3 else 1
    configs = {"min.insync.replicas": "2"} if rf == 3 else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.queries, plan.partitions, rf, topic_configs=configs),
                NewTopic(
                    topics.intents, plan.partitions, rf, topic_configs={**configs, **scenario.intents_configs}
                ),
                NewTopic(topics.dlq, 1, rf, topic_configs=configs),
                NewTopic(
                    topics.mutations,
                    1,
                    rf,
                    topic_configs={**configs, "cleanup.policy": "compact", **scenario.mutations_configs},
                ),
            ]
        )
    finally:
        await admin.close()


async def run(scenario: Scenario, plan: Plan, workdir: Path) -> tuple[Row, str]:
    """One scenario on its own stack; the outcome and the replicas' log tails."""
    started = time.monotonic()
    row = Row(scenario.name, scenario.fault_text, scenario.workers)
    properties = {"min.insync.replicas": "2"} if scenario.nodes == 3 else {}
    kafka = LocalKafka(scenario.nodes, properties=properties)
    redis: LocalRedis | None = None
    replicas: Replicas | None = None
    disk: SmallDisk | None = None
    try:
        await asyncio.to_thread(kafka.start)
        if scenario.redis:
            redis = await asyncio.to_thread(LocalRedis().start)
        bootstrap = kafka.bootstrap
        topics = Topics.fresh()
        await create(bootstrap, topics, plan, scenario)
        await publish_routes(bootstrap, topics.mutations, route_definitions())
        stream = records(plan, scenario.big_every, scenario.poison_every)
        row.sent_valid, row.sent_malformed = len(stream.valid), len(stream.malformed)
        row.sent_special = len(stream.big) + len(stream.poison)
        extra = {"redis_url": redis.url} if redis is not None else {}
        env = topics.env(
            bootstrap,
            workdir / "unused.sqlite3",
            kafka_session_timeout_ms=6000,
            kafka_heartbeat_interval_ms=500,
            commit_interval_ms=1000,  # the default cadence of commits
            **extra,
        )
        env.update(scenario.env)
        replicas = Replicas(env, workdir)
        if scenario.small_disk:
            disk = SmallDisk(workdir / "small-disk")
            refused = disk.mount()
            if refused is not None:
                row.error = f"no small filesystem on this machine: {refused}"
                return row, ""
            (workdir / "store-0.sqlite3").symlink_to(disk.path / "store.sqlite3")  # SQLite follows it
        for _ in range(scenario.workers):
            replicas.start()
        async with asyncio.timeout(240):  # faults strike workers that serve, not ones starting
            while len(replicas.serving()) < scenario.workers:  # noqa: ASYNC110 - other processes' logs
                await asyncio.sleep(0.2)
        stack = Stack(kafka, topics, replicas, plan, random.Random(plan.seed), workdir, redis, row, disk)
        stack.poison = stream.poison
        expected = stream.valid | stream.malformed | stream.big | stream.poison
        async with Downstream(bootstrap, topics) as downstream:
            produced = time.monotonic()
            await asyncio.gather(
                produce_paced(bootstrap, topics.queries, stream.records, plan.seconds),
                scenario.fault(stack, produced),
            )
            expected |= stack.extra

            def alive() -> None:
                assert replicas is not None
                replicas.reap()
                if not replicas.running:
                    replicas.start()
                    row.notes.append("every replica had exited: one started")

            await downstream.read_until(expected, within=300, alive=alive)
            await replicas.stop_all()
            await downstream.read_to_end()
        row.stored = await stored(bootstrap, topics.queries, plan.partitions)
        counts = downstream.counts
        row.answered = len(expected & counts.keys())
        row.lost = len(expected - counts.keys())
        row.duplicated = sum(n - 1 for key, n in counts.items() if key in expected)
        row.unexpected = sum(n for key, n in counts.items() if key not in expected)
        row.dead_lettered = dict(sorted(Counter(downstream.codes.values()).items()))
        row.longest_stall_s = round(downstream.longest_stall(), 2)
        row.exits = replicas.exits()
        row.exit_reasons = exit_reasons(replicas)
        await scenario.check(stack, downstream)
        logs = replicas.logs()
        skipped = sum("skipped mutation at" in w.log() for w in replicas.finished)
        if scenario.name == "poison":
            row.notes.append(f"{skipped} of {len(replicas.finished)} replicas logged the skipped mutation")
        return row, logs
    except Exception as error:
        row.error = f"{type(error).__name__}: {error}"
        logger.exception("scenario %s failed", scenario.name)
        return row, replicas.logs() if replicas is not None else ""
    finally:
        row.seconds = round(time.monotonic() - started, 1)
        if replicas is not None:
            replicas.close()
        if redis is not None:
            redis.stop()
        if disk is not None:
            disk.unmount()
        await asyncio.to_thread(kafka.close)


def exit_reasons(replicas: Replicas) -> list[str]:
    """Why each replica that exited with a failure status of its own stopped: the line the
    replica's run names the cause in, else the last error a traceback or an ERROR line shows."""
    reasons = []
    for worker in replicas.finished:
        if (worker.proc.returncode or 0) > 0:
            lines = worker.log().splitlines()
            stopped = [line.split(": ", 1)[1] for line in lines if " ERROR worker.app.run: " in line]
            raised = [m.group(1) for line in lines if (m := _RAISED.match(line))]
            errors = [line for line in lines if " ERROR " in line]
            found = stopped or raised or errors
            reasons.append(found[-1][:300] if found else f"exit {worker.proc.returncode}, no error logged")
    return reasons


def print_table(rows: list[Row]) -> None:
    head = ["scenario", "sent", "answered", "lost", "dup", "dead letters by code", "stall s", "exits"]
    print(" | ".join(head))
    for r in rows:
        sent = r.sent_valid + r.sent_malformed + r.sent_special
        codes = ", ".join(f"{code} {n}" for code, n in r.dead_lettered.items())
        exits = ", ".join(f"{status}: {n}" for status, n in sorted(r.exits.items()))
        line = [r.scenario, str(sent), str(r.answered), str(r.lost), str(r.duplicated), codes,
                f"{r.longest_stall_s:.1f}", exits]  # fmt: skip
        print(" | ".join(line) + (f"  ERROR {r.error}" if r.error else ""))


def machine() -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": head.stdout.strip(),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=Plan.queries)
    parser.add_argument("--seconds", type=float, default=Plan.seconds)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs and stores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = Plan(queries=args.queries, seconds=args.seconds)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    rows: list[Row] = []
    workroot = Path(tempfile.mkdtemp(prefix="routeworker-faults-"))
    document: dict[str, Any] = {"plan": asdict(plan), "machine": machine(), "scenarios": []}
    kept: list[dict[str, Any]] = []  # with --only, the other scenarios' rows of an earlier run of this plan
    if args.only and args.out.exists():
        earlier = json.loads(args.out.read_text(encoding="utf-8"))
        if earlier.get("plan") == document["plan"]:
            kept = [r for r in earlier["scenarios"] if r["scenario"] not in {s.name for s in chosen}]
    try:
        for scenario in chosen:
            print(f"--- {scenario.name}: {scenario.fault_text}", flush=True)
            workdir = workroot / scenario.name
            workdir.mkdir()
            row, logs = await run(scenario, plan, workdir)
            rows.append(row)
            print(json.dumps(asdict(row)), flush=True)
            if row.error or row.lost:
                print(logs[-6000:], flush=True)
            mine = {r.scenario: asdict(r) for r in rows}
            order = [s.name for s in SCENARIOS]
            document["scenarios"] = sorted([*kept, *mine.values()], key=lambda r: order.index(r["scenario"]))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    finally:
        if args.keep:
            print(f"kept {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    print_table(rows)
    print(f"wrote {args.out}")
    return 1 if any(r.error or r.lost for r in rows) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
