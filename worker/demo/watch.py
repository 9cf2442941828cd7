"""Produces the demo traffic and follows routed intents and dead letters until all are accounted for."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Group
from rich.live import Live
from rich.table import Table

from worker.demo.traffic import Record


@dataclass
class Tally:
    """What came out so far."""

    produced: int = 0
    routed: int = 0
    no_match: int = 0
    dlq: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    recent: deque[tuple[str, str, str, str]] = field(default_factory=lambda: deque(maxlen=8))
    seen: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    @property
    def answered(self) -> int:
        return self.routed + self.no_match + sum(self.dlq.values())

    def view(self) -> Group:
        rate = self.answered / max(time.monotonic() - self.started, 1e-6)
        head = Table.grid(padding=(0, 3))
        head.add_row(
            f"produced [bold]{self.produced}[/]",
            f"routed [green]{self.routed}[/]",
            f"no match [yellow]{self.no_match}[/]",
            f"DLQ [red]{sum(self.dlq.values())}[/]",
            f"throughput [bold]{rate:.1f}[/]/s",
        )
        recent = Table(title="latest answers", title_justify="left")
        for name in ("query", "route", "score", "replica"):
            recent.add_column(name)
        for row in self.recent:
            recent.add_row(*row)
        return Group(head, recent)


async def produce(bootstrap: str, topic: str, records: list[Record], rate: float, tally: Tally,
                  texts: dict[str, str]) -> None:  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=1)
    await producer.start()
    try:
        for record in records:
            try:
                doc = orjson.loads(record.value)
                texts[str(doc.get("id"))] = str(doc.get("text"))
            except (orjson.JSONDecodeError, AttributeError):
                pass
            await producer.send_and_wait(topic, record.value, key=record.key)
            tally.produced += 1
            await asyncio.sleep(1.0 / rate)
    finally:
        await producer.stop()


async def follow(bootstrap: str, intents: str, dlq: str, expected: int, tally: Tally,
                 texts: dict[str, str], live: Live, timeout_s: float) -> None:  # fmt: skip
    # "earliest": the offset reset that assign() starts must not land after the seek below
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, intents, dlq)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while tally.answered < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for message in messages:
                    if message.value is not None:
                        _record(tally, tp.topic == dlq, message.value, message.timestamp, texts)
            live.update(tally.view())
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, *topics: str) -> list[TopicPartition]:
    # a Metadata request naming the topics: a consumer's own metadata knows only what it reads
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described: Any = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [TopicPartition(d["topic"], p["partition"]) for d in described for p in d.get("partitions", ())]


def _record(tally: Tally, is_dlq: bool, value: bytes, timestamp_ms: int, texts: dict[str, str]) -> None:
    doc = orjson.loads(value)
    if is_dlq:
        tally.dlq[str(doc["error_code"])] += 1
        return
    qid = str(doc["query_id"])
    if qid in tally.seen:  # at-least-once: a duplicate is not a new answer
        return
    tally.seen.add(qid)
    route = doc["route"]
    if route is None:
        tally.no_match += 1
    else:
        tally.routed += 1
        tally.by_route[str(route)] += 1
    tally.by_worker[str(doc["worker"])] += 1
    tally.latencies_ms.append(float(doc["timings"]["total_ms"]))
    tally.recent.appendleft(
        (texts.get(qid, qid)[:48], route or "∅ no match", f"{doc['score']:.3f}", doc["worker"])
    )
