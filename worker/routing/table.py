"""The route table: an immutable snapshot (main index + overlay + version) swapped by reference.

Searches never take a lock: they read the current snapshot reference once and search it. Mutations
build a new snapshot with a new overlay under a short lock; a background rebuild folds the overlay
into a new main index off to the side and swaps it in, keeping mutations that arrived meanwhile.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import cast

import numpy as np

from worker.background import lower_this_thread
from worker.routing.builder import Carried, Layout, build_laid_out, take
from worker.routing.errors import DimensionMismatch, FingerprintMismatch
from worker.routing.index import (
    IndexSettings,
    Int64s,
    MainIndex,
    in_slices,
    table_digest,
    use_blas_from,
    use_faiss_threads,
)
from worker.routing.index_file import load_main, place_index, write_manifest
from worker.routing.overlay import Overlay
from worker.routing.types import RouteVectors, TableVersion, Vectors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hits:
    """Nearest utterances per query, best first: similarities and route ids (``-1`` pads)."""

    similarities: Vectors
    route_ids: Int64s


@dataclass(frozen=True, eq=False)
class TableSnapshot:
    """One consistent state of the route table. Route id ``i < len(main.names)`` is a main slot,
    larger ids are overlay slots (``i - len(main.names)``)."""

    main: MainIndex
    overlay: Overlay
    version: TableVersion

    def search(self, queries: Vectors, k: int) -> Hits:
        """The ``k`` nearest utterances of each query among all live routes."""
        use_faiss_threads(self.main.threads)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.main.dim:
            raise DimensionMismatch(f"queries of shape {queries.shape}, table dimension {self.main.dim}")
        main_sims, main_slots = self.main.search(queries, k, self.overlay.masked)
        if self.overlay.rows == 0:
            return Hits(main_sims, main_slots)
        overlay_sims, overlay_slots = self.overlay.search(queries, k)
        overlay_ids = np.where(overlay_slots >= 0, overlay_slots + len(self.main.names), -1)
        sims = np.concatenate([main_sims, overlay_sims], axis=1)
        ids = np.concatenate([main_slots, overlay_ids], axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return Hits(np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1))

    def route_at(self, route_id: int) -> RouteVectors:
        """The route behind a route id returned by :meth:`search`."""
        return self._by_route_id[route_id]

    @cached_property
    def _by_route_id(self) -> tuple[RouteVectors, ...]:
        # One tuple for every route id: the scorer looks up hundreds of ids per batch. Unknown main
        # slots hold None, but they are masked, so a search never returns their ids.
        overlay = tuple(self.overlay.routes[name] for name in self.overlay.names)
        return cast(tuple[RouteVectors, ...], self.main.slot_routes) + overlay

    @cached_property
    def utterance_counts(self) -> Int64s:
        """Utterances per route id."""
        return np.concatenate([self.main.counts, self.overlay.counts])

    def route(self, name: str) -> RouteVectors | None:
        """The live route called ``name``, if any."""
        if name in self.overlay.routes:
            return self.overlay.routes[name]
        slot = self.main.slot(name)
        if slot is None or self.overlay.masked[slot]:
            return None
        return self.main.slot_routes[slot]

    def routes(self) -> Iterator[RouteVectors]:
        """Every live route (main routes in name order, then overlay routes)."""
        yield from self._live_main_routes()
        yield from self.overlay.routes.values()

    def ordered_routes(self) -> list[RouteVectors]:
        """Every live route in name order (gathered in slices: cheap on the GIL)."""
        return list(self.fold_plan().routes)

    def fold_plan(self) -> Layout:
        """What a rebuild folds together: every live route in name order, with its name, digest and
        row count, and for each the main slot whose rows it keeps (-1 for an overlay route).

        Gathered from the main index's tuples in C (no Python work per route): this runs beside
        the searches, and a Python loop over 50k routes held them up for tens of milliseconds.
        """
        main, overlay = self.main, self.overlay
        live = np.flatnonzero(~overlay.masked)
        extra = sorted(overlay.routes.values(), key=attrgetter("route.name"))
        extra_names = tuple(rv.name for rv in extra)
        # An overlay route goes before the first live slot named after it.
        at = np.fromiter(
            (bisect.bisect_left(main.names, name) for name in extra_names), dtype=np.int64, count=len(extra)
        )
        from_main = np.ones(len(live) + len(extra), dtype=np.bool_)
        from_main[np.searchsorted(live, at) + np.arange(len(extra))] = False
        pick = np.empty(from_main.shape[0], dtype=np.int64)
        pick[from_main] = live
        pick[~from_main] = len(main.names) + np.arange(len(extra))
        extra_counts = np.fromiter((rv.utterance_vectors.shape[0] for rv in extra), np.int64, len(extra))
        return Layout(
            routes=take(cast(tuple[RouteVectors, ...], main.slot_routes) + tuple(extra), pick),
            names=take(main.names + extra_names, pick),
            digests=take(main.digests + tuple(rv.digest for rv in extra), pick),
            counts=np.concatenate([main.counts, extra_counts])[pick],
            carried=Carried(main, np.where(from_main, pick, -1)),
        )

    def _live_main_routes(self) -> list[RouteVectors]:
        # Masked slots include every slot whose route is unknown, so the rest are all RouteVectors.
        slot_routes = cast(tuple[RouteVectors, ...], self.main.slot_routes)
        if not self.overlay.masked.any():
            return list(slot_routes)
        live = np.flatnonzero(~self.overlay.masked).tolist()
        return list(chain.from_iterable(map(slot_routes.__getitem__, part) for part in in_slices(live)))

    def route_names(self) -> list[str]:
        """Sorted names of the live routes."""
        return sorted(rv.name for rv in self.routes())

    def __len__(self) -> int:
        return len(self.main.names) - int(self.overlay.masked.sum()) + len(self.overlay.routes)

    @cached_property
    def digest(self) -> str:
        """sha256 over the sorted live routes' definitions and vectors (equal tables, equal digest)."""
        return table_digest((rv.name, rv.digest) for rv in self.routes())


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
        self.last_rebuild_error: BaseException | None = None

    @classmethod
    def from_routes(
        cls,
        routes: Sequence[RouteVectors],
        version: TableVersion,
        dim: int,
        fingerprint: str,
        settings: IndexSettings | None = None,
        index_dir: Path | None = None,
    ) -> RouteTable:
        """A table holding ``routes`` (e.g. loaded from the store), reusing a persisted index.

        Blocking: builds the main index when no persisted one fits (call it from a thread).
        """
        settings = settings or IndexSettings()
        for rv in routes:
            _check(rv, dim, fingerprint)
        by_name = {rv.name: rv for rv in routes}
        main = load_main(index_dir, by_name, dim, fingerprint, settings) if index_dir else None
        if main is None:
            table = cls(dim, fingerprint, settings, index_dir, version=version)
            table.apply(routes, (), version, rebuild=False)
            table.rebuild(block=True)
            return table
        table = cls(dim, fingerprint, settings, index_dir, main=main, version=version)
        unknown = np.flatnonzero(~main.known).tolist()
        stale = [main.names[slot] for slot in unknown if main.names[slot] not in by_name]
        table.apply([rv for rv in routes if main.route(rv.name) is not rv], stale, version, rebuild=False)
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
    ) -> None:
        """Add or replace ``upserts`` and remove ``deletes``; visible to the next search on return.

        ``version`` is the mutation-log position after this batch. Deleting an unknown route is a
        no-op (replays see tombstones of routes they never had). Triggers a background rebuild when
        the overlay outgrows ``settings.overlay_rebuild_rows`` unless ``rebuild`` is False.
        """
        for rv in upserts:
            _check(rv, self.dim, self.fingerprint)
        with self._swap_lock:
            current = self._snapshot
            overlay = current.overlay.with_mutations(current.main, upserts, deletes)
            self._snapshot = TableSnapshot(current.main, overlay, version)
        if rebuild and overlay.rows >= self.settings.overlay_rebuild_rows:
            self.rebuild(block=False)

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
        self._rebuild_thread = threading.Thread(
            target=self._rebuild_in_background, name="route-rebuild", daemon=True
        )
        self._rebuild_thread.start()

    def wait_for_rebuild(self, timeout: float | None = None) -> None:
        """Wait until the background rebuild started last (if any) has finished."""
        thread = self._rebuild_thread
        if thread is not None:
            thread.join(timeout)

    def _rebuild_in_background(self) -> None:
        # This thread's share of the work (gathering the routes, writing changed vectors, persisting)
        # runs at low priority; the build process it starts inherits that and starts in the idle
        # class (see IndexSettings.build_idle_s).
        lower_this_thread(self.settings.build_niceness)
        with self._rebuild_lock:
            with self._swap_lock:
                self._rebuild_scheduled = False
            try:
                self._rebuild_once()
            except Exception as error:  # a failed rebuild leaves the table serving from its overlay
                self.last_rebuild_error = error
                logger.exception("route index rebuild failed")

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
            kept = [rv for name, rv in current.overlay.routes.items() if main.route(name) is not rv]
            gone = [name for name in current.overlay.deleted if main.slot(name) is not None]
            overlay = Overlay.empty(main).with_mutations(main, kept, gone)
            self._snapshot = TableSnapshot(main, overlay, current.version)
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


def _check(rv: RouteVectors, dim: int, fingerprint: str) -> None:
    if rv.fingerprint != fingerprint:
        raise FingerprintMismatch(
            f"route {rv.name!r} was embedded with {rv.fingerprint!r}, this table serves {fingerprint!r}"
        )
    if rv.dim != dim:
        raise DimensionMismatch(f"route {rv.name!r} has vectors of dimension {rv.dim}, table has {dim}")
