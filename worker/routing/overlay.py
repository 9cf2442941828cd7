"""The write-ahead overlay: routes changed since the main index was built, searched by brute force.

An overlay is immutable; a mutation makes a new one (copy-on-write of its small arrays), so a
search that holds an overlay never sees half of a mutation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from worker.routing.errors import InvalidRoute
from worker.routing.index import MainIndex
from worker.routing.native import faiss
from worker.routing.types import Bools, Int64s, RouteVectors, Vectors

_Array = TypeVar("_Array", bound=np.ndarray[Any, Any])


def _frozen(array: _Array) -> _Array:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Overlay:
    """Routes upserted or deleted since ``main`` was built, and the main slots they hide.

    ``routes`` maps each upserted route to its vectors; overlay slot ``j`` is ``names[j]`` and
    ``vectors`` holds its utterance rows (``row_slot`` maps rows to slots). ``deleted`` are route
    names deleted since the main index was built; ``masked[slot]`` is True for every main slot whose
    route was replaced or deleted (or whose vectors are unknown).
    """

    routes: Mapping[str, RouteVectors]
    deleted: frozenset[str]
    names: tuple[str, ...]
    counts: Int64s
    vectors: Vectors
    row_slot: Int64s
    masked: Bools

    @property
    def rows(self) -> int:
        """Number of utterance vectors in the overlay."""
        return int(self.row_slot.shape[0])

    @classmethod
    def empty(cls, main: MainIndex) -> Overlay:
        """No mutations on top of ``main`` (slots without known vectors stay masked)."""
        masked = ~main.known
        return cls(
            routes={},
            deleted=frozenset(),
            names=(),
            counts=_frozen(np.zeros(0, dtype=np.int64)),
            vectors=_frozen(np.zeros((0, main.dim), dtype=np.float32)),
            row_slot=_frozen(np.zeros(0, dtype=np.int64)),
            masked=_frozen(masked),
        )

    def with_mutations(
        self, main: MainIndex, upserts: Sequence[RouteVectors], deletes: Sequence[str]
    ) -> Overlay:
        """A new overlay with ``upserts`` added or replaced and ``deletes`` removed."""
        upserted = {rv.name for rv in upserts}
        removed = frozenset(deletes)
        both = upserted & removed
        if both:
            raise InvalidRoute(f"routes both upserted and deleted in one batch: {sorted(both)}")
        if len(upserted) != len(upserts):
            raise InvalidRoute("a route is upserted twice in one batch")
        routes = {
            name: rv for name, rv in self.routes.items() if name not in upserted and name not in removed
        }
        routes.update((rv.name, rv) for rv in upserts)
        deleted = (self.deleted - upserted) | removed
        names = tuple(routes)
        counts = np.fromiter(
            (routes[n].utterance_vectors.shape[0] for n in names), dtype=np.int64, count=len(names)
        )
        unchanged = [n for n in self.names if n in routes and routes[n] is self.routes[n]]
        if len(unchanged) == len(self.names) and not removed:
            # Pure additions: keep the existing rows and append, instead of re-concatenating.
            vectors = np.concatenate([self.vectors, *(rv.utterance_vectors for rv in upserts)], axis=0)
        else:
            vectors = np.concatenate(
                [self.vectors[:0], *(routes[n].utterance_vectors for n in names)], axis=0
            )
        masked = self.masked.copy()
        for name in upserted | removed:
            slot = main.slot(name)
            if slot is not None:
                masked[slot] = True
        return Overlay(
            routes=routes,
            deleted=deleted,
            names=names,
            counts=_frozen(counts),
            vectors=_frozen(vectors),
            row_slot=_frozen(np.repeat(np.arange(len(names), dtype=np.int64), counts)),
            masked=_frozen(masked),
        )

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Int64s]:
        """Exact top-``k`` overlay rows per query: ``(similarities, overlay slots)``, padded."""
        n = queries.shape[0]
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        slots = np.full((n, k), -1, dtype=np.int64)
        if self.rows == 0 or n == 0 or k <= 0:
            return sims, slots
        # faiss rather than numpy's matmul: numpy's OpenBLAS threads spin after each product and
        # took the CPU from searches; faiss runs in the caller's thread (one OpenMP thread).
        width = min(k, self.rows)
        found_sims, rows = faiss.knn(queries, self.vectors, width, metric=faiss.METRIC_INNER_PRODUCT)
        sims[:, :width] = found_sims
        slots[:, :width] = np.where(rows >= 0, self.row_slot[np.maximum(rows, 0)], -1)
        return sims, slots
