"""The one reader of replies: every partition of the intents and dead-letter topics, from their end.

It reads by assignment (no consumer group, nothing committed), so any number of clients can wait
for their own answers on the same topics. Only records that name one of this client's queries are
decoded: a query id carries the client's prefix, and a cheap byte search skips everyone else's
intents (dead letters, few and base64-encoded, are all decoded).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from worker.client.errors import QueryRejected, RouteClientError
from worker.contracts import DeadLetter, RoutedIntent

logger = logging.getLogger(__name__)

POLL_MS = 100

#: called with a query id and its answer: a routed intent, or the error that stands for it
Deliver = Callable[[str, RoutedIntent | Exception], None]


class ReplyReader:
    """Reads answers from the topics' ends (taken at :meth:`start`) and hands them to ``deliver``."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        admin_options: dict[str, Any],
        intents: str,
        dlq: str | None,
        prefix: str,
        deliver: Deliver,
    ) -> None:
        self._consumer = consumer
        self._admin_options = admin_options
        self._intents = intents
        self._dlq = dlq
        self._marker = prefix.encode()
        self._deliver = deliver

    async def start(self) -> None:
        """Assign every partition and settle on the current ends before any query is sent."""
        await self._consumer.start()
        found = await topic_partitions(self._admin_options, [t for t in (self._intents, self._dlq) if t])
        if self._intents not in found:
            raise RouteClientError(
                f"topic {self._intents!r} does not exist: `routeworker topics create` makes it"
            )
        partitions = found[self._intents]
        if self._dlq is not None:
            if self._dlq not in found:
                logger.warning(
                    "dead-letter topic %r does not exist: rejected queries will time out", self._dlq
                )
            partitions += found.get(self._dlq, [])
        self._consumer.assign(partitions)
        for tp, offset in (await self._consumer.end_offsets(partitions)).items():
            self._consumer.seek(tp, offset)
        for tp in partitions:  # resolve now: a reply produced from here on is read
            await self._consumer.position(tp)

    async def run(self) -> None:
        """Read until cancelled."""
        while True:
            batches = await self._consumer.getmany(timeout_ms=POLL_MS)
            for tp, records in batches.items():
                dead = tp.topic == self._dlq
                for record in records:
                    # a dead letter holds its query base64-encoded: those few are all decoded
                    if record.value is not None and (dead or self._marker in record.value):
                        self._read(dead, record.value)

    async def stop(self) -> None:
        await self._consumer.stop()

    def _read(self, dead: bool, value: bytes) -> None:
        if dead:
            self._read_dead_letter(value)
            return
        try:
            intent = RoutedIntent.model_validate_json(value)
        except ValidationError as error:
            query_id = _field(value, "query_id")
            if query_id is not None:
                self._deliver(query_id, RouteClientError(f"unreadable routed intent: {error}"))
            return
        self._deliver(intent.query_id, intent)

    def _read_dead_letter(self, value: bytes) -> None:
        try:
            letter = DeadLetter.model_validate_json(value)
            original = base64.b64decode(letter.value_b64 or "")
        except (ValidationError, binascii.Error):
            return  # not a dead letter this client can read; its query times out instead
        query_id = _field(original, "id")
        if query_id is not None:
            self._deliver(query_id, QueryRejected(query_id, letter.error_code.value, letter.reason))


async def topic_partitions(
    admin_options: dict[str, Any], topics: list[str]
) -> dict[str, list[TopicPartition]]:
    """The partitions of those ``topics`` that exist, by topic.

    Asked with a Metadata request naming them (a consumer's own metadata covers only what it
    already reads on Apache Kafka), and only for topics the broker lists: Tansu creates a topic
    that a Metadata request names.
    """
    admin = AIOKafkaAdminClient(**admin_options)
    try:
        await admin.start()
        listed = set(await admin.list_topics())
        wanted = [t for t in topics if t in listed]
        described: Any = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    found: dict[str, list[TopicPartition]] = {}
    for topic in described:
        numbers = sorted(int(p["partition"]) for p in topic.get("partitions", ()))
        if topic.get("error_code") == 0 and numbers:
            found[topic["topic"]] = [TopicPartition(topic["topic"], n) for n in numbers]
    return found


def _field(document: bytes, name: str) -> str | None:
    try:
        value = orjson.loads(document).get(name)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None
