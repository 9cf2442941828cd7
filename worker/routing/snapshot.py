"""One consistent state of the route table: main index, overlay, version and the calibration in service.

Immutable: a search reads the current snapshot once and searches it, never taking a lock, and
never sees half of a mutation. :class:`worker.routing.table.RouteTable` swaps snapshots.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import attrgetter
from typing import cast

import numpy as np

from worker.routing.build_layout import Carried, Layout, take
from worker.routing.errors import DimensionMismatch
from worker.routing.index import MainIndex, table_digest
from worker.routing.native import in_slices, use_faiss_threads
from worker.routing.overlay import Overlay
from worker.routing.route_calibration import RouteCalibration
from worker.routing.types import Int64s, RouteVectors, TableVersion, Vectors


@dataclass(frozen=True)
class Hits:
    """Nearest utterances per query, best first: similarities and route ids (``-1`` pads)."""

    similarities: Vectors
    route_ids: Int64s


@dataclass(frozen=True, eq=False)
class TableSnapshot:
    """One consistent state of the route table. Route id ``i < len(main.names)`` is a main slot,
    larger ids are overlay slots (``i - len(main.names)``).

    ``calibration`` is the head and thresholds in service at ``version``: it is swapped with the
    routes in one step, so a decision never mixes one log position's routes with another's
    calibration.
    """

    main: MainIndex
    overlay: Overlay
    version: TableVersion
    calibration: RouteCalibration | None = None

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
