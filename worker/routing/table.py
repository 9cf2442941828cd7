"""The route table: an immutable snapshot (:mod:`worker.routing.snapshot`) swapped by reference.

Searches never take a lock: they read the current snapshot reference once and search it. Mutations
build a new snapshot with a new overlay under a short lock; a background rebuild folds the overlay
into a new main index off to the side and swaps it in, keeping mutations that arrived meanwhile.

The overlay is bounded: a writer calls :meth:`RouteTable.wait_for_room` before applying, and waits
there while the overlay holds ``overlay_max_rows`` vectors, until a rebuild has folded them in. A
background rebuild that fails is retried with back-off; each outcome is reported to ``on_rebuild``
(the replica turns a failure into a metric and into readiness).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from worker.background import lower_this_thread
from worker.routing.builder import build_laid_out, build_main
from worker.routing.errors import DimensionMismatch, FingerprintMismatch
from worker.routing.index import MainIndex
from worker.routing.index_file import Persisted, load_main, place_index, write_manifest
from worker.routing.index_settings import IndexSettings
from worker.routing.native import use_blas_from, use_faiss_threads
from worker.routing.overlay import Overlay
from worker.routing.route_calibration import RouteCalibration
from worker.routing.snapshot import TableSnapshot
from worker.routing.spill import OnFile
from worker.routing.types import RouteVectors, TableVersion

logger = logging.getLogger(__name__)


class _Keep(enum.Enum):
    KEEP = enum.auto()


#: ``RouteTable.apply(calibration=KEEP)``: the calibration in service stays as it is
KEEP = _Keep.KEEP


def _cpus() -> int:
    """The CPUs this process may run on, at most 4 (more were never measured)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, available or 1))


class RouteTable:
    """The live set of routes of one replica, searchable while it changes.

    ``apply`` is fast and synchronous; its result is visible to the next search. ``rebuild``
    folds the overlay into a new main index (in a background thread unless ``block``), then
    persists it into ``index_dir`` if given.
    """

    def __init__(
        self,
        dim: int,
        fingerprint: str,
        settings: IndexSettings | None = None,
        index_dir: Path | None = None,
        *,
        main: MainIndex | None = None,
        version: TableVersion = (),
    ) -> None:
        self.dim = dim
        self.fingerprint = fingerprint
        self.settings = settings or IndexSettings()
        self.index_dir = index_dir
        use_faiss_threads(self.settings.faiss_threads)
        use_blas_from(self.settings.blas_min_queries)
        main = main or MainIndex.empty(dim, self.settings.faiss_threads)
        self._snapshot = TableSnapshot(main, Overlay.empty(main), version)
        self._swap_lock = threading.Lock()  # held only to build and publish a small new snapshot
        self._rebuild_lock = threading.Lock()  # one rebuild at a time
        self._rebuild_scheduled = False
        self._rebuild_thread: threading.Thread | None = None
        self._scratch_dir: Path | None = None
        #: notified whenever a rebuild swapped a new main index in (the overlay got smaller)
        self._room = threading.Condition()
        self._closed = threading.Event()
        #: background rebuild threads alive, and those of them waiting to retry (under ``_room``)
        self._threads = 0
        self._threads_retrying = 0
        #: the error of the last background rebuild, None once one succeeded
        self.last_rebuild_error: BaseException | None = None
        #: background rebuilds that failed since the table was made
        self.rebuild_failures = 0
        #: called with the outcome of every background rebuild: None, or the error it failed with
        #: (from the rebuild thread: keep it quick)
        self.on_rebuild: Callable[[BaseException | None], None] | None = None

    @classmethod
    def from_routes(
        cls,
        routes: Sequence[RouteVectors],
        version: TableVersion,
        dim: int,
        fingerprint: str,
        settings: IndexSettings | None = None,
        index_dir: Path | None = None,
        persisted: Persisted | None = None,
        by_name: Mapping[str, RouteVectors] | None = None,
    ) -> RouteTable:
        """A table holding ``routes`` (e.g. loaded from the store), reusing a persisted index.

        ``persisted`` is ``index_dir``'s manifest if already read (the store load used its
        vectors file); ``by_name``, ``routes`` by name if the caller has them so (a store load
        makes them). Blocking: builds the main index when no persisted one fits (call it from
        a thread).
        """
        settings = settings or IndexSettings()
        _check_all(routes, dim, fingerprint)
        if by_name is None:
            by_name = dict(zip(map(_NAME, routes), routes, strict=True))
        main = load_main(index_dir, by_name, dim, fingerprint, settings, persisted) if index_dir else None
        if main is None:
            table = cls(dim, fingerprint, settings, index_dir, version=version)
            table.apply(routes, (), version, rebuild=False)
            table.rebuild(block=True)
            return table
        table = cls(dim, fingerprint, settings, index_dir, main=main, version=version)
        if len(routes) == len(by_name) == len(main.names) and bool(main.known.all()):
            return table  # the usual restart: every route is in the persisted index, unchanged
        unknown = np.flatnonzero(~main.known).tolist()
        stale = [main.names[slot] for slot in unknown if main.names[slot] not in by_name]
        # identity, not a lookup per route: 200k bisects were a tenth of a restart
        reused = {id(rv) for rv in main.slot_routes if rv is not None}
        table.apply([rv for rv in routes if id(rv) not in reused], stale, version, rebuild=False)
        if table.snapshot().overlay.rows >= settings.overlay_rebuild_rows:
            table.rebuild(block=False)
        return table

    def snapshot(self) -> TableSnapshot:
        """The current consistent state; searching it never blocks and never sees half a mutation."""
        return self._snapshot

    @property
    def version(self) -> TableVersion:
        """The mutation-log position the current state reflects."""
        return self._snapshot.version

    def digest(self) -> str:
        """Deterministic sha256 of the live routes (see :attr:`TableSnapshot.digest`)."""
        return self._snapshot.digest

    def route_names(self) -> list[str]:
        """Sorted names of the live routes."""
        return self._snapshot.route_names()

    def __len__(self) -> int:
        return len(self._snapshot)

    def apply(
        self,
        upserts: Sequence[RouteVectors],
        deletes: Sequence[str],
        version: TableVersion,
        *,
        rebuild: bool = True,
        calibration: RouteCalibration | _Keep | None = KEEP,
    ) -> None:
        """Add or replace ``upserts`` and remove ``deletes``; visible to the next search on return.

        ``version`` is the mutation-log position after this batch. Deleting an unknown route is a
        no-op (replays see tombstones of routes they never had). ``calibration`` (if not ``KEEP``)
        goes into service in the same snapshot as the routes. Triggers a background rebuild when
        the overlay outgrows ``settings.overlay_rebuild_rows`` unless ``rebuild`` is False.
        """
        for rv in upserts:
            _check(rv, self.dim, self.fingerprint)
        with self._swap_lock:
            current = self._snapshot
            overlay = current.overlay.with_mutations(current.main, upserts, deletes)
            served = current.calibration if calibration is KEEP else calibration
            assert not isinstance(served, _Keep)
            self._snapshot = TableSnapshot(current.main, overlay, version, served)
        if rebuild and overlay.rows >= self.settings.overlay_rebuild_rows:
            self.rebuild(block=False)

    def install(
        self,
        routes: Sequence[RouteVectors],
        version: TableVersion,
        *,
        calibration: RouteCalibration | _Keep | None = KEEP,
        on_file: OnFile | None = None,
    ) -> None:
        """Fill an EMPTY table with ``routes``: the main index is built over them at once, in the
        calling thread (blocking, at its priority, never idle), and persisted into ``index_dir``.
        ``on_file`` says where their vectors already are (see :func:`~worker.routing.builder.build_main`).

        For a replica that replayed its whole log before serving: through :meth:`apply` every
        vector would be copied into the overlay (1.5 GB at 1M vectors, beside the routes' own
        copy) and searched by brute force until a background rebuild had folded it in.
        """
        if len(self._snapshot) or self._snapshot.overlay.rows:
            raise ValueError("RouteTable.install fills an empty table; use apply")
        for rv in routes:
            _check(rv, self.dim, self.fingerprint)
        with self._rebuild_lock:
            base = self._snapshot
            started = time.perf_counter()
            rows = sum(rv.utterance_vectors.shape[0] for rv in routes)
            approximate = self.settings.kind_for(rows) != "flat"
            directory = self.index_dir or (self._scratch() if approximate else None)
            # nothing is served yet: the build may have every CPU, at once
            settings = dataclasses.replace(self.settings, build_idle_s=None, add_threads=_cpus())
            main = build_main(routes, self.dim, settings, directory, on_file)
            if directory is not None:
                main = place_index(main, directory, keep=base.main.path)
            with self._swap_lock:
                current = self._snapshot
                if current is not base:
                    raise RuntimeError("the table changed while RouteTable.install was building")
                served = current.calibration if calibration is KEEP else calibration
                assert not isinstance(served, _Keep)
                self._snapshot = TableSnapshot(main, Overlay.empty(main), version, served)
            with self._room:
                self._room.notify_all()
            logger.info(
                "installed %s route index: %d routes, %d vectors in %.2fs",
                main.kind,
                len(main.names),
                main.rows,
                time.perf_counter() - started,
            )
            if self.index_dir is not None and main.index is not None:
                write_manifest(main, self.index_dir, self.fingerprint)

    def rebuild(self, block: bool = False) -> None:
        """Fold the overlay into a new main index and swap it in.

        With ``block`` the caller's thread does the work and every mutation applied before the call
        is in the main index on return; otherwise a background thread is started (at most one
        pending), whose errors are logged and kept in :attr:`last_rebuild_error`.
        """
        if block:
            with self._rebuild_lock:
                self._rebuild_once()
            return
        with self._swap_lock:
            if self._rebuild_scheduled:
                return
            self._rebuild_scheduled = True
        self._count_threads(1, 0)
        self._rebuild_thread = threading.Thread(
            target=self._rebuild_in_background, name="route-rebuild", daemon=True
        )
        self._rebuild_thread.start()

    def wait_for_rebuild(self, timeout: float | None = None) -> None:
        """Wait until the background rebuild started last (if any) has succeeded, or has failed
        (it is then retried later: see :attr:`last_rebuild_error`)."""
        with self._room:
            self._room.wait_for(lambda: self._threads == self._threads_retrying, timeout)

    def has_room(self) -> bool:
        """Whether the overlay is below ``settings.overlay_max_rows``."""
        return self._snapshot.overlay.rows < self.settings.overlay_max_rows

    def wait_for_room(self, cancelled: threading.Event | None = None) -> bool:
        """Block the calling thread while the overlay is full (a rebuild is started if none is).

        For the writer of mutations, never for a search: the writer falls behind the log instead of
        the overlay growing without bound. Returns whether there is room (False: ``cancelled`` was
        set, or the table closed, while waiting).
        """
        if self.has_room():
            return True
        self.rebuild(block=False)
        with self._room:
            while not self.has_room():
                if self._closed.is_set() or (cancelled is not None and cancelled.is_set()):
                    return False
                # woken by every swap; the timeout only re-checks ``cancelled``
                self._room.wait(timeout=0.2)
        return True

    def close(self) -> None:
        """Stop retrying failed rebuilds and release writers waiting for room (the table still serves)."""
        self._closed.set()
        with self._room:
            self._room.notify_all()

    def _rebuild_in_background(self) -> None:
        # This thread's share of the work (gathering the routes, writing changed vectors, persisting)
        # runs at low priority; the build process it starts inherits that and starts in the idle
        # class (see IndexSettings.build_idle_s).
        lower_this_thread(self.settings.build_niceness)
        try:
            self._rebuild_until_done()
        finally:
            self._count_threads(-1, 0)

    def _rebuild_until_done(self) -> None:
        delay = self.settings.rebuild_retry_s
        while True:
            with self._rebuild_lock:
                with self._swap_lock:
                    self._rebuild_scheduled = False
                failed = self._background_attempt(delay)
            if failed is None or self._closed.is_set():
                return
            with self._swap_lock:
                if self._rebuild_scheduled:
                    return  # a rebuild asked for since this attempt began will run: it is the retry
                self._rebuild_scheduled = True  # this thread retries: nobody else needs to start one
            self._count_threads(0, 1)
            try:
                if self._closed.wait(delay):
                    return
            finally:
                self._count_threads(0, -1)
            delay = min(delay * 2, self.settings.rebuild_retry_max_s)

    def _count_threads(self, alive: int, retrying: int) -> None:
        with self._room:
            self._threads += alive
            self._threads_retrying += retrying
            self._room.notify_all()

    def _background_attempt(self, retry_in_s: float) -> BaseException | None:
        """One background rebuild; its error (reported and kept), or None."""
        try:
            self._rebuild_once()
        except Exception as error:  # the table keeps serving from its overlay; the rebuild is retried
            self.last_rebuild_error = error
            self.rebuild_failures += 1
            logger.exception(
                "route index rebuild failed (%d so far); the table serves from its overlay of %d "
                "vectors, retrying in %.0f s",
                self.rebuild_failures,
                self._snapshot.overlay.rows,
                retry_in_s,
            )
            self._report(error)
            return error
        if self.last_rebuild_error is not None:
            logger.info("route index rebuild succeeded after %d failures", self.rebuild_failures)
        self.last_rebuild_error = None
        self._report(None)
        return None

    def _report(self, error: BaseException | None) -> None:
        callback = self.on_rebuild
        if callback is None:
            return
        try:
            callback(error)
        except Exception:  # a reporting failure must not end the retries
            logger.exception("on_rebuild callback failed")

    def _scratch(self) -> Path:
        """Where a table without ``index_dir`` keeps its mapped index files (removed with it)."""
        if self._scratch_dir is None:
            self._scratch_dir = Path(tempfile.mkdtemp(prefix="routeworker-index-"))
            weakref.finalize(self, shutil.rmtree, self._scratch_dir, True)
        return self._scratch_dir

    def _rebuild_once(self) -> None:
        started = time.perf_counter()
        base = self._snapshot
        if base.overlay.rows == 0 and not base.overlay.routes and not base.overlay.masked.any():
            return
        live_rows = base.main.rows - int(base.main.counts[base.overlay.masked].sum()) + base.overlay.rows
        approximate = self.settings.kind_for(live_rows) != "flat"
        directory = self.index_dir or (self._scratch() if approximate else None)
        main = build_laid_out(base.fold_plan(), self.dim, self.settings, directory)
        if directory is not None:
            main = place_index(main, directory, keep=base.main.path)
        with self._swap_lock:
            current = self._snapshot
            # Only this thread replaces main, so current.main is base.main and every route changed
            # since `base` is in current.overlay: keep those changes on top of the new main.
            # (by digest, not identity: the new main's routes are views of its vectors file)
            kept = [rv for name, rv in current.overlay.routes.items() if not _same(main.route(name), rv)]
            gone = [name for name in current.overlay.deleted if main.slot(name) is not None]
            overlay = Overlay.empty(main).with_mutations(main, kept, gone)
            self._snapshot = TableSnapshot(main, overlay, current.version, current.calibration)
        with self._room:
            self._room.notify_all()
        logger.info(
            "rebuilt %s route index: %d routes, %d vectors in %.2fs (%d routes still in overlay)",
            main.kind,
            len(main.names),
            main.rows,
            time.perf_counter() - started,
            len(kept),
        )
        if self.index_dir is not None and main.index is not None:
            write_manifest(main, self.index_dir, self.fingerprint)


_NAME: Callable[[RouteVectors], str] = attrgetter("route.name")
_FINGERPRINT: Callable[[RouteVectors], str] = attrgetter("fingerprint")
_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")


def _same(held: RouteVectors | None, rv: RouteVectors) -> bool:
    """Whether ``held`` is ``rv``, or made of the same definition, model and vectors."""
    return held is not None and (held is rv or held.digest == rv.digest)


def _check_all(routes: Sequence[RouteVectors], dim: int, fingerprint: str) -> None:
    """:func:`_check` of every route, gathered in C first (a restart checks 200k routes)."""
    widths = {vectors.shape[1] for vectors in map(_VECTORS, routes)}
    if set(map(_FINGERPRINT, routes)) <= {fingerprint} and widths <= {dim}:
        return
    for rv in routes:
        _check(rv, dim, fingerprint)


def _check(rv: RouteVectors, dim: int, fingerprint: str) -> None:
    if rv.fingerprint != fingerprint:
        raise FingerprintMismatch(
            f"route {rv.name!r} was embedded with {rv.fingerprint!r}, this table serves {fingerprint!r}"
        )
    if rv.dim != dim:
        raise DimensionMismatch(f"route {rv.name!r} has vectors of dimension {rv.dim}, table has {dim}")
