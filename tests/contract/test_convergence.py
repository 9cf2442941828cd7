"""Replica processes converge: concurrent publishers, `kill -9` and restarts, then equal tables and answers.

Each replica is a separate process (`routeworker routes replica`) with its own store;
on SIGUSR1 it writes its table's version, digest and answers to fixed probe queries. At the end
every replica's digest must equal the digest of the log folded by key, and every replica must give
the same answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from replication_harness import create_mutation_topic, mutation_settings, produce_raw, wait_for

from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.embedding.model import ModelSpec
from worker.embedding.pool import encoder_pool
from worker.local.capabilities import BrokerService
from worker.replication import MutationPublisher, read_routes, route_of, shipped_vectors, with_embeddings
from worker.replication.vectors import embed_routes
from worker.routing import RouteVectors
from worker.routing.index import table_digest

pytestmark = pytest.mark.integration

# fmt: off
WORDS = [
    "order", "refund", "invoice", "payment", "card", "account", "password", "delivery", "parcel",
    "address", "plan", "subscription", "cancel", "upgrade", "return", "damaged", "broken", "late",
    "missing", "store", "hours", "agent", "complaint", "coupon", "gift", "balance", "login",
    "locked", "email", "phone", "profile", "warranty", "size", "stock", "price", "shipping",
    "tracking", "receipt", "charge",
]
# fmt: on


class ReplicaProcess:
    """One replica process: started, killed with SIGKILL, restarted on the same store, asked for status."""

    def __init__(self, index: int, workdir: Path, env: dict[str, str], probes: Path, encoder: str) -> None:
        self.store = workdir / f"replica-{index}.db"
        self.status_file = workdir / f"replica-{index}.json"
        self.log = workdir / f"replica-{index}.log"
        self.env, self.probes, self.encoder = env, probes, encoder
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli.main", "routes", "replica", "--store", str(self.store),
                 "--status", str(self.status_file), "--probes", str(self.probes), "--encoder", self.encoder],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # kill -9: no clean shutdown, whatever it was doing
        self.proc.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _read(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        assert self.proc is not None
        return status if status["pid"] == self.proc.pid else None

    async def wait_ready(self, timeout_s: float = 40.0) -> dict[str, Any]:
        def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"replica exited:\n{self.log.read_text()[-3000:]}"
            return self._read() is not None

        await wait_for(ready, timeout_s, f"replica {self.store.name} ready")
        status = self._read()
        assert status is not None
        return status

    async def status(self) -> dict[str, Any]:
        """A fresh status: signals the process and waits for the next write."""
        before = await self.wait_ready()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        await wait_for(lambda: (self._read() or before)["request"] > before["request"], 20, "status write")
        status = self._read()
        assert status is not None
        return status


def random_route(rng: random.Random, name: str) -> RouteDefinition:
    token = name.replace("-", "")
    return RouteDefinition(
        name=name,
        utterances=[f"{token} {' '.join(rng.sample(WORDS, 3))}" for _ in range(rng.randint(2, 5))],
        negative_utterances=[" ".join(rng.sample(WORDS, 2))] if rng.random() < 0.3 else [],
        threshold=rng.choice([None, 0.2, 0.35]),
        metadata={"revision": rng.randint(0, 10**6)},
    )


async def publisher(
    settings: Settings, seed: int, operations: int, names: list[str], pool: EncoderPool | None, pause_s: float
) -> int:
    """Random adds, edits, deletes and re-adds, ``operations`` in all, in small acknowledged batches."""
    rng = random.Random(seed)
    sent = 0
    async with MutationPublisher(settings) as producer:
        while sent < operations:
            batch: list[RouteMutation] = []
            upserts = []
            for _ in range(min(10, operations - sent)):
                name = rng.choice(names)
                if rng.random() < 0.25:
                    batch.append(RouteMutation(name, None))
                else:
                    upserts.append(len(batch))
                    batch.append(RouteMutation(name, random_route(rng, name)))
            if pool is not None and upserts:
                definitions = [batch[i].definition for i in upserts]
                shipped = await with_embeddings(pool, [d for d in definitions if d is not None])
                for i, definition in zip(upserts, shipped, strict=True):
                    batch[i] = RouteMutation(definition.name, definition)
            await producer.publish(batch)
            sent += len(batch)
            await asyncio.sleep(rng.uniform(0, 2 * pause_s))  # spread the load over the kills
    return sent


async def chaos(replicas: list[ReplicaProcess], done: asyncio.Event, seed: int, every_s: float) -> None:
    """Until ``done``: kill -9 a random replica, restart it on its store, wait a little, repeat."""
    rng = random.Random(seed)
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), rng.uniform(0.5, 1.5) * every_s)
        except TimeoutError:
            victim = rng.choice(replicas)
            victim.kill()
            victim.start()


async def converge(replicas: list[ReplicaProcess], settings: Settings) -> tuple[list[dict[str, Any]], Any]:
    """Wait until every replica has applied the whole log; returns their statuses and the log."""
    state = await read_routes(settings)
    wanted = [[p, o] for p, o in sorted(state.end_offsets.items()) if o > 0]
    statuses = []
    for replica in replicas:
        async with asyncio.timeout(30):
            while (status := await replica.status())["version"] != wanted:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        statuses.append(status)
    return statuses, state


def first_difference(answers: list[list[dict[str, Any]]]) -> str:
    for probe in zip(*answers, strict=True):
        if any(answer != probe[0] for answer in probe):
            return "replicas answer differently:\n" + "\n".join(map(str, probe))
    return "replicas answer differently"


def write_probes(path: Path, names: list[str]) -> None:
    rng = random.Random(99)
    probes = [f"{n.replace('-', '')} {' '.join(rng.sample(WORDS, 2))}" for n in names[::7]]
    probes += [" ".join(rng.sample(WORDS, 3)) for _ in range(15)]
    path.write_text("\n".join(probes) + "\n")


def replica_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "ROUTEWORKER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ROUTEWORKER_TOPIC_MUTATIONS": settings.topic_mutations,
        "ROUTEWORKER_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }


async def test_replica_processes_converge_under_concurrent_publishers_and_kill_9(
    any_broker: BrokerService, tmp_path: Path
) -> None:
    settings = mutation_settings(any_broker.bootstrap)
    await create_mutation_topic(settings, partitions=3)
    names = [f"route-{i:03d}" for i in range(120)]
    probes = tmp_path / "probes.txt"
    write_probes(probes, names)
    replicas = [ReplicaProcess(i, tmp_path, replica_env(settings), probes, "hashing") for i in range(3)]
    with hashing_pool(64) as pool:
        try:
            for replica in replicas:
                replica.start()
            await asyncio.gather(*(r.wait_ready() for r in replicas))
            done = asyncio.Event()
            killer = asyncio.create_task(chaos(replicas, done, seed=5, every_s=1.0))
            garbage = [(n.encode(), b'{"name": "broken"') for n in random.Random(3).sample(names, 10)]
            try:
                sent = await asyncio.gather(
                    *(publisher(settings, seed, 500, names, pool, pause_s=0.12) for seed in range(4)),
                    produce_raw(settings, garbage),
                )
            finally:
                done.set()
                await killer
            assert sum(s for s in sent if s is not None) == 2000
            assert sum(r.kills for r in replicas) >= 3

            statuses, state = await converge(replicas, settings)
            expected = table_digest(
                (rv.name, rv.digest) for rv in [route_vectors(d, pool) for d in state.routes.values()]
            )
            assert {s["digest"] for s in statuses} == {expected}
            assert all(s["routes"] == len(state.routes) for s in statuses)
            assert all(s["stats"]["re_embedded"] == 0 for s in statuses)
            answers = [s["probes"] for s in statuses]
            assert answers[0] == answers[1] == answers[2], first_difference(answers)
            assert any(a["route"] is not None for a in answers[0]), "probes should match some routes"
            restarted = [s for s in statuses if s["stats"]["replayed_on_start"] < state.records]
            assert restarted, "a restarted replica resumes from its store instead of replaying the log"
        finally:
            for replica in replicas:
                replica.stop()


def route_vectors(definition: RouteDefinition, pool: EncoderPool) -> RouteVectors:
    rv = shipped_vectors(definition, pool.fingerprint, pool.dim)
    assert rv is not None
    return rv


async def test_replicas_embedding_with_the_real_model_converge(
    any_broker: BrokerService, tmp_path: Path, model_spec: ModelSpec, base_settings: Settings
) -> None:
    settings = mutation_settings(any_broker.bootstrap)
    await create_mutation_topic(settings, partitions=2)
    names = [f"route-{i:02d}" for i in range(15)]
    probes = tmp_path / "probes.txt"
    write_probes(probes, names)
    replicas = [ReplicaProcess(i, tmp_path, replica_env(settings), probes, "model") for i in range(2)]
    try:
        for replica in replicas:
            replica.start()
        await asyncio.gather(*(r.wait_ready(60) for r in replicas))
        first = asyncio.gather(*(publisher(settings, seed, 30, names, None, pause_s=0.02) for seed in (1, 2)))
        await first
        replicas[0].kill()
        replicas[0].start()
        await asyncio.gather(*(publisher(settings, seed, 30, names, None, pause_s=0.02) for seed in (3, 4)))
        statuses, state = await converge(replicas, settings)
        pool = await asyncio.to_thread(encoder_pool, base_settings)
        try:
            assert pool.fingerprint == statuses[0]["fingerprint"]
            embedded = await embed_routes(pool, [route_of(d) for d in state.routes.values()])
        finally:
            pool.close()
        expected = table_digest((rv.name, rv.digest) for rv in embedded)
        assert [s["digest"] for s in statuses] == [expected, expected]
        assert statuses[0]["probes"] == statuses[1]["probes"], first_difference(
            [s["probes"] for s in statuses]
        )
        assert all(s["stats"]["shipped"] == 0 for s in statuses)
    finally:
        for replica in replicas:
            replica.stop()
