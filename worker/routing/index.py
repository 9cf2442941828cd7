"""The main route index: utterance vectors of many routes in one Faiss index, built off to the side.

Rows are laid out route by route in name order, so the same routes always give the same index.
Exact inner-product search (``IndexFlatIP``) by default; an inverted-file index (IVF) above a size
threshold. Building and loading are in :mod:`worker.routing.builder` and
:mod:`worker.routing.index_file`.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from worker.routing.types import RouteVectors, Vectors

IndexKind = Literal["flat", "ivf"]
Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
_Item = TypeVar("_Item")

# faiss ships partial type stubs that vary between releases: use it untyped.
faiss: Any = _faiss

#: Items handled between two pauses by background work that holds the GIL (see :func:`in_slices`).
SLICE = 2_048

_omp = threading.local()


@dataclass(frozen=True)
class IndexSettings:
    """How the main index is built and searched, and when the overlay is folded into it."""

    #: above this many utterance vectors the main index is IVF (approximate) instead of exact.
    #: Exact search of 32 queries over 50k vectors took 0.35-1.6x the time of embedding them
    #: (benchmarks/engine.py, loaded 2-vCPU machine), so larger tables go approximate.
    approximate_above: int = 32_768
    #: vectors per inverted list: an IVF index has ``rows / list_rows`` lists (a power of two), so a
    #: search scans about ``probe_lists * list_rows`` vectors whatever the table size.
    list_rows: int = 64
    #: inverted lists scanned per query, at least. 16 of 4096 lists at 250k vectors: recall@10 1.00
    #: on the clustered benchmark data; decide32 5.9 ms, 0.17x the encoder's 35 ms. Real MiniLM
    #: vectors are harder (0.96 at 16 lists), so each build raises it for its own data, see
    #: ``recall_target``.
    probe_lists: int = 16
    #: each IVF build measures recall@10 against exact search on a sample of its own vectors used
    #: as queries (each one left out of its own answer) and scans more lists until it reaches this
    #: (at most ``max_probe_lists``). Deterministic: every replica picks the same count. Stored
    #: utterances are easier queries than new text: on Banking77 + CLINC150 MiniLM vectors (25k,
    #: 512 lists) this leave-one-out recall was 0.991 / 0.996 / 0.998 / 0.999 at 16 / 32 / 64 / 128
    #: lists where their test queries got 0.964 / 0.979 / 0.989 / 0.995 (benchmarks/engine.py,
    #: real_vectors_recall), hence 0.999 for 0.99 on real queries.
    recall_target: float = 0.999
    max_probe_lists: int = 256
    #: k-means learns the lists from at most this many sampled vectors per list (faiss's seeded sample)
    train_rows_per_list: int = 16
    #: the overlay is folded into the main index in the background once it holds this many vectors
    overlay_rebuild_rows: int = 2_048
    #: OpenMP threads of each faiss search (set in every searching thread: OpenMP keeps the count per
    #: thread); None keeps faiss's. 1 because searches already run in parallel threads and OpenMP
    #: waits collapse when cores are busy: a 32-query search over 1k vectors took 1.0 ms (1 thread)
    #: vs 40 ms (2 threads, median) on a loaded 2-vCPU machine, and a searching thread with 2 waited
    #: a 4 ms scheduler tick per batch beside a busy process. Builds always use one thread.
    faiss_threads: int | None = 1
    #: faiss's exact searches (flat indexes, the IVF list assignment, k-means) use BLAS matrix
    #: products for batches of at least this many queries, PROCESS-WIDE (applied when a RouteTable
    #: is made, and in the build process); None keeps faiss's (128000 in faiss 1.15). Assigning 32
    #: queries to 4096 lists took 1.25 ms with BLAS vs 2.61 ms without; 32 over 32k rows 11.5 vs 64.
    blas_min_queries: int | None = 16
    #: niceness of the background rebuild thread and of the build process it starts: searches
    #: sharing a CPU with them keep ~90% of it, and a build still gets ~10% of a saturated CPU (at
    #: 19 it got ~1% and a 250k rebuild did not finish beside one busy search thread). Blocking
    #: rebuilds run at the caller's priority.
    build_niceness: int = 10
    #: seconds the build process first runs in the idle scheduling class (Linux): only on a CPU
    #: nothing else wants, so searches never wait for it (beside a niced build they waited up to
    #: 24 ms). A build not done by then (no CPU came free: 250k vectors take ~30 s of one CPU)
    #: continues at ``build_niceness``. None: never idle.
    build_idle_s: float | None = 90.0

    def kind_for(self, rows: int) -> IndexKind:
        """The index kind used for ``rows`` vectors."""
        return "ivf" if rows > self.approximate_above else "flat"

    def lists_for(self, rows: int) -> int:
        """Inverted lists of an IVF index over ``rows`` vectors (a power of two, at most ``rows``)."""
        wanted = max(rows / max(self.list_rows, 1), 1.0)
        return max(1, min(rows, 1 << round(math.log2(wanted))))


def table_digest(route_digests: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(name, route digest)`` pairs: equal route sets give equal digests."""
    sha = hashlib.sha256()
    for name, digest in sorted(route_digests):
        encoded = name.encode()
        sha.update(len(encoded).to_bytes(8, "little"))
        sha.update(encoded)
        sha.update(bytes.fromhex(digest))
    return sha.hexdigest()


def use_faiss_threads(threads: int | None) -> None:
    """Give faiss ``threads`` OpenMP threads in the calling thread (None: leave it alone).

    ``omp_set_num_threads`` only changes the calling thread's count; threads made by Python start
    from the process default (one per CPU), so every searching thread sets its own, once.
    """
    if threads is not None and getattr(_omp, "threads", None) != threads:
        faiss.omp_set_num_threads(threads)
        _omp.threads = threads


def use_blas_from(queries: int | None) -> None:
    """Let faiss use BLAS for exact searches of at least ``queries`` queries (process-wide)."""
    if queries is not None:
        faiss.cvar.distance_compute_blas_threshold = queries


def pause() -> None:
    """Let threads waiting for the GIL take it.

    Background work (rebuild, persisting) runs in slices between pauses: a C call such as a sort
    holds the GIL until it returns, and pure Python keeps it for the whole 5 ms switch interval
    when another thread asks for it; a short sleep hands it over at once.
    """
    time.sleep(0.000_2)


def in_slices(items: Sequence[_Item], size: int = SLICE) -> Iterator[Sequence[_Item]]:
    """``items`` in consecutive slices of ``size``, pausing (:func:`pause`) between slices."""
    for start in range(0, len(items), size):
        if start:
            pause()
        yield items[start : start + size]


def new_index(kind: IndexKind, vectors: Vectors, settings: IndexSettings) -> Any:
    """A Faiss index over ``vectors`` (rows in order). Deterministic for equal inputs.

    The caller sets faiss to one thread (k-means and list assignment are then reproducible).
    """
    rows, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        lists = settings.lists_for(rows)
        index = faiss.index_factory(dim, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = settings.train_rows_per_list
        index.cp.min_points_per_centroid = 1  # a deliberately small sample is no cause for a warning
        index.train(vectors)
        index.nprobe = settings.probe_lists
    step = 16_384
    for start in range(0, rows, step):
        index.add(np.ascontiguousarray(vectors[start : start + step], dtype=np.float32))
    if kind == "ivf":
        index.nprobe = calibrate_probes(index, vectors, settings).probe_lists
    return index


#: queries of a recall calibration (sampled utterances) and the neighbours compared per query
CALIBRATION_QUERIES = 1024
RECALL_AT = 10


@dataclass(frozen=True)
class Calibration:
    """The lists an IVF index scans per query, and the recall@10 measured at each count tried."""

    probe_lists: int
    recalls: tuple[tuple[int, float], ...]


def calibrate_probes(index: Any, vectors: Vectors, settings: IndexSettings) -> Calibration:
    """The fewest lists (from ``settings.probe_lists`` up, ~x1.4 a step) giving recall@10 of at
    least ``settings.recall_target`` against exact search, on a seeded sample of ``vectors`` used
    as queries, each left out of its own answer (a stored utterance is not a query's best match)."""
    probes = settings.probe_lists
    sample = LeaveOneOut.of(vectors)
    if sample is None:
        return Calibration(probes, ())
    ceiling = max(settings.max_probe_lists, probes)
    lists = int(faiss.extract_index_ivf(index).nlist)
    tried: list[tuple[int, float]] = []
    while True:
        tried.append((probes, sample.recall(index, probes)))
        if tried[-1][1] >= settings.recall_target or probes >= min(ceiling, lists):
            return Calibration(probes, tuple(tried))
        probes = min(max(probes + 1, round(probes * 1.41)), ceiling, lists)


@dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """A seeded sample of stored vectors used as queries, with their exact top-``k`` rows other
    than their own: what an IVF build calibrates its recall on."""

    rows: Int64s
    queries: Vectors
    truth: Int64s
    k: int

    @classmethod
    def of(cls, vectors: Vectors) -> LeaveOneOut | None:
        """The sample of ``vectors`` (None when there are too few for a neighbour)."""
        count = vectors.shape[0]
        k = min(RECALL_AT, count - 1)
        if k < 1:
            return None
        rows = np.sort(np.random.default_rng(0).choice(count, min(CALIBRATION_QUERIES, count), replace=False))
        queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        return cls(rows, queries, without_self(exact, rows, k, pad=-2), k)

    def recall(self, index: Any, probes: int) -> float:
        """Recall@k of IVF ``index`` scanning ``probes`` lists per query."""
        _, found = index.search(self.queries, self.k + 1, params=faiss.SearchParametersIVF(nprobe=probes))
        answers = without_self(found, self.rows, self.k, pad=-3)
        hits = sum(np.intersect1d(t, f).size for t, f in zip(self.truth, answers, strict=True))
        return hits / self.truth.size


def without_self(rows: Int64s, own: Int64s, k: int, pad: int) -> Int64s:
    """The first ``k`` rows of each answer other than the query's own row, padded with ``pad``."""
    keep = (rows != own[:, None]) & (rows >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    picked: Int64s = np.where(
        np.take_along_axis(keep, order, axis=1), np.take_along_axis(rows, order, axis=1), pad
    )
    return picked


def searched_lists(index: Any, kind: IndexKind, settings: IndexSettings) -> int:
    """Lists a search of ``index`` scans: what its build calibrated (IVF), else the setting."""
    if kind == "ivf" and index is not None:
        return int(faiss.extract_index_ivf(index).nprobe)
    return settings.probe_lists


@dataclass(frozen=True, eq=False)
class MainIndex:
    """An immutable Faiss index over the utterances of routes, with row -> route slot bookkeeping.

    Slots are in name order: ``names[slot]``/``digests[slot]``/``counts[slot]`` describe each one,
    ``row_slot[row]`` maps a Faiss row to its slot. ``slot_routes[slot]`` holds the route's vectors
    when known (``known[slot]``); a slot loaded from disk whose route has since changed has none
    and the table masks it. ``path`` is the file the index is mapped from, if any.
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
            dim, kind, index, names, digests, counts, row_slot, slot_routes, known, probe_lists, path, threads
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
        """The raw Faiss answer: top-``k`` ``(similarities, rows)`` per query, masks ignored."""
        use_faiss_threads(self.threads)
        if self.kind == "ivf":
            # Per-call parameters: setting index.nprobe would race with concurrent searches.
            params = faiss.SearchParametersIVF(nprobe=self.probe_lists)
            distances, rows = self.index.search(queries, k, params=params)
        else:
            distances, rows = self.index.search(queries, k)
        return distances, rows
