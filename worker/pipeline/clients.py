"""aiokafka consumer and producer of the query pipeline, configured from settings.

Their return types make mypy check aiokafka's clients against the pipeline's protocols.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.config import Settings
from worker.kafka_client import client_options
from worker.pipeline.kafka import OutputProducer, QueryConsumer, TransactionalProducer
from worker.pipeline.raw_fetch import RawFetch, RawFetcher


def query_consumer(settings: Settings) -> QueryConsumer:
    """A group consumer of the queries topic (subscribed later, with the rebalance listener).

    Auto-commit is off: offsets are committed only after the outputs are acknowledged. A group
    without committed offsets starts from the earliest query, so none produced before the first
    replica joined is skipped. In exactly-once mode the consumer reads committed records only:
    queries of an upstream transaction that aborted are never routed.
    """
    exactly_once = settings.processing_guarantee == "exactly_once"
    return AIOKafkaConsumer(
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if exactly_once else "read_uncommitted",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        fetch_max_bytes=settings.kafka_fetch_max_bytes,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_records=settings.batch_size,
        **client_options(settings),
    )


def output_producer(settings: Settings, *, idempotent: bool, max_batch_bytes: int = 16_384) -> OutputProducer:
    """The producer of routed intents and dead letters: acks from all in-sync replicas.

    ``idempotent`` where the broker takes it (:mod:`worker.pipeline.producer_session` decides);
    ``max_batch_bytes`` keeps record batches within what the output topics take.
    """
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=max_batch_bytes,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        **client_options(settings),
    )


def transactional_producer(settings: Settings, transactional_id: str) -> TransactionalProducer:
    """A transactional producer of routed intents and dead letters for one input partition
    (exactly-once mode): idempotent, acks from all in-sync replicas, ``transactional_id`` from
    :func:`worker.pipeline.transactions.transactional_id`."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.kafka_transaction_timeout_ms,
        linger_ms=settings.kafka_linger_ms,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        **client_options(settings),
    )


def raw_fetch(settings: Settings) -> RawFetch:
    """Undecoded fetches of the queries topic, for batches the consumer cannot decode.

    Per partition it fetches up to the consumer's whole fetch size, so whatever the consumer
    fetched (and failed on) is in it.
    """
    return RawFetcher(client_options(settings), max_partition_bytes=settings.kafka_fetch_max_bytes)
