"""The largest record each output topic takes (its ``max.message.bytes``), read once at start.

Knowing it lets the produce step dead-letter an intent that cannot fit before the broker refuses
it, and cap the producer's batches below it (the broker checks whole record batches, so a batch of
records that each fit can still be refused). A refusal the limits did not foresee (the topic's
setting lowered while the replica runs, or not readable) is still handled, more slowly, by the
produce step's error policy.

Reading a topic's configuration needs the DescribeConfigs permission on it; without it (or on a
broker that does not answer DescribeConfigs, such as Tansu) Kafka's default is assumed and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from worker.config import Settings
from worker.kafka_client import client_options
from worker.pipeline.types import Outbound

logger = logging.getLogger(__name__)

# Kafka's default message.max.bytes (1 MiB + the record batch overhead)
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# aiokafka's default max_batch_size: batches are capped lower only for topics that take less
DEFAULT_BATCH_BYTES = 16_384
MAX_MESSAGE_BYTES = "max.message.bytes"
_NO_ERROR = 0


def record_size(record: Outbound) -> int:
    """An upper bound of the bytes ``record`` takes alone in a record batch (uncompressed)."""
    headers: list[tuple[str, bytes | None]] = list(record.headers)
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, headers)


@dataclass(frozen=True)
class TopicLimits:
    """``max.message.bytes`` per topic; topics not listed take :data:`DEFAULT_MAX_MESSAGE_BYTES`."""

    max_bytes: Mapping[str, int] = field(default_factory=dict)

    def limit(self, topic: str) -> int:
        """The largest record batch ``topic`` takes."""
        return self.max_bytes.get(topic, DEFAULT_MAX_MESSAGE_BYTES)

    def too_large(self, record: Outbound) -> str | None:
        """Why ``record`` cannot fit its topic, or None when it fits."""
        size = record_size(record)
        limit = self.limit(record.topic)
        if size <= limit:
            return None
        return (
            f"{size} bytes (with the record batch overhead) is more than topic {record.topic} takes ({limit})"
        )

    def batch_bytes(self) -> int:
        """A producer batch size every known topic takes (aiokafka's default where all take more)."""
        return min([DEFAULT_BATCH_BYTES, *self.max_bytes.values()])


async def read_topic_limits(settings: Settings, topics: Iterable[str]) -> TopicLimits:
    """Read ``max.message.bytes`` of ``topics``; any that cannot be read keeps the default (logged)."""
    names = sorted(set(topics))
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        answers: list[Any] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {MAX_MESSAGE_BYTES: ""}) for name in names]
        )
    except KafkaError as error:
        logger.warning(
            "cannot read %s of %s (%s): assuming %d bytes; a smaller limit is found when the broker "
            "refuses a record",
            MAX_MESSAGE_BYTES,
            ", ".join(names),
            type(error).__name__,
            DEFAULT_MAX_MESSAGE_BYTES,
        )
        return TopicLimits()
    finally:
        await admin.close()
    limits, refusals = _parse(answers)
    for name in names:
        if name not in limits:
            logger.warning(
                "cannot read %s of topic %s (%s): assuming %d bytes",
                MAX_MESSAGE_BYTES,
                name,
                refusals.get(name, "not answered"),
                DEFAULT_MAX_MESSAGE_BYTES,
            )
    logger.info(
        "output topics take records of up to %s", {n: limits.get(n, DEFAULT_MAX_MESSAGE_BYTES) for n in names}
    )
    return TopicLimits(limits)


def _parse(answers: Iterable[Any]) -> tuple[dict[str, int], dict[str, str]]:
    """``{topic: max.message.bytes}`` from DescribeConfigs responses, and why a topic has none
    (``{topic: error class}``: UnknownTopicOrPartitionError, TopicAuthorizationFailedError...)."""
    limits: dict[str, int] = {}
    refusals: dict[str, str] = {}
    for answer in answers:
        for error_code, _message, _type, name, entries in (tuple(r)[:5] for r in answer.resources):
            if error_code != _NO_ERROR:
                refusals[name] = for_code(error_code).__name__
                continue
            for entry in entries:
                if entry[0] == MAX_MESSAGE_BYTES and entry[1] is not None:
                    limits[name] = int(entry[1])
    return limits, refusals
