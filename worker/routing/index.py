"""The main route index: utterance vectors of many routes in one Faiss index, built off to the side.

Rows are laid out route by route in name order, so the same routes always give the same index.
Exact inner-product search (``IndexFlatIP``) by default; HNSW above a size threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from worker.routing.types import RouteVectors, Vectors

IndexKind = Literal["flat", "hnsw"]
Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

# faiss ships partial type stubs that vary between releases: use it untyped.
faiss: Any = _faiss


@dataclass(frozen=True)
class IndexSettings:
    """How the main index is built and when the overlay is folded into it."""

    #: above this many utterance vectors the main index is HNSW (approximate) instead of exact.
    #: Exact search of 32 queries over 50k vectors took 0.35-1.6x the time of embedding them
    #: (benchmarks/engine.py, loaded 2-vCPU machine), so larger tables go approximate.
    approximate_above: int = 32_768
    hnsw_m: int = 32
    ef_construction: int = 80
    #: measured recall@10 >= 0.99 vs exact on clustered 384-d data (benchmarks/engine.py)
    ef_search: int = 128
    #: the overlay is folded into the main index in the background once it holds this many vectors
    overlay_rebuild_rows: int = 2_048
    #: OpenMP threads of faiss, PROCESS-WIDE (applied when a RouteTable is made); None keeps faiss's.
    #: 1 because searches already run in parallel threads and OpenMP spin-waits collapse when cores
    #: are busy: a 32-query search over 1k vectors took 1.0 ms (1 thread) vs 40 ms (2 threads,
    #: median) on a loaded 2-vCPU machine. Single-threaded HNSW builds are also deterministic.
    faiss_threads: int | None = 1

    def kind_for(self, rows: int) -> IndexKind:
        """The index kind used for ``rows`` vectors."""
        return "hnsw" if rows > self.approximate_above else "flat"


def table_digest(route_digests: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(name, route digest)`` pairs: equal route sets give equal digests."""
    sha = hashlib.sha256()
    for name, digest in sorted(route_digests):
        encoded = name.encode()
        sha.update(len(encoded).to_bytes(8, "little"))
        sha.update(encoded)
        sha.update(bytes.fromhex(digest))
    return sha.hexdigest()


@dataclass(frozen=True, eq=False)
class MainIndex:
    """An immutable Faiss index over the utterances of routes, with row -> route slot bookkeeping.

    ``names[slot]``/``digests[slot]`` describe each slot; ``routes`` holds the vectors of the slots
    whose route is known (a slot loaded from disk whose route has since changed has none: the
    table masks it). ``row_slot[row]`` maps a Faiss row to its slot.
    """

    dim: int
    kind: IndexKind
    index: Any  # a faiss.Index, or None when there are no rows
    names: tuple[str, ...]
    digests: tuple[str, ...]
    counts: Int64s
    row_slot: Int64s
    slot_of: Mapping[str, int]
    routes: Mapping[str, RouteVectors]
    ef_search: int

    @property
    def rows(self) -> int:
        """Number of vectors in the index."""
        return int(self.row_slot.shape[0])

    @property
    def digest(self) -> str:
        """Digest of the routes this index was built from (tags the persisted file)."""
        return table_digest(zip(self.names, self.digests, strict=True))

    @classmethod
    def assemble(
        cls,
        dim: int,
        kind: IndexKind,
        index: Any,
        slots: Sequence[tuple[str, str, int]],
        routes: Mapping[str, RouteVectors],
        ef_search: int,
    ) -> MainIndex:
        """Wrap a built or loaded Faiss index whose rows follow ``slots`` (name, digest, rows)."""
        counts = np.fromiter((rows for _, _, rows in slots), dtype=np.int64, count=len(slots))
        counts.flags.writeable = False
        row_slot = np.repeat(np.arange(len(slots), dtype=np.int64), counts)
        row_slot.flags.writeable = False
        return cls(
            dim=dim,
            kind=kind,
            index=index,
            names=tuple(name for name, _, _ in slots),
            digests=tuple(digest for _, digest, _ in slots),
            counts=counts,
            row_slot=row_slot,
            slot_of={name: slot for slot, (name, _, _) in enumerate(slots)},
            routes=routes,
            ef_search=ef_search,
        )

    @classmethod
    def empty(cls, dim: int) -> MainIndex:
        """An index without routes."""
        return cls.assemble(dim, "flat", None, (), {}, 0)

    def search(self, queries: Vectors, k: int, masked: Bools) -> tuple[Vectors, Int64s]:
        """Top-``k`` unmasked rows per query: ``(similarities, slots)``, padded with ``-inf`` / ``-1``.

        Masked slots (replaced or deleted routes) are filtered out after the search, so it fetches
        more than ``k`` rows and widens the search until every query has ``k`` live rows.
        """
        n = queries.shape[0]
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        slots = np.full((n, k), -1, dtype=np.int64)
        masked_rows = int(self.counts[masked].sum()) if self.counts.size else 0
        live_rows = self.rows - masked_rows
        if self.index is None or live_rows <= 0 or n == 0 or k <= 0:
            return sims, slots
        wanted = min(k, live_rows)
        fetch = min(self.rows, k + min(masked_rows, 4 * k))
        while True:
            found_sims, rows = self._search(queries, fetch)
            found_slots = np.where(rows >= 0, self.row_slot[np.maximum(rows, 0)], -1)
            live = (found_slots >= 0) & ~masked[np.maximum(found_slots, 0)]
            if fetch >= self.rows or bool((live.sum(axis=1) >= wanted).all()):
                break
            fetch = min(self.rows, fetch * 2)
        # Faiss returns rows best first; a stable sort on "not live" keeps that order.
        order = np.argsort(~live, axis=1, kind="stable")[:, :k]
        taken = np.take_along_axis(live, order, axis=1)
        width = order.shape[1]
        sims[:, :width] = np.where(taken, np.take_along_axis(found_sims, order, axis=1), -np.inf)
        slots[:, :width] = np.where(taken, np.take_along_axis(found_slots, order, axis=1), -1)
        return sims, slots

    def _search(self, queries: Vectors, fetch: int) -> tuple[Vectors, Int64s]:
        if self.kind == "hnsw":
            # Per-call parameters: setting index.hnsw.efSearch would race with concurrent searches.
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))
            distances, rows = self.index.search(queries, fetch, params=params)
        else:
            distances, rows = self.index.search(queries, fetch)
        return distances, rows


def build_main(routes: Iterable[RouteVectors], dim: int, settings: IndexSettings) -> MainIndex:
    """Build a main index over ``routes`` (any order; rows are laid out in name order)."""
    ordered = sorted(routes, key=lambda rv: rv.name)
    if not ordered:
        return MainIndex.empty(dim)
    slots = [(rv.name, rv.digest, rv.utterance_vectors.shape[0]) for rv in ordered]
    rows = sum(count for _, _, count in slots)
    kind = settings.kind_for(rows)
    index = None
    if rows:
        matrix = np.concatenate([rv.utterance_vectors for rv in ordered], axis=0)
        index = _new_index(kind, dim, settings)
        index.add(matrix)
    return MainIndex.assemble(dim, kind, index, slots, {rv.name: rv for rv in ordered}, settings.ef_search)


def _new_index(kind: IndexKind, dim: int, settings: IndexSettings) -> Any:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    index.hnsw.efSearch = settings.ef_search
    return index
