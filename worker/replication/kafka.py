"""The mutation log's consumer options, and a start/stop guard for any client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from worker.config import Settings
from worker.kafka_client import client_options


def mutation_consumer_options(settings: Settings) -> dict[str, Any]:
    """Options of a consumer that reads the mutation log by assignment (no group, no commits).

    Fetches are large (records carry vectors) and the broker's long-poll wait is short, so a
    mutation published to an idle log reaches the replicas quickly. Only committed records are read
    (a guarded `routes apply` publishes in a transaction; an aborted one must never be applied), and
    a position is never reset silently: a position below the log start is an error the replica
    answers with a full replay (:mod:`worker.replication.resume`).
    """
    fetch_bytes = max(settings.kafka_fetch_max_bytes, settings.max_mutation_bytes)
    return {
        **client_options(settings),
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "none",
        "max_partition_fetch_bytes": fetch_bytes,
        # one response at most one partition's worth (the first batch always comes whole, whatever
        # its size): 24-50 MB responses were fresh mappings of the C heap each, three copies of
        # each paid for in page faults while holding the GIL (several seconds of a 1M-vector replay)
        "fetch_max_bytes": fetch_bytes,
        "fetch_max_wait_ms": 100,
        "isolation_level": "read_committed",
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
