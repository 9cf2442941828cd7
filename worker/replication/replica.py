"""A route replica: replays the mutation log into its SQLite store and route table, then tails it.

Every partition of the mutation topic is read by assignment (no consumer group: every replica
reads everything), from the offsets stored with the routes (the whole log on first start). Each
fetched batch is folded (last valid value per key), resolved to vectors, and written to the store
with its offsets in one transaction; only then does the table see it. Until the end offsets taken
at start are reached, changes are collected and applied to the table in one go, so replaying a
large log costs one table update instead of thousands.

A fresh replica replaying a large log (:func:`_defers_store`) writes nothing to its store until it
is ready: its decoded vectors go to a spill file (:mod:`worker.routing.spill`) that the first index
build reads, and its batches are written to the store after ``ready``, in log order, each with its
own offsets, as they would have been before (see :meth:`RouteReplica._store_held`). Its records
are decoded in processes of their own (:mod:`worker.replication.decoder`), beside the event loop's
fetching instead of taking turns with it on the GIL; what they cannot decode as usable shipped
routes is decoded here, as always.

Stored offsets are resumed from only when that is safe (:mod:`worker.replication.resume`): when
records the replica has not read may have been removed (its offsets below the log start, or it has
been away from the log's end longer than the topic keeps tombstones), it replays the whole log
instead, at start or while tailing. The table it holds keeps serving during such a full replay and
is replaced, deletions included, in one step at its end.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import OffsetOutOfRangeError

from worker.background import background_executor
from worker.config import Settings
from worker.contracts import CALIBRATION_KEY
from worker.contracts.evolution import FirstSightings
from worker.embedding import EncoderPool
from worker.embedding.cpus import available_cpus
from worker.errors import ContractError, ErrorCode
from worker.replication.calibrations import (
    CalibrationContext,
    CalibrationInstall,
    installable,
    stored_calibration,
)
from worker.replication.decoder import ReplayDecoder, routes_of, rows_at_most
from worker.replication.events import ReplicaEvents
from worker.replication.fold import FoldedMutations, LogRecord, SkippedRecord, fold
from worker.replication.log import MutationLog
from worker.replication.resolve import ResolvedChanges, resolve_changes
from worker.replication.resume import (
    UNKNOWN_RETENTION,
    ReplayReason,
    TopicRetention,
    horizon_passed,
    judge_resume,
)
from worker.replication.stats import ReplicaStats
from worker.replication.topic_config import mutation_retention
from worker.replication.vectors import embed_isolated, shipped_unchecked, unit_faults
from worker.routing import (
    IndexSettings,
    RouteStore,
    RouteTable,
    RouteVectors,
    TableVersion,
    make_version,
)
from worker.routing.index_file import MANIFEST, Persisted, load_stored
from worker.routing.native import release_free_memory
from worker.routing.spill import SpillFile, remove_stale
from worker.routing.table import KEEP

logger = logging.getLogger(__name__)

_ABSENT = object()

#: a replay of at least this many records before ``ready`` freezes what it made (see
#: :func:`_collector_off_until_ready`); a smaller one leaves the collector as it was
_FREEZE_AFTER_RECORDS = 10_000

#: a fresh replica (empty store and table) with at least this many records to replay writes its
#: store after ``ready`` instead of during the replay (see :meth:`RouteReplica._store_held`)
_DEFER_STORE_FROM_RECORDS = 10_000

#: a fresh replay holding its store writes (see above) with at least this many records to replay
#: decodes them in a process of its own (:mod:`worker.replication.decoder`); a smaller one in a thread
_DECODE_APART_FROM_RECORDS = 10_000

#: while tailing at the log's end, how often the "caught up at" time is written to the store
_MARK_EVERY_MS = 30_000


def index_dir_for(store_path: Path) -> Path:
    """Where a replica persists its main index: beside its store."""
    return store_path.with_name(store_path.name + ".index")


class RouteReplica:
    """One replica's copy of the route table, kept in step with the mutation log.

    ``open()`` loads the store (the table is usable, maybe stale, afterwards); ``run()`` replays
    the log, sets ``ready`` once the end offsets captured at its start are applied, then applies
    every new mutation to the live table until ``stop()``.
    """

    def __init__(
        self,
        settings: Settings,
        encoder: EncoderPool,
        *,
        store_path: Path | None = None,
        events: ReplicaEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.store_path = Path(store_path if store_path is not None else settings.store_path)
        self.ready = asyncio.Event()
        self.stats = ReplicaStats()
        #: told of full replays and skipped records (the worker sets one that records metrics)
        self.events = events if events is not None else ReplicaEvents()
        self._unknown_seen = FirstSightings()
        self._clock = clock
        self._margin_ms = int(settings.resume_margin_s * 1000)
        self._retention: TopicRetention = UNKNOWN_RETENTION
        #: unix ms when the stored offsets were last seen at the log's end (None: not known)
        self._caught_up_ms: int | None = None
        #: the last of those written to the store
        self._marked_ms: int | None = None
        #: why the whole log is being replayed now (None: it is not); the table waits for its end
        self._replaying: ReplayReason | None = None
        self._replay_started = 0.0
        self._store: RouteStore | None = None
        self._table: RouteTable | None = None
        self._stopping = asyncio.Event()
        self._halt = threading.Event()  # the same request, seen by the apply thread
        self._advanced = asyncio.Condition()  # notified whenever the table's version moves
        #: partition -> next offset written to the store (ahead of the table while catching up,
        #: behind it while a fresh replay's writes are held)
        self._stored: dict[int, int] = {}
        #: changes stored (or held, see below) but not yet in the table (only while catching up)
        self._pending: dict[str, RouteVectors | None] = {}
        #: a fresh replay's batches in the table's keeping but not yet in the store, in log order,
        #: and the offsets they reach (see :meth:`_store_held`); None: batches are stored at once
        self._held: list[_HeldBatch] | None = None
        self._held_offsets: dict[int, int] = {}
        #: where a fresh replay's vectors are written as they are decoded (while ``_held``)
        self._spill: SpillFile | None = None
        #: whether that replay decodes in a process of its own (:mod:`worker.replication.decoder`)
        self._decode_apart = False
        #: the routes of such a replay that were decoded here and are not spilled yet
        self._unspilled: set[str] = set()
        #: the batch of a replay being written or held in a thread (see :meth:`_take`)
        self._writing: asyncio.Future[None] | None = None
        #: a calibration stored but not yet in service (only while catching up)
        self._pending_calibration: CalibrationInstall | None = None
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
        fingerprint, dim = self.encoder.fingerprint, self.encoder.dim
        # A restart: the persisted index's vectors file holds the vectors of every route unchanged
        # since it was built, so the store load reads only the others (a derived cache: missing or
        # not matching, the store has them all, and a log line says so).
        index_dir = index_dir_for(self.store_path)
        await asyncio.to_thread(remove_stale, index_dir)  # a replay's, interrupted: never read again
        # (the store's check of its definitions runs meanwhile, in SQLite: waited for below)
        state, persisted = await asyncio.to_thread(
            load_stored, store, index_dir, dim, fingerprint, check_later=True
        )
        # what may be 200k routes: the store says which models made them (the usual case: this one)
        routes, stale = [], []
        if state.models <= {(fingerprint, dim)}:
            routes = list(state.routes)
        else:
            for rv in state.routes:
                if rv.fingerprint == fingerprint and rv.utterance_vectors.shape[1] == dim:
                    routes.append(rv)
                else:
                    stale.append(rv.route)
        if stale:
            # The model changed since these were stored: vectors of two models are not comparable.
            logger.warning("re-embedding %d stored routes made by another model", len(stale))
            fresh, failed = await embed_isolated(self.encoder, stale)
            for route, reason in failed:
                # as a replica replaying the log with this model would: the route is skipped
                logger.warning(
                    "stored route %r cannot be embedded by this model, dropped: %s", route.name, reason
                )
            await asyncio.to_thread(store.apply, fresh, [route.name for route, _ in failed], {})
            routes.extend(fresh)
            self.stats.re_embedded_at_open += len(fresh)
            self.stats.skipped_malformed += len(failed)
        by_name = None if stale else state.by_name
        table = await asyncio.to_thread(self._build_table, routes, state.version, persisted, by_name)
        try:
            await asyncio.to_thread(state.check)  # a store that is not sound never serves
        except BaseException:
            table.close()
            raise
        stored = state.records.get(CALIBRATION_KEY)
        if stored is not None:
            install = await asyncio.to_thread(stored_calibration, stored, self._calibration_context())
            if install is not None:
                table.apply([], [], state.version, calibration=install.calibration)
        self._table = table
        self._store = store
        self._stored = dict(state.version)
        self._caught_up_ms = self._marked_ms = state.caught_up_at_ms
        logger.info("route replica opened: %d routes at %s", len(routes), state.version)

    def _calibration_context(self) -> CalibrationContext:
        return CalibrationContext(
            self.encoder.fingerprint, self.encoder.dim, self.settings.limits, self.stats
        )

    def _build_table(
        self,
        routes: list[RouteVectors],
        version: TableVersion,
        persisted: Persisted | None,
        by_name: Mapping[str, RouteVectors] | None = None,
    ) -> RouteTable:
        index_dir = index_dir_for(self.store_path)
        dim, fingerprint = self.encoder.dim, self.encoder.fingerprint
        settings = IndexSettings(
            build_niceness=self.settings.background_nice, overlay_max_rows=self.settings.overlay_max_rows
        )
        if (index_dir / MANIFEST).exists():
            # Restart: the persisted main index is reused; routes changed since are overlaid.
            table = RouteTable.from_routes(
                routes, version, dim, fingerprint, settings, index_dir, persisted, by_name
            )
            table.on_rebuild = self._rebuilt
            return table
        # No index on disk yet (first start, or killed before the first rebuild finished): serve
        # from the overlay at once and build the main index in the background, rather than block
        # start-up on an approximate-index build that takes minutes for a few hundred thousand vectors.
        table = RouteTable(dim, fingerprint, settings, index_dir=index_dir, version=version)
        table.on_rebuild = self._rebuilt
        table.apply(routes, (), version)
        return table

    def _rebuilt(self, error: BaseException | None) -> None:
        # from the table's rebuild thread
        self.events.index_rebuild(error)
        if self._table is not None:
            self.events.overlay_rows(self._table.snapshot().overlay.rows)

    async def run(self) -> None:
        """Replay the log up to its current end (then ``ready`` is set) and tail it until stopped.

        Raises on any fatal error (missing topic, store failure, broker failure).
        """
        await self.open()
        try:
            await self._replay_and_tail()
        finally:
            self._halt.set()
            self._background.shutdown(wait=False, cancel_futures=True)
            self.table.close()  # no more rebuild retries; the table itself goes on serving

    async def _replay_and_tail(self) -> None:
        async with MutationLog.opened(self.settings) as log:
            self._retention = await mutation_retention(self.settings)
            verdict = judge_resume(
                self._stored,
                self._caught_up_ms,
                log.starts,
                log.ends,
                self._retention,
                self._now_ms(),
                self._margin_ms,
            )
            if verdict.reason is not None:
                await self._begin_full_replay(verdict.reason, verdict.detail)
            elif self._stored:
                logger.info(
                    "resuming %s from stored offsets: %s", self.settings.topic_mutations, verdict.detail
                )
            await log.seek(self._stored)
            logger.info(
                "replaying %s from %s up to %s", self.settings.topic_mutations, self._stored, log.ends
            )
            if _defers_store(self.table, self._stored, log):
                self._hold_store_writes(decode_apart=_to_replay(log) >= _DECODE_APART_FROM_RECORDS)
            with _collector_off_until_ready(lambda: self.stats.replayed_on_start >= _FREEZE_AFTER_RECORDS):
                await self._catch_up_or_replay(log, on_start=True)
                if self._stopping.is_set():
                    return
                await self._install_pending()
            await self._become_ready(log)
            await self._store_held(log)
            await self._tail(log)

    async def _tail(self, log: MutationLog) -> None:
        """Apply what comes after the end offsets taken at start, until stopped."""
        while not self._stopping.is_set():
            try:
                records = await log.next_batch()
            except OffsetOutOfRangeError as error:
                await self._replay_live(log, ReplayReason.BELOW_LOG_START, f"position out of range: {error}")
                continue
            if records and self._away_too_long():
                await self._replay_live(
                    log,
                    ReplayReason.TOMBSTONE_HORIZON,
                    f"away from the log's end since {self._caught_up_ms} (unix ms), longer than "
                    "delete.retention.ms less the margin: deletes may have been compacted away unread",
                )
                continue
            if records:
                await self._apply(records)
            await self._note_caught_up(log)

    def _away_too_long(self) -> bool:
        caught_up = self._caught_up_ms
        return caught_up is not None and horizon_passed(
            caught_up, self._retention, self._now_ms(), self._margin_ms
        )

    async def _begin_full_replay(self, reason: ReplayReason, detail: str) -> None:
        """Forget the stored state and offsets; the table keeps serving until the replay is done."""
        store, table = self._require()
        logger.warning(
            "replaying all of %s instead of resuming from stored offsets %s (%s): %s; the current "
            "table (%d routes) serves until the replay is done",
            self.settings.topic_mutations,
            self._stored,
            reason.value,
            detail,
            len(table),
        )
        self.events.full_replay(reason, detail)
        self.stats.rebuilt_from_log += 1
        # A crash from here on leaves a store without a "caught up" mark: the next start replays all.
        await asyncio.to_thread(store.clear)
        self._stored = {}
        self._pending = {}
        self._pending_calibration = None
        self._unspilled = set()
        if self._held is not None:
            self._held, self._held_offsets = [], {}
        self._caught_up_ms = self._marked_ms = None
        self._replaying = reason
        self._replay_started = time.monotonic()

    async def _replay_live(self, log: MutationLog, reason: ReplayReason, detail: str) -> None:
        """A full replay while serving: read the whole log again, then swap the table in one step."""
        await self._begin_full_replay(reason, detail)
        await log.take_bounds()
        await log.seek({})
        await self._catch_up_or_replay(log, on_start=False)
        if self._stopping.is_set():
            return
        await self._install_pending()
        await self._mark_caught_up(log.opened_at_ms)
        await self._notify()

    async def wait_for_position(self, positions: Mapping[int, int]) -> None:
        """Wait until the table has applied the log up to ``positions`` (partition -> next offset),
        e.g. a :class:`~worker.replication.PublishReceipt`'s ``positions``."""
        async with self._advanced:
            await self._advanced.wait_for(lambda: _covers(self.table.version, positions))

    async def stop(self) -> None:
        """Ask :meth:`run` to return after the batch it is applying (or waiting to apply)."""
        self._stopping.set()
        self._halt.set()

    async def _catch_up_or_replay(self, log: MutationLog, *, on_start: bool) -> None:
        """:meth:`_catch_up`, starting over with a full replay if records go missing under it."""
        while True:
            try:
                await self._catch_up(log, on_start=on_start)
                return
            except OffsetOutOfRangeError as error:
                # retention or DeleteRecords removed records after the log's bounds were taken
                await self._begin_full_replay(ReplayReason.BELOW_LOG_START, f"position out of range: {error}")
                await log.take_bounds()
                await log.seek({})

    async def _catch_up(self, log: MutationLog, *, on_start: bool) -> None:
        """Apply the log up to its end offsets to the store; the table gets it all at once when ready.

        One batch is decoded while the previous one is written: decoding holds the GIL, SQLite
        mostly does not, so on a fresh replica the two overlap. A large fresh replay decodes in
        processes of its own (:mod:`worker.replication.decoder`), batches ahead of the one folded here.
        """
        store, _ = self._require()
        decoders: list[ReplayDecoder] = []
        held = await asyncio.to_thread(store.held_open)  # keeps the WAL file between batches
        try:
            spill = self._spill if self._decode_apart else None
            if spill is not None:
                for _ in range(_decode_processes()):
                    decoders.append(await asyncio.to_thread(self._start_decoder, spill))
            submitted: list[tuple[list[LogRecord], ReplayDecoder]] = []
            turns = 0
            async for records in log.up_to_end(self._stopping.is_set):
                if spill is None:
                    await self._take(records, None, on_start)
                    continue
                # in turn to each process, each batch's rows in a segment of the spill file set apart
                decoder = decoders[turns % len(decoders)]
                turns += 1
                region = spill.reserve(rows_at_most(records, self.encoder.dim))
                await asyncio.to_thread(decoder.submit, records, region)
                submitted.append((records, decoder))
                if len(submitted) > len(decoders):
                    await self._take(*submitted.pop(0), on_start)
            while submitted:
                await self._take(*submitted.pop(0), on_start)
        finally:
            try:
                await self._written()
            finally:
                try:
                    for decoder in decoders:  # always reaped, also when cancelled
                        await asyncio.to_thread(decoder.close)
                finally:
                    await asyncio.to_thread(held.close)
        if decoders:
            # the decode processes are gone: the routes decoded here go to the spill file now
            await asyncio.to_thread(self._spill_rest)

    async def _take(self, records: list[LogRecord], decoder: ReplayDecoder | None, on_start: bool) -> None:
        """Decode and resolve one batch of the replay, then have it written (or held) in a thread
        while the next one is decoded."""
        store, table = self._require()
        folded, resolved, install = await self._resolve(records, decoder=decoder)
        if on_start:
            self.stats.replayed_on_start += folded.records
        await self._written()
        if self._held is not None:
            job = functools.partial(self._hold, resolved, install, folded.offsets, decoder is not None)
        else:
            job = functools.partial(self._commit, store, table, resolved, install, folded.offsets, True)
        self._writing = asyncio.ensure_future(asyncio.to_thread(job))

    async def _written(self) -> None:
        """Wait for the batch being written or held (if any)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def _start_decoder(self, spill: SpillFile) -> ReplayDecoder:
        encoder = self.encoder
        return ReplayDecoder.start(spill.path, encoder.fingerprint, encoder.dim, self.settings.limits)

    def _spill_rest(self) -> None:
        """Spill the routes of a replay decoded apart that were decoded here (see :meth:`_hold`),
        those of them still pending: their vectors become views of the spill file, as the others'."""
        spill, names = self._spill, self._unspilled
        self._unspilled = set()
        if spill is None:
            return
        routes = [rv for rv in map(self._pending.get, sorted(names)) if rv is not None]
        self._pending.update((rv.name, rv) for rv in spill.spill(routes))

    async def _apply(self, records: list[LogRecord]) -> None:
        """Apply one batch of live records: store, then table, then wake position waiters.

        Runs on the low-priority background thread: queries keep the CPU while mutations apply.
        """
        store, table = self._require()
        folded, resolved, install = await self._resolve(records, background=True)
        commit = functools.partial(self._commit, store, table, resolved, install, folded.offsets, False)
        await asyncio.get_running_loop().run_in_executor(self._background, commit)
        if self.on_live is not None:
            now_ms = time.time() * 1000
            self.on_live([(now_ms - r.timestamp) / 1000 for r in records if r.timestamp > 0])
        await self._notify()

    async def _resolve(
        self, records: list[LogRecord], *, background: bool = False, decoder: ReplayDecoder | None = None
    ) -> tuple[FoldedMutations, ResolvedChanges, CalibrationInstall | None]:
        # catching up (nothing else to do yet) runs at full speed in the default executor
        executor = self._background if background else None
        loop = asyncio.get_running_loop()
        # before the first ``ready`` nothing searches this process's tables: no need to yield the GIL
        prepare: Callable[[], tuple[FoldedMutations, ResolvedChanges, CalibrationInstall | None]]
        if decoder is not None:
            prepare = functools.partial(self._prepare_apart, records, decoder)
        else:
            prepare = functools.partial(self._prepare, records, yield_gil=self.ready.is_set())
        folded, resolved, install = await loop.run_in_executor(executor, prepare)
        if resolved.to_embed:
            # Answers keep using the previous definitions until these vectors exist.
            embedded, failed = await embed_isolated(self.encoder, resolved.to_embed)
            resolved.upserts.extend(embedded)
            for route, reason in failed:
                # a poison route: skipped like a malformed record, on every replica of this model
                partition, offset = folded.positions.get(route.name, (-1, -1))
                error = ContractError(
                    ErrorCode.EMBEDDING_FAILED, f"route {route.name!r} cannot be embedded: {reason}"
                )
                skipped = folded.skip(self.settings.topic_mutations, partition, offset, error, route.name)
                resolved.deletes.append(route.name)
                self._report_skipped([skipped])
        return folded, resolved, install

    def _prepare(
        self,
        records: list[LogRecord],
        *,
        yield_gil: bool = True,
        elsewhere: Mapping[int, RouteVectors] | None = None,
    ) -> tuple[FoldedMutations, ResolvedChanges, CalibrationInstall | None]:
        # Runs in a worker thread: decoding and checking vectors (and a calibration's weights) is CPU work.
        fingerprint, dim = self.encoder.fingerprint, self.encoder.dim
        folded = fold(
            records,
            self.settings.limits,
            lambda d: shipped_unchecked(d, fingerprint, dim),
            check=unit_faults,
            yield_gil=yield_gil,
            elsewhere=elsewhere,
        )
        self.stats.records += folded.records
        self._report_skipped(folded.skipped)
        self._report_unknown(folded.unknown_fields)
        change = folded.calibration
        install = installable(change, self._calibration_context()) if change is not None else None
        return folded, resolve_changes(folded, self._current, fingerprint, self.stats), install

    def _prepare_apart(
        self, records: list[LogRecord], decoder: ReplayDecoder
    ) -> tuple[FoldedMutations, ResolvedChanges, CalibrationInstall | None]:
        """:meth:`_prepare` of a replay's batch with its usable shipped routes decoded by ``decoder``
        (their vectors written to the spill file by it); the other records are decoded here."""
        # Runs in a worker thread, which waits for the decode process without the GIL.
        spill = self._spill
        assert spill is not None
        answer = decoder.answer()
        elsewhere, placed = routes_of(answer, records, spill, self.encoder.fingerprint, self.encoder.dim)
        folded, resolved, install = self._prepare(records, yield_gil=False, elsewhere=elsewhere)
        resolved.placed = placed
        return folded, resolved, install

    def _report_unknown(self, unknown: Counter[str]) -> None:
        if not unknown:
            return
        self.stats.unknown_fields += unknown.total()
        self.events.unknown_fields(unknown.total())
        for path in self._unknown_seen.new(unknown):
            logger.info(
                "route mutations on %s carry field %r, unknown to this version: ignored on every replica",
                self.settings.topic_mutations,
                path,
            )

    def _report_skipped(self, skipped: Sequence[SkippedRecord]) -> None:
        self.stats.skipped_malformed += len(skipped)
        for record in skipped:
            self.events.mutation_skipped(record.code, record.partition, record.offset)

    def _commit(
        self,
        store: RouteStore,
        table: RouteTable,
        resolved: ResolvedChanges,
        install: CalibrationInstall | None,
        offsets: dict[int, int],
        catching_up: bool,
    ) -> None:
        # Runs in a worker thread: store first (state + offsets in one transaction), then the table,
        # whose new snapshot carries the routes and the calibration of this batch together.
        if not catching_up and not self._wait_for_room(table):
            return  # stopping: the batch is read again on the next start
        self._write(store, resolved.upserts, resolved.deletes, install, offsets)
        if catching_up:
            self._collect(resolved, install)
        else:
            self._count(resolved)
            calibration = install.calibration if install is not None else KEEP
            table.apply(
                resolved.upserts, resolved.deletes, make_version(self._stored), calibration=calibration
            )
            self.events.overlay_rows(table.snapshot().overlay.rows)

    def _hold_store_writes(self, *, decode_apart: bool = False) -> None:
        """From now on until ready, batches go to the table's pending changes and a spill file only;
        the store gets them after ``ready`` (see :meth:`_store_held`). With ``decode_apart`` the
        replay is decoded in a process of its own (see :mod:`worker.replication.decoder`)."""
        logger.info("a fresh replay of a large log: the store is written once the table is ready")
        self._held, self._held_offsets = [], {}
        self._spill = SpillFile(index_dir_for(self.store_path), self.encoder.dim)
        self._decode_apart = decode_apart

    def _hold(
        self,
        resolved: ResolvedChanges,
        install: CalibrationInstall | None,
        offsets: dict[int, int],
        apart: bool = False,
    ) -> None:
        # Runs in a worker thread, beside the next batch's decoding, instead of :meth:`_commit`:
        # the vectors go to the spill file (the routes keep views of it, not heap copies).
        # ``apart``: decoded in the decode process, which alone appends to the spill file while it
        # runs; the routes decoded here (any but a usable shipped one) are spilled after it
        # (:meth:`_spill_rest`), those of them still pending then.
        assert self._held is not None
        assert self._spill is not None
        if apart:
            placed = resolved.placed
            for rv in resolved.upserts:
                if id(rv) in placed:
                    self._unspilled.discard(rv.name)
                else:
                    self._unspilled.add(rv.name)
            self._spill.spill([rv for rv in resolved.upserts if id(rv) in placed], placed)
        else:
            resolved.upserts = self._spill.spill(resolved.upserts, resolved.placed)
        self._held.append(_HeldBatch(resolved.upserts, resolved.deletes, install, offsets))
        self._held_offsets.update(offsets)
        self._collect(resolved, install)

    def _collect(self, resolved: ResolvedChanges, install: CalibrationInstall | None) -> None:
        """Keep a caught-up batch's changes for the table's one update at ready (and count it)."""
        self._count(resolved)
        self._pending.update((rv.name, rv) for rv in resolved.upserts)
        self._pending.update((name, None) for name in resolved.deletes)
        if install is not None:
            self._pending_calibration = install

    def _count(self, resolved: ResolvedChanges) -> None:
        self.stats.batches += 1
        self.stats.applied += len(resolved.upserts) + len(resolved.deletes)

    async def _store_held(self, log: MutationLog) -> None:
        """Write a fresh replay's held batches to the store, then mark it caught up.

        Why this is safe: the compacted log is the source and the store only the replica's durable
        copy of it. Each batch is written exactly as :meth:`_commit` would have written it during
        the replay (its upserts, deletions, calibration record and offsets in ONE transaction, in
        log order), so the store always holds the state of a prefix of the log at the offsets it
        stores: never rows its offsets do not cover, never offsets ahead of its rows. Until the last
        batch is in, the store lags the table, and the "caught up" mark (which lets a restart trust
        its offsets against tombstone compaction) is written only after it. A crash or kill in
        between loses nothing: the store is then what a crash during the replay leaves today, a
        prefix never marked caught up, so the next start replays the whole log (the persisted index
        is reused for the routes the store has) and ends with the same table.
        Live mutations wait for this (their store writes must come after these); queries do not,
        and the writes run on the low-priority background thread, as live mutations' do, so the
        queries the replica now serves keep the CPU. A stop waits for it too: the next start would
        otherwise replay what is missing.
        """
        held, self._held = self._held, None
        if held is None:
            return
        started = time.monotonic()
        store, _ = self._require()
        loop = asyncio.get_running_loop()
        connection = await asyncio.to_thread(store.held_open)
        try:
            batches = len(held)
            while held:
                batch = held.pop(0)  # its routes' spill views go with it: the spill file's pages too
                await loop.run_in_executor(self._background, self._store_batch, store, batch)
        finally:
            await asyncio.to_thread(connection.close)
        self._held_offsets = {}
        await self._mark_caught_up(log.opened_at_ms)
        logger.info(
            "the store caught up with the table: %d batches at %s in %.1f s after ready",
            batches,
            self._stored,
            time.monotonic() - started,
        )

    def _store_batch(self, store: RouteStore, batch: _HeldBatch) -> None:
        self._write(store, batch.upserts, batch.deletes, batch.install, batch.offsets)

    def _write(
        self,
        store: RouteStore,
        upserts: Sequence[RouteVectors],
        deletes: Sequence[str],
        install: CalibrationInstall | None,
        offsets: Mapping[int, int],
    ) -> None:
        """One batch into the store: its routes, deletions, calibration record and offsets in ONE
        transaction; then the offsets it reached are the stored ones."""
        records = {CALIBRATION_KEY: install.value} if install is not None else None
        store.apply(upserts, deletes, offsets, records)
        self._stored.update(offsets)

    def _wait_for_room(self, table: RouteTable) -> bool:
        """Backpressure of the bounded overlay: this (apply) thread waits, queries never do."""
        if table.has_room():
            return True
        started = time.monotonic()
        logger.info(
            "the route table's overlay is full (%d vectors): live mutations wait for the index rebuild",
            table.snapshot().overlay.rows,
        )
        room = table.wait_for_room(self._halt)
        waited = time.monotonic() - started
        self.stats.apply_waits += 1
        self.events.apply_waited(waited)
        logger.info("live mutations waited %.1f s for room in the overlay", waited)
        return room

    async def _become_ready(self, log: MutationLog) -> None:
        """Mark the store caught up and set ``ready`` (what catching up collected is installed).

        With its writes held (a fresh replay), the store is marked once they are in (:meth:`_store_held`).
        """
        _, table = self._require()
        if self._held is None:
            # the store now holds the log up to the end offsets taken when it was opened
            await self._mark_caught_up(log.opened_at_ms)
        if self.stats.replayed_on_start:
            # what decoding the replay freed between the routes it kept, back to the system
            await asyncio.to_thread(release_free_memory)
        self.ready.set()
        await self._notify()
        logger.info(
            "route replica ready: %d routes at %s (%d records replayed)",
            len(table),
            table.version,
            self.stats.replayed_on_start,
        )

    async def _install_pending(self) -> None:
        """Put what catching up collected into the table, in one step.

        After a full replay the table may hold routes the log no longer has (their tombstones gone):
        every route the replay did not see is deleted in the same step.
        """
        _, table = self._require()
        pending, self._pending = self._pending, {}
        install, self._pending_calibration = self._pending_calibration, None
        upserts = [rv for rv in pending.values() if rv is not None]
        deletes = [name for name, rv in pending.items() if rv is None]
        replaying, self._replaying = self._replaying, None
        if replaying is not None:
            deletes.extend(name for name in table.route_names() if name not in pending)
        # after a full replay without a usable calibration record, none is served any more
        calibration = install.calibration if install is not None else None if replaying is not None else KEEP
        version = make_version({**self._stored, **self._held_offsets})
        spill, self._spill = self._spill, None
        try:
            if _fills_empty(table, upserts, self.settings.overlay_max_rows):
                # a fresh replica: its main index is built now, before it serves, not via the overlay
                on_file = None if spill is None else spill.on_file()
                await asyncio.to_thread(
                    functools.partial(
                        table.install, upserts, version, calibration=calibration, on_file=on_file
                    )
                )
            else:
                await asyncio.to_thread(
                    functools.partial(table.apply, upserts, deletes, version, calibration=calibration)
                )
        finally:
            if spill is not None:
                spill.remove()  # the routes' views keep what they map until they go
        if replaying is not None:
            seconds = time.monotonic() - self._replay_started
            logger.warning(
                "full replay of %s done (%s): %d routes at %s in %.1f s, swapped in at once",
                self.settings.topic_mutations,
                replaying.value,
                len(table),
                table.version,
                seconds,
            )
            self.events.full_replay_done(replaying, len(table), seconds)

    async def _note_caught_up(self, log: MutationLog) -> None:
        """Remember when the replica was last at the log's end (written to the store now and then)."""
        at = await log.caught_up_at_ms()
        if at is None:
            return
        self._caught_up_ms = max(self._caught_up_ms or 0, at)
        if self._marked_ms is None or at - self._marked_ms >= _MARK_EVERY_MS:
            await self._mark_caught_up(at)

    async def _mark_caught_up(self, at_ms: int) -> None:
        store, _ = self._require()
        await asyncio.to_thread(store.mark_caught_up, at_ms)
        self._marked_ms = at_ms
        self._caught_up_ms = max(self._caught_up_ms or 0, at_ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

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


@dataclass(frozen=True, slots=True)
class _HeldBatch:
    """One replayed batch as :meth:`RouteReplica._commit` would have stored it."""

    upserts: list[RouteVectors]
    deletes: list[str]
    install: CalibrationInstall | None
    offsets: dict[int, int]


def _defers_store(table: RouteTable, stored: Mapping[int, int], log: MutationLog) -> bool:
    """Whether a replay starting now holds its store writes until ready: a fresh replica (nothing
    stored, an empty table) with at least :data:`_DEFER_STORE_FROM_RECORDS` records to read."""
    snapshot = table.snapshot()
    if stored or len(snapshot) or snapshot.overlay.rows:
        return False
    return _to_replay(log) >= _DEFER_STORE_FROM_RECORDS


def _decode_processes() -> int:
    """How many decode processes a replay decoding apart runs: one per CPU this process may use
    (the replica itself mostly waits for them), four at most."""
    return min(4, available_cpus())


def _to_replay(log: MutationLog) -> int:
    """The records a replay of the whole of ``log`` reads (at most: compaction leaves gaps)."""
    return sum(max(0, end - log.starts.get(partition, 0)) for partition, end in log.ends.items())


@contextmanager
def _collector_off_until_ready(freeze: Callable[[], bool]) -> Iterator[None]:
    """The cyclic garbage collector off from the start of the replay until its table is installed,
    then, if ``freeze()`` (a large replay), everything alive frozen out of its scans.

    A replay makes millions of long-lived, acyclic objects (200k routes with their vectors, kept
    until the table holds them): each collection meanwhile only scans them again. Paused per
    batch, the collector caught up between batches with a collection over the whole growing heap
    (3 s of a 200k-route replay); enabled again with all of them young, it would scan them three
    more times after ``ready``, while serving. Frozen (``gc.freeze``), they are never scanned;
    reference counting still frees them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if freeze():
                gc.freeze()
            gc.enable()


def _fills_empty(table: RouteTable, upserts: Sequence[RouteVectors], overlay_max_rows: int) -> bool:
    """Whether ``upserts`` are better installed as a new main index than applied to the overlay:
    the table is empty and they are more vectors than the overlay is meant to hold."""
    snapshot = table.snapshot()
    if len(snapshot) or snapshot.overlay.rows:
        return False
    return sum(int(rv.utterance_vectors.shape[0]) for rv in upserts) > overlay_max_rows


def _covers(version: TableVersion, positions: Mapping[int, int]) -> bool:
    applied = dict(version)
    return all(applied.get(partition, 0) >= offset for partition, offset in positions.items())
