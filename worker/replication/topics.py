"""Creating the four topics: idempotent, so `routeworker topics create` may run on every deploy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from worker.config import Settings
from worker.kafka_client import client_options

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions and configuration."""

    name: str
    partitions: int
    configs: dict[str, str]


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """What became of a topic: ``created`` or ``exists`` (with a warning if it differs)."""

    name: str
    partitions: int
    outcome: str
    warning: str = ""


def topic_specs(settings: Settings, partitions: int, mutation_partitions: int = 1) -> list[TopicSpec]:
    """The topics a deployment needs; the mutation log is compacted (one record per route)."""
    return [
        TopicSpec(settings.topic_queries, partitions, {}),
        TopicSpec(settings.topic_intents, partitions, {}),
        TopicSpec(settings.topic_dlq, partitions, {}),
        TopicSpec(settings.topic_mutations, mutation_partitions, {"cleanup.policy": "compact"}),
    ]


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec], replication_factor: int = 1
) -> list[TopicStatus]:
    """Create the missing topics; existing ones are fine (checked, never altered)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: set[str] = set()
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=spec.configs)]
                )
                created.add(spec.name)
            except TopicAlreadyExistsError:  # another deploy created it a moment ago: fine
                pass
        statuses = []
        for spec in specs:
            if spec.name in created:
                statuses.append(TopicStatus(spec.name, spec.partitions, "created"))
                logger.info("created topic %s (%d partitions)", spec.name, spec.partitions)
            else:
                statuses.append(await _existing(admin, spec))
        return statuses
    finally:
        await admin.close()


async def _existing(admin: AIOKafkaAdminClient, spec: TopicSpec) -> TopicStatus:
    described: Any = await admin.describe_topics([spec.name])
    partitions = len(described[0].get("partitions", ())) if described else 0
    warnings = []
    if spec.configs:
        resources = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
        entries = {entry[0]: entry[1] for entry in resources[0].resources[0][4]}
        for key, wanted in spec.configs.items():
            if entries.get(key) != wanted:
                warnings.append(f"{key} is {entries.get(key)!r}, expected {wanted!r}")
    if partitions != spec.partitions:
        warnings.append(f"has {partitions} partitions, asked for {spec.partitions} (left as is)")
    warning = "; ".join(warnings)
    if warning:
        logger.warning("topic %s exists but %s", spec.name, warning)
    return TopicStatus(spec.name, partitions, "exists", warning)
