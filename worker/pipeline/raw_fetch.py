"""Partitions' record sets as the broker sends them, undecoded: what :mod:`undecodable` inspects.

The consumer only ever hands out decoded records, so when decoding fails it cannot say which batch
failed nor where that batch ends. This fetches the same bytes the consumer got, with aiokafka's own
protocol client (its Fetch request, the version negotiated per connection), and decodes nothing.
The client connects on first use: a replica that never meets a bad batch never opens it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest

from worker.pipeline.types import TopicPartition

READ_UNCOMMITTED = 0  # the Fetch request's isolation level, as the query consumer reads
_MAX_WAIT_MS = 100


@dataclass(frozen=True, slots=True)
class RecordSet:
    """One partition's fetched bytes (whole batches, maybe a partial one at the end) and its end."""

    data: bytes
    highwater: int


class RawFetch(Protocol):
    """Fetches undecoded record sets; :class:`RawFetcher` is aiokafka's, tests pass stand-ins."""

    async def fetch(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, RecordSet]:
        """Per partition, the bytes from its position on (partitions that failed are left out)."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...


class RawFetcher:
    """A :class:`RawFetch` over an ``AIOKafkaClient`` made with ``options`` (bootstrap, TLS, SASL).

    ``max_partition_bytes`` should be at least what the consumer fetches per partition, so the
    batch that failed for the consumer is in what this fetches too.
    """

    def __init__(self, options: Mapping[str, Any], max_partition_bytes: int) -> None:
        self._options = dict(options)
        self._max_partition_bytes = max_partition_bytes
        self._client: AIOKafkaClient | None = None

    async def _connected(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(**self._options)
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self._client

    async def fetch(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, RecordSet]:
        client = await self._connected()
        cluster = await client.fetch_all_metadata()
        by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = {}
        for tp, offset in positions.items():
            leader = cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                continue  # no leader now: the consumer cannot have fetched it either
            topics = by_leader.setdefault(leader, {})
            topics.setdefault(tp.topic, []).append((tp.partition, offset, self._max_partition_bytes))
        found: dict[TopicPartition, RecordSet] = {}
        for leader, topics in by_leader.items():
            request = FetchRequest(
                # what is there, at once: a broker waits up to this only for a partition at its
                # end (Tansu answers nothing at all to a zero wait or a zero minimum)
                _MAX_WAIT_MS,
                1,
                self._max_partition_bytes * sum(len(parts) for parts in topics.values()),
                READ_UNCOMMITTED,
                list(topics.items()),
            )
            response = await client.send(leader, request)
            for topic, partitions in response.topics:
                for partition, error_code, highwater, *rest in partitions:
                    if error_code == 0:  # the message set is the last field in every version
                        found[TopicPartition(topic, partition)] = RecordSet(bytes(rest[-1] or b""), highwater)
        return found

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
