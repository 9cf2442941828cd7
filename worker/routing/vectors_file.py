"""The main index's vectors file: every slot's utterance vectors as float32 rows, in row order.

The index build writes it for its child process; it is kept beside the index file it was built
into (same name, suffix ``.vectors``) and named by the manifest, a derived cache like the index
file (the store stays the source of truth). Mapped read-only, it holds the vectors of every route
in the main index outside the heap: routes whose digest is the manifest's take row views of it
(:class:`MappedVectors`), so a restart reads none of them from the store, and a replica whose
first index was just built swaps its heap copies for views (:func:`routes_on_file`), freeing its
heap. Pages are read on first use (the exact re-scoring of a shortlist touches a few rows) and
belong to the page cache, which may drop them again.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.routing.errors import IndexBuildFailed
from worker.routing.native import collector_paused, in_slices, spread_sample
from worker.routing.types import Int64s, RouteVectors, Vectors

#: the suffix of a vectors file beside its index file (``main-ivf-<id>.faiss``)
SUFFIX = ".vectors"
#: routes whose views are compared with the vectors they replace (see :func:`routes_on_file`)
_COMPARED = 16


def vectors_beside(index_path: Path) -> Path:
    """The vectors file that goes with the index file ``index_path``."""
    return index_path.with_suffix(SUFFIX)


def map_vectors(path: Path, rows: int, dim: int) -> Vectors | None:
    """``path`` as a read-only ``(rows, dim)`` float32 array mapped from the file (no copy), or
    None when the file is missing or of another size."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size != rows * dim * 4:
                return None
            if not size:
                empty = np.zeros((0, dim), dtype=np.float32)
                empty.flags.writeable = False
                return empty
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    # Rows are read a few at a time (a shortlist's re-scoring): no read-ahead around them, which
    # would only add pages to this process's resident set.
    mapped.madvise(mmap.MADV_RANDOM)
    vectors: Vectors = np.frombuffer(mapped, dtype="<f4").reshape(rows, dim)  # read-only: ACCESS_READ
    return vectors


class RowReader:
    """Reads rows of a vectors file with ``pread``, never through a mapping: the rows a search
    re-scores then stay out of this process's resident set (touching a mapping maps whole folios of
    the page cache into it, up to the whole file after a few searches)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.path = path
        self.rows = rows
        self.dim = dim
        descriptor = os.open(path, os.O_RDONLY)
        self._descriptor = descriptor
        # closed with the last index holding it (a renamed or unlinked file stays readable)
        weakref.finalize(self, os.close, descriptor)

    def read(self, rows: Int64s) -> Vectors:
        """The vectors of ``rows`` (sorted, without repeats), one ``preadv`` per run of neighbours."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        width = self.dim * 4
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts: list[int] = np.concatenate([[0], breaks]).tolist()
        ends: list[int] = np.concatenate([breaks, [len(rows)]]).tolist()
        firsts: list[int] = rows[starts].tolist()
        buffer: Any = out  # numpy's stubs lack the buffer protocol
        target = memoryview(buffer).cast("B")
        for start, end, first in zip(starts, ends, firsts, strict=True):
            wanted = (end - start) * width
            if os.preadv(self._descriptor, [target[start * width : end * width]], first * width) != wanted:
                raise OSError(f"{self.path} ends before row {first + end - start} of {self.rows}")
        return out


def _bounds(counts: Int64s) -> list[int]:
    """Each slot's first row, then the total: slot ``i`` is rows ``[b[i], b[i + 1])``."""
    bounds: list[int] = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return bounds


class MappedVectors:
    """The rows of a mapped vectors file by route name, for routes of the digest it was built from.

    What :meth:`worker.routing.store.RouteStore.load` consults (``KnownVectors``).
    """

    def __init__(
        self,
        path: Path,
        vectors: Vectors,
        names: Sequence[str],
        digests: Sequence[str],
        counts: Int64s,
    ) -> None:
        self.path = path
        self.vectors = vectors
        self._slots = dict(zip(names, range(len(names)), strict=True))
        self._digests = digests
        self._bounds = _bounds(counts)

    def utterance_vectors(self, name: str, digest: str) -> Vectors | None:
        """The rows of route ``name`` if the file holds them for ``digest`` (a view, no copy)."""
        return self.utterance_vectors_of([name], [digest])[0]

    def utterance_vectors_of(self, names: Sequence[str], digests: Sequence[str]) -> list[Vectors | None]:
        """:meth:`utterance_vectors` of each ``(names[i], digests[i])``, in one loop (200k at a restart)."""
        slot_of, known, bounds, vectors = self._slots.get, self._digests, self._bounds, self.vectors
        found: list[Vectors | None] = []
        add = found.append
        for name, digest in zip(names, digests, strict=True):
            slot = slot_of(name)
            add(None if slot is None or known[slot] != digest else vectors[bounds[slot] : bounds[slot + 1]])
        return found

    def __str__(self) -> str:
        return str(self.path)


def routes_on_file(
    routes: Sequence[RouteVectors], vectors: Vectors, counts: Int64s
) -> tuple[RouteVectors, ...]:
    """``routes`` (in row order) again, their utterance vectors now row views of ``vectors``: the
    same bytes (the file was written from them), so digests and answers stay the same, and the
    heap copies can go. A few are compared first: a file that does not hold them is an error."""
    bounds = _bounds(counts)
    if vectors.shape[0] != bounds[-1] or len(routes) != len(counts):
        raise IndexBuildFailed(f"vectors file of {vectors.shape[0]} rows for {bounds[-1]} rows of routes")
    for slot in spread_sample(len(routes), _COMPARED):
        if not np.array_equal(routes[slot].utterance_vectors, vectors[bounds[slot] : bounds[slot + 1]]):
            raise IndexBuildFailed(f"vectors file does not hold the vectors of route {routes[slot].name!r}")
    made: list[RouteVectors] = []
    trusted = RouteVectors.trusted
    with collector_paused(freeze=True):  # 400k long-lived objects (see collector_paused)
        for part in in_slices(range(len(routes))):  # pausing between slices: this runs beside searches
            made.extend(
                trusted(
                    rv.route,
                    vectors[bounds[i] : bounds[i + 1]],
                    rv.negative_vectors,
                    rv.fingerprint,
                    rv.digest,
                )
                for i, rv in zip(part, map(routes.__getitem__, part), strict=True)
            )
    return tuple(made)
