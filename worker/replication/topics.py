"""Creating the four topics: idempotent, so `routeworker topics create` may run on every deploy.

The mutation log's retention is set explicitly (:func:`mutation_topic_configs`): it is compacted,
never deletes by age or size, and keeps tombstones for ``delete.retention.ms``, which is also how
long a replica may be away and still resume from its stored offsets (longer, and it replays the
whole log: :mod:`worker.replication.resume`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from worker.config import Settings
from worker.kafka_client import client_options
from worker.replication.errors import ReplicationError
from worker.replication.topic_config import topic_configs

logger = logging.getLogger(__name__)

#: tombstones stay in the mutation log for 7 days (Kafka's default is 1): a replica down for less
#: resumes from its stored offsets, one down longer replays the whole log. They cost a few bytes each.
DEFAULT_TOMBSTONE_RETENTION_MS = 7 * 86_400_000
#: copies of each partition when not asked: three, or every broker of a smaller cluster
DEFAULT_REPLICATION_FACTOR = 3
#: room for the record batch's own header around the largest record
_BATCH_OVERHEAD = 64 * 1024


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
    #: copies of each partition (0: not known)
    replication_factor: int = 0


def mutation_topic_configs(
    settings: Settings, tombstone_retention_ms: int = DEFAULT_TOMBSTONE_RETENTION_MS
) -> dict[str, str]:
    """The mutation log's configuration, every retention setting explicit.

    - ``cleanup.policy=compact``: the last record per route is kept for ever, so the log is always
      a complete snapshot; nothing is deleted by age or size (``retention.ms`` and
      ``retention.bytes`` -1 say so, should ``delete`` ever be added to the policy).
    - ``delete.retention.ms``: how long a tombstone outlives the cleaning that first saw it; also
      how long a replica may be away and still resume from its stored offsets.
    - ``min.compaction.lag.ms=0``: a superseded definition may be cleaned at once (replicas never
      need it: each record is the route's whole definition).
    - ``max.message.bytes``: records up to ``max_mutation_bytes``; the calibration record (a learned
      head of a few MB for a couple of thousand routes) is larger than Kafka's default 1 MB limit.
    """
    return {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(tombstone_retention_ms),
        "min.compaction.lag.ms": "0",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "max.message.bytes": str(settings.max_mutation_bytes + _BATCH_OVERHEAD),
    }


def topic_specs(
    settings: Settings,
    partitions: int,
    mutation_partitions: int = 1,
    tombstone_retention_ms: int = DEFAULT_TOMBSTONE_RETENTION_MS,
) -> list[TopicSpec]:
    """The topics a deployment needs; the mutation log as :func:`mutation_topic_configs` says."""
    return [
        TopicSpec(settings.topic_queries, partitions, {}),
        TopicSpec(settings.topic_intents, partitions, {}),
        TopicSpec(settings.topic_dlq, partitions, {}),
        TopicSpec(
            settings.topic_mutations,
            mutation_partitions,
            mutation_topic_configs(settings, tombstone_retention_ms),
        ),
    ]


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec], replication_factor: int | None = None
) -> list[TopicStatus]:
    """Create the missing topics; existing ones are fine (checked, never altered).

    ``replication_factor`` None: :data:`DEFAULT_REPLICATION_FACTOR`, or the number of brokers if
    the cluster is smaller.
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        asked = replication_factor
        brokers = len((await admin.describe_cluster()).get("brokers", ())) or 1
        if replication_factor is None:
            replication_factor = min(DEFAULT_REPLICATION_FACTOR, brokers)
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing and replication_factor > brokers:
            raise ReplicationError(
                f"replication factor {replication_factor} is more than the cluster's {brokers} "
                "broker(s): no topic was created"
            )
        created: set[str] = set()
        for spec in missing:
            try:
                response: Any = await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=spec.configs)]
                )
                _raise_for_errors(response)
                created.add(spec.name)
            except TopicAlreadyExistsError:  # another deploy created it a moment ago: fine
                pass
        statuses = []
        for spec in specs:
            if spec.name in created:
                statuses.append(TopicStatus(spec.name, spec.partitions, "created", "", replication_factor))
                logger.info(
                    "created topic %s (%d partitions, %d replicas)",
                    spec.name,
                    spec.partitions,
                    replication_factor,
                )
            else:
                statuses.append(await _existing(admin, spec, asked))
        return statuses
    finally:
        await admin.close()


def _raise_for_errors(response: Any) -> None:
    """aiokafka returns a CreateTopics response as it is: a topic the broker refused raises here."""
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code:
            message = entry[2] if len(entry) > 2 and entry[2] else ""
            error = for_code(code)
            raise error(f"topic {topic!r}: {message or error.description}")


async def _existing(
    admin: AIOKafkaAdminClient, spec: TopicSpec, replication_factor: int | None
) -> TopicStatus:
    described: Any = await admin.describe_topics([spec.name])
    partition_list = described[0].get("partitions", ()) if described else ()
    partitions = len(partition_list)
    replicas = max((len(p.get("replicas", ())) for p in partition_list), default=0)
    warnings = []
    if spec.configs:
        entries = await topic_configs(admin, spec.name)
        for key, wanted in spec.configs.items():
            if entries.get(key) != wanted:
                warnings.append(f"{key} is {entries.get(key)!r}, expected {wanted!r}")
    if partitions != spec.partitions:
        warnings.append(f"has {partitions} partitions, asked for {spec.partitions} (left as is)")
    if replication_factor is not None and replicas and replicas != replication_factor:
        warnings.append(f"has {replicas} replicas, asked for {replication_factor} (left as is)")
    warning = "; ".join(warnings)
    if warning:
        logger.warning("topic %s exists but %s", spec.name, warning)
    return TopicStatus(spec.name, partitions, "exists", warning, replicas)
