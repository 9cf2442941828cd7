"""At start, before anything else: can this broker give the processing guarantee asked for?

exactly_once needs transactions. A broker without them (Tansu) refuses a transactional producer's
InitProducerId; finding that out only when the first partition is assigned would stop the replica
after loading the model and replaying the routes, with a client error deep in a traceback. So a
replica in exactly_once mode starts one transactional producer of the group's id prefix first, and
a refusal is one configuration error line (exit status 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka.errors import (
    IllegalOperation,
    KafkaConnectionError,
    KafkaError,
    TransactionalIdAuthorizationFailed,
)

from worker.config import Settings
from worker.errors import ConfigError
from worker.pipeline.clients import transactional_producer
from worker.pipeline.kafka import TransactionalProducer

SETTING = "ROUTEWORKER_PROCESSING_GUARANTEE=exactly_once"


def preflight_id(group_id: str) -> str:
    """The transactional id of the check: under the group's prefix, so the same ACL covers it."""
    return f"{group_id}/preflight"


async def require_transactions(
    settings: Settings,
    producer: Callable[[Settings, str], TransactionalProducer] = transactional_producer,
) -> None:
    """Raise :class:`ConfigError` (one line) unless the brokers start a transactional producer."""
    if settings.processing_guarantee != "exactly_once":
        return
    transactional = producer(settings, preflight_id(settings.group_id))
    timeout_s = settings.kafka_request_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):
            await transactional.start()
    except TransactionalIdAuthorizationFailed:
        raise ConfigError(
            f"{SETTING}: the brokers at {settings.kafka_bootstrap} do not allow this client "
            f"transactional ids (an ACL: WRITE and DESCRIBE on TransactionalId prefix "
            f"'{settings.group_id}/')"
        ) from None
    except KafkaConnectionError as error:
        reach = f"cannot reach the brokers at {settings.kafka_bootstrap}"
        raise ConfigError(f"{SETTING}: {reach}: {error}") from None
    except TimeoutError:
        raise ConfigError(
            f"{SETTING}: no transaction coordinator of {settings.kafka_bootstrap} answered within "
            f"{timeout_s:g}s (is __transaction_state's replication factor more than the brokers?)"
        ) from None
    except (KafkaError, IllegalOperation) as error:
        raise ConfigError(
            f"{SETTING} needs a broker with transactions: {settings.kafka_bootstrap} refused a "
            f"transactional producer ({type(error).__name__}); Tansu has none: use Apache Kafka, "
            "or at_least_once"
        ) from None
    finally:
        await transactional.stop()
