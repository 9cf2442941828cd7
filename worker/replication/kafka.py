"""Kafka client options shared by the replica, the publisher and the topic admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from aiokafka.helpers import create_ssl_context

from worker.config import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options (bootstrap, client id, TLS, SASL) for any aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def mutation_consumer_options(settings: Settings) -> dict[str, Any]:
    """Options of a consumer that reads the mutation log by assignment (no group, no commits).

    Fetches are large (records carry vectors) and the broker's long-poll wait is short, so a
    mutation published to an idle log reaches the replicas quickly.
    """
    fetch_bytes = max(settings.kafka_fetch_max_bytes, settings.max_mutation_bytes)
    return {
        **client_options(settings),
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": fetch_bytes,
        "fetch_max_bytes": max(fetch_bytes, 52_428_800),
        "fetch_max_wait_ms": 100,
        "isolation_level": "read_uncommitted",
    }


class _Client(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


C = TypeVar("C", bound=_Client)


@asynccontextmanager
async def running(client: C) -> AsyncIterator[C]:
    """Start ``client`` and always stop it, also when starting fails (no unclosed-client leaks)."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()
