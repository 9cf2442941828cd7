"""A whole replica: encoder pool, route replica, embedding cache, health server and the pipeline.

This is the composition root: the only place that knows every part. The pipeline (queries) and the
route replica (the mutation log) do not know each other; here the replica's live table is handed
to the pipeline's router once it has caught up.

Composition order: settings -> encoder pool (loaded in a thread) -> route replica opened (store
loaded, table built) -> one task group running the replica's replay-and-tail and, once the replica
has caught up with the mutation log, the query pipeline routing against its live table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from worker.app.replica_telemetry import ReplicaTelemetry
from worker.app.serving import CalibrationWatch, serving_router
from worker.cache import CachedEncoder, make_cache
from worker.config import Settings
from worker.embedding import EncoderPool, encoder_pool
from worker.health.server import HealthServer
from worker.kafka_access import check_access, worker_needs
from worker.pipeline import PipelineError, QueryPipeline
from worker.pipeline.preflight import require_transactions
from worker.replication import RouteReplica
from worker.routing import RouteTable
from worker.telemetry import Telemetry

logger = logging.getLogger(__name__)


class Replica(Protocol):
    """What the worker needs of :class:`RouteReplica` (tests pass stand-ins)."""

    ready: asyncio.Event

    @property
    def table(self) -> RouteTable:
        """The live route table (usable after ``open``)."""
        ...

    async def open(self) -> None:
        """Load the store and build the table."""
        ...

    async def run(self) -> None:
        """Replay and tail the mutation log until ``stop``."""
        ...

    async def stop(self) -> None:
        """End ``run``."""
        ...


ReplicaFactory = Callable[[Settings, EncoderPool], Replica]
EncoderFactory = Callable[[Settings], EncoderPool]


def route_replica(settings: Settings, encoder: EncoderPool) -> Replica:
    """The production replica: the route-mutation log replayed into the store and the table."""
    return RouteReplica(settings, encoder, store_path=Path(settings.store_path))


class ReplicaWorker:
    """Runs one replica until :meth:`stop`; :meth:`run` raises if any part fails."""

    def __init__(
        self,
        settings: Settings,
        telemetry: Telemetry,
        *,
        replica_factory: ReplicaFactory = route_replica,
        encoder_factory: EncoderFactory = encoder_pool,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self._replica_factory = replica_factory
        self._encoder_factory = encoder_factory
        self._stopping = asyncio.Event()
        self.pipeline: QueryPipeline | None = None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler, any number of times)."""
        self._stopping.set()
        self.telemetry.health.stopping()
        if self.pipeline is not None:
            self.pipeline.stop()

    async def run(self) -> None:
        """Start everything, serve until stopped, then close everything in reverse order.

        Raises :class:`worker.errors.ConfigError` before the model is loaded when the brokers
        cannot give the processing guarantee asked for (exactly_once without transactions); the
        access check goes first, so TLS, SASL and topic ACL refusals are named as such.
        """
        health = self.telemetry.health
        server = None
        if self.settings.health_port is not None:
            server = HealthServer(
                self.settings.health_port,
                liveness=health.liveness,
                readiness=health.readiness,
                registry=self.telemetry.registry,
                on_request=self.telemetry.metrics.health_request,
            )
            await server.start()
        try:
            health.set_phase("checking Kafka access")
            await check_access(self.settings, worker_needs(self.settings))
            await require_transactions(self.settings)  # TransactionalId ACLs are checked here
            health.set_phase("loading the embedding model")
            encoder = await asyncio.to_thread(self._encoder_factory, self.settings)
            try:
                await self._run_replica(encoder)
            finally:
                await asyncio.to_thread(encoder.close)
        finally:
            if server is not None:
                await server.stop()

    async def _run_replica(self, encoder: EncoderPool) -> None:
        replica = self._replica_factory(self.settings, encoder)
        if isinstance(replica, RouteReplica):
            replica.on_live = self.telemetry.metrics.mutation_apply_lag
            replica.events = ReplicaTelemetry(self.telemetry, self.settings.topic_mutations)
        self.telemetry.health.set_phase("loading routes")
        await replica.open()
        metrics = self.telemetry.metrics
        cache = make_cache(self.settings, on_error=lambda: metrics.cache_unavailable("redis"))
        try:
            if self._stopping.is_set():
                return
            cached = CachedEncoder(encoder, cache, on_lookup=metrics.cache_lookups)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._replicate(replica), name="route-replica")
                tasks.create_task(self._route_when_ready(replica, cached), name="query-pipeline")
                tasks.create_task(self._stop_on_request(replica), name="stop-watch")
        finally:
            if cache is not None:
                await cache.close()

    async def _replicate(self, replica: Replica) -> None:
        await replica.run()
        if not self._stopping.is_set():
            raise PipelineError("the route replica stopped by itself: the route table would go stale")

    async def _route_when_ready(self, replica: Replica, encoder: CachedEncoder) -> None:
        self.telemetry.health.set_phase("catching up with the route-mutation log")
        ready = asyncio.ensure_future(replica.ready.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopping.cancel()
        if self._stopping.is_set():
            return
        self.telemetry.health.routes_caught_up()
        logger.info("route table ready (%d routes): routing queries", len(replica.table))
        router = serving_router(self.settings, replica.table)
        # created only now: it owns Kafka clients, which must be closed once created
        self.pipeline = QueryPipeline(
            self.settings,
            encoder=encoder,
            router=router,
            telemetry=self.telemetry,
            remember_decisions=self.settings.local_cache_size,
        )
        watch = CalibrationWatch(router, self.telemetry.metrics)
        watcher = asyncio.create_task(watch.run(self._stopping), name="calibration-watch")
        try:
            await self.pipeline.run()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _stop_on_request(self, replica: Replica) -> None:
        await self._stopping.wait()
        logger.info("stopping: finishing in-flight queries")
        await replica.stop()
