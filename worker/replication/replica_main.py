"""A process that runs only a route replica: `python -m worker.replication.replica_main --status FILE`.

It replays and tails the mutation log like a worker replica, without serving queries. On SIGUSR1
(and once when ready) it writes a JSON status file: route-table version and digest, counters, and
the answers to a fixed set of probe queries, so replicas can be compared from outside (the
convergence tests and `make demo` do). SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.config import Settings, load_settings
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.embedding.pool import encoder_pool
from worker.replication.replica import RouteReplica
from worker.routing import Router

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the replica process (shared with `routeworker routes replica`)."""
    parser.add_argument("--store", type=Path, help="SQLite store (default: the store_path setting)")
    parser.add_argument("--status", type=Path, help="status file written when ready and on SIGUSR1")
    parser.add_argument("--probes", type=Path, help="file of probe queries, one per line")
    parser.add_argument(
        "--encoder",
        choices=("model", "hashing"),
        default="model",
        help="the configured model, or a deterministic hashing stand-in (tests, demos)",
    )
    parser.add_argument("--hashing-dim", type=int, default=64, help="dimension of the hashing encoder")


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


async def serve(settings: Settings, encoder: EncoderPool, args: argparse.Namespace) -> None:
    """Run a replica until SIGTERM/SIGINT, writing status on readiness and on SIGUSR1."""
    replica = RouteReplica(settings, encoder, store_path=args.store)
    await replica.open()
    probes = args.probes.read_text().splitlines() if args.probes else []
    writer = StatusWriter(replica, args.status, [p for p in probes if p.strip()]) if args.status else None
    requests: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Future[None]] = set()  # keeps the stop task referenced until it ran
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, lambda: stopping.add(asyncio.ensure_future(replica.stop())))

    def request_status() -> None:
        if not requests.full():  # a write already due answers this request too
            requests.put_nowait(None)

    if writer is not None:
        loop.add_signal_handler(signal.SIGUSR1, request_status)
    runner = asyncio.create_task(replica.run(), name="route-replica")
    ready = asyncio.create_task(replica.ready.wait())
    try:
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
        for registered in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(registered)


def run_from_args(args: argparse.Namespace) -> int:
    """Build the encoder, run the replica, return the process exit code."""
    settings = load_settings()
    encoder = hashing_pool(args.hashing_dim) if args.encoder == "hashing" else encoder_pool(settings)
    try:
        asyncio.run(serve(settings, encoder, args))
    except Exception:
        logger.exception("route replica failed")
        return 1
    finally:
        encoder.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m worker.replication.replica_main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("ROUTEWORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
