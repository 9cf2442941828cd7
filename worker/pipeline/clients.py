"""aiokafka consumer and producer of the query pipeline, configured from settings."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from worker.config import Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap, client id, timeouts and security (SASL / TLS) shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def query_consumer(settings: Settings) -> Any:
    """A group consumer of the queries topic (subscribed later, with the rebalance listener).

    Auto-commit is off: offsets are committed only after the outputs are acknowledged. A group
    without committed offsets starts from the earliest query, so none produced before the first
    replica joined is skipped.
    """
    return AIOKafkaConsumer(
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        fetch_max_bytes=settings.kafka_fetch_max_bytes,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_records=settings.batch_size,
        **connection_options(settings),
    )


def output_producer(settings: Settings) -> Any:
    """The producer of routed intents and dead letters: acks from all in-sync replicas.

    Idempotence is off because some Kafka-protocol brokers (Tansu) reject idempotent producers;
    duplicates a retry might cause are within the at-least-once contract.
    """
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=False,
        linger_ms=settings.kafka_linger_ms,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        **connection_options(settings),
    )
