"""The main route index: utterance vectors of many routes in one Faiss index, built off to the side.

Rows are laid out route by route in name order, so the same routes always give the same index.
Exact inner-product search (``IndexFlatIP``) by default; an inverted-file index (IVF) above a size
threshold (:mod:`worker.routing.index_settings`). An IVF index whose lists hold codes (float16, or
4-bit PQ codes whose candidates 8-bit codes of every row rank first) finds a shortlist, re-scored
exactly from the routes' own float32 vectors: the similarities it returns are those of exact
search. Building is in :mod:`worker.routing.builder`, persisting and loading in
:mod:`worker.routing.index_file`.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from worker.routing.index_settings import IndexKind
from worker.routing.native import faiss, use_faiss_threads
from worker.routing.types import Bools, Int64s, RouteVectors, Vectors
from worker.routing.vectors_file import RowReader


def table_digest(route_digests: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(name, route digest)`` pairs: equal route sets give equal digests."""
    sha = hashlib.sha256()
    for name, digest in sorted(route_digests):
        encoded = name.encode()
        sha.update(len(encoded).to_bytes(8, "little"))
        sha.update(encoded)
        sha.update(bytes.fromhex(digest))
    return sha.hexdigest()


#: an approximate-code search fetches this many rows per wanted row (at least ``k + _SHORTLIST_MIN``)
#: and keeps the best ``k`` by exact similarity: float16 similarities are off by about 1e-3, so the
#: shortlist must hold every row that close to the k-th (a "pq4" index's 8-bit ranking lost no
#: more of the top 32 with it than float16 ranking did: benchmarks/results/ivf_codes_k32.json)
_SHORTLIST_FACTOR = 2
_SHORTLIST_MIN = 16


#: a "pq4" index (4-bit PQ lists, 8-bit codes of every row) ranks this many PQ candidates per
#: shortlisted row by their 8-bit codes, and at least ``_PQ_MIN_CANDIDATES`` per query: PQ codes
#: of 2 dimensions are too coarse to shortlist from (at 1M vectors, 16 of 512 lists, recall@32 of
#: the exactly re-scored answer was 0.975 from 4 x 64 candidates, 0.988 from 8 x 64)
_PQ_CANDIDATES = 8
_PQ_MIN_CANDIDATES = 256


def shortlist_size(k: int, rows: int) -> int:
    """Rows an approximate-code search fetches to keep the best ``k`` by exact similarity."""
    return max(k, min(max(k * _SHORTLIST_FACTOR, k + _SHORTLIST_MIN), rows))


def pq_candidates(wanted: int) -> float:
    """PQ candidates per shortlisted row of a "pq4" index (faiss's refine ``k_factor``)."""
    return float(max(_PQ_CANDIDATES, -(-_PQ_MIN_CANDIDATES // max(wanted, 1))))


def holds_raw_vectors(index: Any) -> bool:
    """Whether an IVF index's lists hold the float32 vectors themselves (not lossy codes)."""
    return int(faiss.extract_index_ivf(index).code_size) == 4 * int(index.d)


def codes_label(index: Any) -> str:
    """What an IVF index's lists hold: "float32", "float16", or "pq4xM" (M 4-bit PQ codes a row,
    re-ranked by 8-bit codes); as :meth:`IndexSettings.codes_label` names them."""
    if holds_raw_vectors(index):
        return "float32"
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFPQFastScan):
        return f"pq4x{int(ivf.pq.M)}"
    return "float16"


def shortlist(index: Any, queries: Vectors, wanted: int, probes: int) -> tuple[Vectors, Int64s]:
    """An IVF index's best ``wanted`` rows per query scanning ``probes`` lists, by its codes'
    similarities: float16 codes, or a "pq4" index's 8-bit codes (they rank its PQ candidates)."""
    # Per-call parameters: setting index.nprobe would race with concurrent searches. At most every
    # list: faiss 1.15's fast-scan lists answered every query alike when asked to scan more.
    lists = faiss.SearchParametersIVF(nprobe=min(probes, int(faiss.extract_index_ivf(index).nlist)))
    if isinstance(index, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters(k_factor=pq_candidates(wanted), base_index_params=lists)
        distances, rows = index.search(queries, wanted, params=params)
    else:
        distances, rows = index.search(queries, wanted, params=lists)
    return distances, rows


def map_index(path: Path) -> Any:
    """Read an index file, mapping its vectors into memory instead of copying them."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)


@dataclass(frozen=True, eq=False)
class MainIndex:
    """An immutable Faiss index over the utterances of routes, with row -> route slot bookkeeping.

    Slots are in name order: ``names[slot]``/``digests[slot]``/``counts[slot]`` describe each one,
    ``row_slot[row]`` maps a Faiss row to its slot. ``slot_routes[slot]`` holds the route's vectors
    when known (``known[slot]``); a slot loaded from disk whose route has since changed has none
    and the table masks it. ``path`` is the file the index is mapped from, if any;
    ``vectors_path`` the vectors file its known routes' utterance vectors are views of, if any
    (:mod:`worker.routing.vectors_file`).
    """

    dim: int
    kind: IndexKind
    index: Any  # a faiss.Index, or None when there are no rows
    names: tuple[str, ...]
    digests: tuple[str, ...]
    counts: Int64s
    row_slot: Int64s
    slot_routes: tuple[RouteVectors | None, ...]
    known: Bools
    probe_lists: int
    path: Path | None = None
    #: OpenMP threads of a search (``IndexSettings.faiss_threads``)
    threads: int | None = 1
    vectors_path: Path | None = None
    #: reads rows of ``vectors_path`` for the exact re-scoring of a shortlist
    row_reader: RowReader | None = None

    @property
    def rows(self) -> int:
        """Number of vectors in the index."""
        return int(self.row_slot.shape[0])

    @classmethod
    def assemble(
        cls,
        dim: int,
        kind: IndexKind,
        index: Any,
        names: tuple[str, ...],
        digests: tuple[str, ...],
        counts: npt.ArrayLike,
        slot_routes: tuple[RouteVectors | None, ...],
        probe_lists: int,
        path: Path | None = None,
        known: Bools | None = None,
        threads: int | None = 1,
        vectors_path: Path | None = None,
    ) -> MainIndex:
        """Wrap a built or loaded Faiss index whose rows follow the slots (names in sorted order).

        ``known`` says which ``slot_routes`` are not None (computed when not given).
        """
        counts = np.array(counts, dtype=np.int64)
        counts.flags.writeable = False
        row_slot = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        row_slot.flags.writeable = False
        if known is None:
            known = np.fromiter((rv is not None for rv in slot_routes), dtype=np.bool_, count=len(names))
        known = np.array(known, dtype=np.bool_)
        known.flags.writeable = False
        return cls(
            dim,
            kind,
            index,
            names,
            digests,
            counts,
            row_slot,
            slot_routes,
            known,
            probe_lists,
            path,
            threads,
            vectors_path,
            None if vectors_path is None else RowReader(vectors_path, int(counts.sum()), dim),
        )

    @classmethod
    def empty(cls, dim: int, threads: int | None = 1) -> MainIndex:
        """An index without routes."""
        return cls.assemble(dim, "flat", None, (), (), np.zeros(0, dtype=np.int64), (), 0, threads=threads)

    def slot(self, name: str) -> int | None:
        """The slot of route ``name`` in this index, if it has one."""
        at = bisect.bisect_left(self.names, name)
        return at if at < len(self.names) and self.names[at] == name else None

    def route(self, name: str) -> RouteVectors | None:
        """The known route in slot ``name`` (None when absent or unknown)."""
        at = self.slot(name)
        return None if at is None else self.slot_routes[at]

    def search(self, queries: Vectors, k: int, masked: Bools) -> tuple[Vectors, Int64s]:
        """Top-``k`` unmasked rows per query: ``(similarities, slots)``, padded with ``-inf`` / ``-1``.

        Masked slots (replaced or deleted routes) are filtered out after the search, so it fetches
        more than ``k`` rows and widens the search until every query has ``k`` live rows (or the
        index has no more candidates for it).
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
            found_sims, rows = self.search_rows(queries, fetch)
            found_slots = np.where(rows >= 0, self.row_slot[np.maximum(rows, 0)], -1)
            live = (found_slots >= 0) & ~masked[np.maximum(found_slots, 0)]
            # A query whose result has padding saw every candidate its probed lists hold.
            settled = (live.sum(axis=1) >= wanted) | (rows[:, -1] < 0)
            if fetch >= self.rows or bool(settled.all()):
                break
            fetch = min(self.rows, fetch * 2)
        # Faiss returns rows best first; a stable sort on "not live" keeps that order.
        order = np.argsort(~live, axis=1, kind="stable")[:, :k]
        taken = np.take_along_axis(live, order, axis=1)
        width = order.shape[1]
        sims[:, :width] = np.where(taken, np.take_along_axis(found_sims, order, axis=1), -np.inf)
        slots[:, :width] = np.where(taken, np.take_along_axis(found_slots, order, axis=1), -1)
        return sims, slots

    def search_rows(self, queries: Vectors, k: int) -> tuple[Vectors, Int64s]:
        """Top-``k`` ``(similarities, rows)`` per query, masks ignored, similarities exact."""
        use_faiss_threads(self.threads)
        if self.kind != "ivf":
            distances, rows = self.index.search(queries, k)
            return distances, rows
        if not self._rescored:
            return shortlist(self.index, queries, k, self.probe_lists)
        approximate, rows = shortlist(self.index, queries, shortlist_size(k, self.rows), self.probe_lists)
        return _best_exact(queries, approximate, rows, self._exact_rows(rows), k)

    @cached_property
    def _rescored(self) -> bool:
        return self.kind == "ivf" and self.index is not None and not holds_raw_vectors(self.index)

    @cached_property
    def _first_rows(self) -> Int64s:
        first: Int64s = np.cumsum(self.counts) - self.counts
        return first

    def _exact_rows(self, rows: Int64s) -> tuple[Vectors, Bools]:
        """The float32 vectors of ``rows`` (n, s) as (n, s, dim), and which rows have one (not
        padding, nor in a slot whose route is unknown: such slots are masked by every search)."""
        found = rows >= 0
        slots = self.row_slot[np.where(found, rows, 0)]
        usable = found & self.known[slots]
        out = np.zeros((*rows.shape, self.dim), dtype=np.float32)
        picked = np.flatnonzero(usable)
        if not picked.size:
            return out, usable
        if self.row_reader is not None:
            # the vectors file's rows are the known routes' vectors (same digest, same bytes)
            unique_rows, at = np.unique(rows.ravel()[picked], return_inverse=True)
            out.reshape(-1, self.dim)[picked] = self.row_reader.read(unique_rows)[at]
            return out, usable
        wanted_slots = slots.ravel()[picked]
        unique, inverse = np.unique(wanted_slots, return_inverse=True)
        routes = cast(tuple[RouteVectors, ...], self.slot_routes)
        stacked = np.concatenate([routes[slot].utterance_vectors for slot in unique.tolist()])
        counts = self.counts[unique]
        starts = np.cumsum(counts) - counts
        within = rows.ravel()[picked] - self._first_rows[wanted_slots]
        out.reshape(-1, self.dim)[picked] = stacked[starts[inverse] + within]
        return out, usable


def _best_exact(
    queries: Vectors, approximate: Vectors, rows: Int64s, exact: tuple[Vectors, Bools], k: int
) -> tuple[Vectors, Int64s]:
    """The ``k`` best of a shortlist by exact similarity (the approximate one where there is no
    vector to re-score from), best first, ties in shortlist order; padding stays ``-inf`` / ``-1``."""
    vectors, usable = exact
    sims = np.einsum("qd,qsd->qs", queries, vectors, dtype=np.float32)
    sims = np.where(usable, sims, np.where(rows >= 0, approximate, -np.inf)).astype(np.float32)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(rows, order, axis=1)
