"""A topic's configuration as the brokers report it (DescribeConfigs), and the mutation log's retention."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from worker.config import Settings
from worker.kafka_client import client_options
from worker.replication.resume import UNKNOWN_RETENTION, TopicRetention

logger = logging.getLogger(__name__)


async def topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    """Every configuration entry the brokers report for ``topic`` (Kafka lists defaults too; Tansu
    only what was set). Raises :class:`KafkaError` when the answer carries an error."""
    resources: Any = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    error_code, error_message, _, _, entries = resources[0].resources[0][:5]
    if error_code:
        raise KafkaError(f"DescribeConfigs of topic {topic!r} failed: error {error_code} {error_message}")
    return {str(entry[0]): str(entry[1]) for entry in entries if entry[1] is not None}


async def mutation_retention(settings: Settings) -> TopicRetention:
    """How the mutation topic removes records; :data:`UNKNOWN_RETENTION` (with a warning) when the
    brokers do not say (the replica then trusts no resume: see :mod:`worker.replication.resume`)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        configs = await topic_configs(admin, settings.topic_mutations)
    except KafkaError as error:
        logger.warning(
            "cannot read the configuration of %s (%s: %s); the replica needs DescribeConfigs on it "
            "to know how long tombstones are kept",
            settings.topic_mutations,
            type(error).__name__,
            error,
        )
        return UNKNOWN_RETENTION
    finally:
        await admin.close()
    return TopicRetention.from_configs(configs)
