"""The Kafka surfaces the pipeline uses: what it reads from consumed records, and what it calls on
its consumer and its producer.

aiokafka's clients satisfy these protocols (mypy checks it in :mod:`worker.pipeline.clients`,
against the typed stubs in ``stubs/aiokafka``, which stubtest checks against the installed
library), and so do the in-memory fakes of the unit tests. The exactly-once output uses one
:class:`TransactionalProducer` per input partition and sets the consumer's positions itself
(``committed``/``seek``). Parameters are positional-only where implementations name them
differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import RecordMetadata, TopicPartition


class KafkaRecord(Protocol):
    """A consumed record (aiokafka's ``ConsumerRecord`` of bytes)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class QueryConsumer(Protocol):
    """A group consumer of the queries topic, committing by hand."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        """Join the group for ``topics``; ``listener`` hears of every rebalance."""
        ...

    async def start(self) -> None:
        """Connect (the first rebalance follows)."""
        ...

    async def stop(self) -> None:
        """Leave the group and disconnect."""
        ...

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None
    ) -> Mapping[TopicPartition, Sequence[KafkaRecord]]:
        """Records fetched within ``timeout_ms``, at most ``max_records``, per partition in order."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns now."""
        ...

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching ``partitions``."""
        ...

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch ``partitions`` again."""
        ...

    def highwater(self, partition: TopicPartition, /) -> int | None:
        """The partition's end offset as of the last fetch (None before one)."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int], /) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) for the group."""
        ...

    # --- what moving past a batch that cannot be decoded (worker.pipeline.undecodable) and owning
    # --- a partition in exactly-once mode (worker.pipeline.exactly_once) need ---

    async def position(self, partition: TopicPartition, /) -> int:
        """The offset of the next record ``getmany`` would hand out of ``partition``."""
        ...

    def seek(self, partition: TopicPartition, offset: int, /) -> None:
        """Read ``partition`` from ``offset`` on."""
        ...

    async def committed(self, partition: TopicPartition, /) -> int | None:
        """The group's committed offset of ``partition`` (None if it has none)."""
        ...

    async def beginning_offsets(self, partitions: list[TopicPartition], /) -> dict[TopicPartition, int]:
        """The first offset still in each partition's log."""
        ...


class OutputProducer(Protocol):
    """The producer of routed intents and dead letters."""

    async def start(self) -> None:
        """Connect."""
        ...

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        ...

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves when the broker acknowledges it."""
        ...


class ProducerFactory(Protocol):
    """Makes an (unstarted) output producer; ``idempotent`` asks for an idempotent one.

    The produce step opens one at start, and a new one when an idempotent producer's sequence
    broke (:mod:`worker.pipeline.producer_session`).
    """

    def __call__(self, *, idempotent: bool) -> OutputProducer: ...


class TransactionalProducer(OutputProducer, Protocol):
    """A producer with a ``transactional_id``: :meth:`start` fences older producers of that id.

    One transaction at a time: begin, send, add the consumed offsets, then commit or abort.
    """

    async def begin_transaction(self) -> None:
        """Open a transaction (sends are allowed only inside one)."""
        ...

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str, /) -> None:
        """Make committing the group's ``offsets`` part of the open transaction."""
        ...

    async def commit_transaction(self) -> None:
        """Flush the transaction's records and commit them with its offsets, atomically."""
        ...

    async def abort_transaction(self) -> None:
        """Abort the open transaction: its records stay invisible to read_committed readers."""
        ...
