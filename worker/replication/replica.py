"""A route replica: replays the mutation log into its SQLite store and route table, then tails it.

Every partition of the mutation topic is read by assignment (no consumer group: every replica
reads everything), from the offsets stored with the routes (the whole log on first start). Each
fetched batch is folded (last valid value per key), resolved to vectors, and written to the store
with its offsets in one transaction; only then does the table see it. Until the end offsets taken
at start are reached, changes are collected and applied to the table in one go, so replaying a
large log costs one table update instead of thousands.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from worker.background import background_executor
from worker.config import Settings
from worker.embedding import EncoderPool
from worker.replication.fold import FoldedMutations, LogRecord, fold
from worker.replication.log import MutationLog
from worker.replication.resolve import ResolvedChanges, resolve_changes
from worker.replication.stats import ReplicaStats
from worker.replication.vectors import embed_routes, shipped_vectors
from worker.routing import IndexSettings, RouteStore, RouteTable, RouteVectors, TableVersion, make_version
from worker.routing.index_file import MANIFEST

logger = logging.getLogger(__name__)

_ABSENT = object()


def index_dir_for(store_path: Path) -> Path:
    """Where a replica persists its main index: beside its store."""
    return store_path.with_name(store_path.name + ".index")


class RouteReplica:
    """One replica's copy of the route table, kept in step with the mutation log.

    ``open()`` loads the store (the table is usable, maybe stale, afterwards); ``run()`` replays
    the log, sets ``ready`` once the end offsets captured at its start are applied, then applies
    every new mutation to the live table until ``stop()``.
    """

    def __init__(self, settings: Settings, encoder: EncoderPool, *, store_path: Path | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.store_path = Path(store_path if store_path is not None else settings.store_path)
        self.ready = asyncio.Event()
        self.stats = ReplicaStats()
        self._store: RouteStore | None = None
        self._table: RouteTable | None = None
        self._stopping = asyncio.Event()
        self._advanced = asyncio.Condition()  # notified whenever the table's version moves
        #: partition -> next offset written to the store (ahead of the table while catching up)
        self._stored: dict[int, int] = {}
        #: changes stored but not yet in the table (only while catching up)
        self._pending: dict[str, RouteVectors | None] = {}
        #: live mutations are decoded and written here, at a lower priority than the queries
        self._background = background_executor("route-apply", settings.background_nice)
        #: called after each live batch is in the table, with each record's seconds from its
        #: timestamp to then (the worker records them as the mutation-apply lag)
        self.on_live: Callable[[Sequence[float]], None] | None = None

    @property
    def table(self) -> RouteTable:
        """The route table queries are decided against; valid after :meth:`open`."""
        if self._table is None:
            raise RuntimeError("RouteReplica.open() has not been called")
        return self._table

    async def open(self) -> None:
        """Load the store in a thread and build the table from it (reusing the persisted index)."""
        if self._table is not None:
            return
        store = await asyncio.to_thread(RouteStore, self.store_path)
        state = await asyncio.to_thread(store.load)
        fingerprint, dim = self.encoder.fingerprint, self.encoder.dim
        routes = [rv for rv in state.routes if rv.fingerprint == fingerprint and rv.dim == dim]
        stale = [rv.route for rv in state.routes if rv.fingerprint != fingerprint or rv.dim != dim]
        if stale:
            # The model changed since these were stored: vectors of two models are not comparable.
            logger.warning("re-embedding %d stored routes made by another model", len(stale))
            fresh = await embed_routes(self.encoder, stale)
            await asyncio.to_thread(store.apply, fresh, [], {})
            routes.extend(fresh)
            self.stats.re_embedded_at_open += len(fresh)
        self._table = await asyncio.to_thread(self._build_table, routes, state.version)
        self._store = store
        self._stored = dict(state.version)
        logger.info("route replica opened: %d routes at %s", len(routes), state.version)

    def _build_table(self, routes: list[RouteVectors], version: TableVersion) -> RouteTable:
        index_dir = index_dir_for(self.store_path)
        dim, fingerprint = self.encoder.dim, self.encoder.fingerprint
        settings = IndexSettings(build_niceness=self.settings.background_nice)
        if (index_dir / MANIFEST).exists():
            # Restart: the persisted main index is reused; routes changed since are overlaid.
            return RouteTable.from_routes(routes, version, dim, fingerprint, settings, index_dir)
        # No index on disk yet (first start, or killed before the first rebuild finished): serve
        # from the overlay at once and build the main index in the background, rather than block
        # start-up on an approximate-index build that takes minutes for a few hundred thousand vectors.
        table = RouteTable(dim, fingerprint, settings, index_dir=index_dir, version=version)
        table.apply(routes, (), version)
        return table

    async def run(self) -> None:
        """Replay the log up to its current end (then ``ready`` is set) and tail it until stopped.

        Raises on any fatal error (missing topic, store failure, broker failure).
        """
        await self.open()
        try:
            await self._replay_and_tail()
        finally:
            self._background.shutdown(wait=False, cancel_futures=True)

    async def _replay_and_tail(self) -> None:
        async with MutationLog.opened(self.settings) as log:
            await self._forget_if_ahead(log.ends)
            await log.seek(self._stored)
            logger.info(
                "replaying %s from %s up to %s", self.settings.topic_mutations, self._stored, log.ends
            )
            await self._catch_up(log)
            if not self._stopping.is_set():
                await self._become_ready()
            while not self._stopping.is_set():
                records = await log.next_batch()
                if records:
                    await self._apply(records)

    async def wait_for_position(self, positions: Mapping[int, int]) -> None:
        """Wait until the table has applied the log up to ``positions`` (partition -> next offset),
        e.g. a :class:`~worker.replication.PublishReceipt`'s ``positions``."""
        async with self._advanced:
            await self._advanced.wait_for(lambda: _covers(self.table.version, positions))

    async def stop(self) -> None:
        """Ask :meth:`run` to return after the batch it is applying."""
        self._stopping.set()

    async def _forget_if_ahead(self, ends: dict[int, int]) -> None:
        ahead = {p: o for p, o in self._stored.items() if o > ends.get(p, -1)}
        if not ahead:
            return
        # The topic was recreated (or truncated): our state describes a log that no longer exists.
        logger.warning(
            "route store %s is ahead of topic %s (stored %s, topic ends at %s): rebuilding it from the log",
            self.store_path,
            self.settings.topic_mutations,
            self._stored,
            ends,
        )
        store, table = self._require()
        await asyncio.to_thread(store.clear)
        await asyncio.to_thread(table.apply, [], table.route_names(), ())
        self._stored = {}
        self.stats.rebuilt_from_log += 1

    async def _catch_up(self, log: MutationLog) -> None:
        """Apply the log up to its end offsets to the store; the table gets it all at once when ready.

        One batch is decoded while the previous one is written: decoding holds the GIL, SQLite
        mostly does not, so on a fresh replica the two overlap.
        """
        store, table = self._require()
        writing: asyncio.Future[None] | None = None
        try:
            async for records in log.up_to_end(self._stopping.is_set):
                folded, resolved = await self._resolve(records)
                self.stats.replayed_on_start += folded.records
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    asyncio.to_thread(self._commit, store, table, resolved, folded.offsets, True)
                )
        finally:
            if writing is not None:
                await writing

    async def _apply(self, records: list[LogRecord]) -> None:
        """Apply one batch of live records: store, then table, then wake position waiters.

        Runs on the low-priority background thread: queries keep the CPU while mutations apply.
        """
        store, table = self._require()
        folded, resolved = await self._resolve(records, background=True)
        commit = functools.partial(self._commit, store, table, resolved, folded.offsets, False)
        await asyncio.get_running_loop().run_in_executor(self._background, commit)
        if self.on_live is not None:
            now_ms = time.time() * 1000
            self.on_live([(now_ms - r.timestamp) / 1000 for r in records if r.timestamp > 0])
        await self._notify()

    async def _resolve(
        self, records: list[LogRecord], *, background: bool = False
    ) -> tuple[FoldedMutations, ResolvedChanges]:
        # catching up (nothing else to do yet) runs at full speed in the default executor
        executor = self._background if background else None
        loop = asyncio.get_running_loop()
        folded, resolved = await loop.run_in_executor(executor, self._prepare, records)
        if resolved.to_embed:
            # Answers keep using the previous definitions until these vectors exist.
            resolved.upserts.extend(await embed_routes(self.encoder, resolved.to_embed))
        return folded, resolved

    def _prepare(self, records: list[LogRecord]) -> tuple[FoldedMutations, ResolvedChanges]:
        # Runs in a worker thread: decoding and checking vectors is CPU work.
        fingerprint, dim = self.encoder.fingerprint, self.encoder.dim
        folded = fold(records, self.settings.limits, lambda d: shipped_vectors(d, fingerprint, dim))
        self.stats.records += folded.records
        self.stats.skipped_malformed += len(folded.skipped)
        return folded, resolve_changes(folded, self._current, fingerprint, self.stats)

    def _commit(
        self,
        store: RouteStore,
        table: RouteTable,
        resolved: ResolvedChanges,
        offsets: dict[int, int],
        catching_up: bool,
    ) -> None:
        # Runs in a worker thread: store first (state + offsets in one transaction), then the table.
        store.apply(resolved.upserts, resolved.deletes, offsets)
        self._stored.update(offsets)
        self.stats.batches += 1
        self.stats.applied += len(resolved.upserts) + len(resolved.deletes)
        if catching_up:
            self._pending.update((rv.name, rv) for rv in resolved.upserts)
            self._pending.update((name, None) for name in resolved.deletes)
        else:
            table.apply(resolved.upserts, resolved.deletes, make_version(self._stored))

    async def _become_ready(self) -> None:
        _, table = self._require()
        pending, self._pending = self._pending, {}
        upserts = [rv for rv in pending.values() if rv is not None]
        deletes = [name for name, rv in pending.items() if rv is None]
        await asyncio.to_thread(table.apply, upserts, deletes, make_version(self._stored))
        self.ready.set()
        await self._notify()
        logger.info(
            "route replica ready: %d routes at %s (%d records replayed)",
            len(table),
            table.version,
            self.stats.replayed_on_start,
        )

    async def _notify(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()

    def _current(self, name: str) -> RouteVectors | None:
        # May run while the previous batch is being committed: a stale answer only costs a reuse.
        pending = self._pending.get(name, _ABSENT)
        if pending is not _ABSENT:
            return pending if isinstance(pending, RouteVectors) else None
        return self.table.snapshot().route(name)

    def _require(self) -> tuple[RouteStore, RouteTable]:
        if self._store is None or self._table is None:
            raise RuntimeError("RouteReplica.open() has not been called")
        return self._store, self._table


def _covers(version: TableVersion, positions: Mapping[int, int]) -> bool:
    applied = dict(version)
    return all(applied.get(partition, 0) >= offset for partition, offset in positions.items())
