"""A route replica on its own, serving no queries (`routeworker routes replica`).

It replays and tails the mutation log like a worker replica. On SIGUSR1 (and once when ready) it
writes a JSON status file: route-table version and digest, counters, and the answers to a fixed
set of probe queries, so replicas can be compared from outside (the convergence tests do).
SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.app import signals
from worker.config import Settings
from worker.embedding import EncoderPool
from worker.replication import RouteReplica
from worker.routing import Router

logger = logging.getLogger(__name__)


class StatusWriter:
    """Writes the replica's status file atomically; ``request`` counts the writes."""

    def __init__(self, replica: RouteReplica, path: Path, probes: Sequence[str]) -> None:
        self.replica = replica
        self.path = path
        self.probes = list(probes)
        self.request = 0

    async def write(self) -> None:
        """Snapshot the table, answer the probes against it, and replace the file."""
        self.request += 1
        table = self.replica.table
        snapshot = table.snapshot()
        answers: list[dict[str, Any]] = []
        if self.probes:
            vectors = await self.replica.encoder.embed(self.probes)
            decisions = await asyncio.to_thread(Router(table).decide, vectors, 3)
            answers = [
                {
                    "query": query,
                    "route": d.route,
                    "score": d.score,
                    "candidates": [[c.route, c.score] for c in d.candidates],
                    "version": [list(pair) for pair in d.routes_version],
                }
                for query, d in zip(self.probes, decisions, strict=True)
            ]
        status = {
            "pid": os.getpid(),
            "request": self.request,
            "ready": self.replica.ready.is_set(),
            "version": [list(pair) for pair in snapshot.version],
            "digest": snapshot.digest,
            "routes": len(snapshot),
            "fingerprint": self.replica.encoder.fingerprint,
            "stats": self.replica.stats.as_dict(),
            "probes": answers,
        }
        await asyncio.to_thread(_write_atomically, self.path, json.dumps(status, indent=1))


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def serve_replica(
    settings: Settings,
    encoder: EncoderPool,
    *,
    store: Path | None = None,
    status: Path | None = None,
    probes: Sequence[str] = (),
) -> None:
    """Run a replica until SIGTERM/SIGINT, writing ``status`` on readiness and on SIGUSR1.

    Raises a fatal error of the replica.
    """
    replica = RouteReplica(settings, encoder, store_path=store)
    await replica.open()
    writer = StatusWriter(replica, status, [p for p in probes if p.strip()]) if status else None
    requests: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
    stopping: set[asyncio.Future[None]] = set()  # keeps the stop task referenced until it ran

    def on_signal(number: signal.Signals) -> None:
        if number == signal.SIGUSR1:
            if not requests.full():  # a write already due answers this request too
                requests.put_nowait(None)
            return
        logger.info("%s received: stopping the route replica", number.name)
        stopping.add(asyncio.ensure_future(replica.stop()))

    handled = (*signals.STOP_SIGNALS, signal.SIGUSR1) if writer is not None else signals.STOP_SIGNALS
    runner = asyncio.create_task(replica.run(), name="route-replica")
    ready = asyncio.create_task(replica.ready.wait())
    try:
        with signals.handling(on_signal, handled):
            await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            if writer is not None and replica.ready.is_set():
                await writer.write()
            while not runner.done():
                request = asyncio.create_task(requests.get())
                await asyncio.wait({runner, request}, return_when=asyncio.FIRST_COMPLETED)
                if request.done() and writer is not None:
                    await writer.write()
                else:
                    request.cancel()
            await runner  # re-raises a fatal error of the replica
    finally:
        ready.cancel()
        runner.cancel()
