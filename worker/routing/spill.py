"""Vectors of a fresh replay written to a file as they are decoded, instead of kept on the heap.

A fresh replica replaying a large log holds every route until its first main index is built: 1.5 GB
of vectors at 1M of them, beside the model and the routes' definitions. Spilled, each batch's
utterance vectors are appended to one file (``replay-<id>.f32`` in the index folder) and the routes
take read-only row views of a mapping of what was written: the same bytes (a few are compared), so
digests and answers do not change, but the pages belong to the page cache (untouched, they are not
this process's resident memory), and the index build's child process reads them from the file
itself (:class:`OnFile`) instead of the parent writing them all out for it.

The file is mapped in segments of :data:`_SEGMENT_BYTES` (one mapping, and one descriptor, per
segment rather than per batch); a batch that does not fit in the current segment starts the next
one, on a mapping boundary. Rows that no route names (a segment's unused end) read as zeros.
"""

from __future__ import annotations

import logging
import mmap
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import lcm
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from worker.routing.errors import IndexBuildFailed
from worker.routing.native import pwrite_all, spread_sample
from worker.routing.types import RouteVectors, Vectors

logger = logging.getLogger(__name__)

#: spill files are named with this prefix in the index folder (stale ones are removed)
PREFIX = "replay-"
_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")
#: routes of a batch whose views are compared with the arrays they replace
_COMPARED = 4
#: the file is extended and mapped this much at a time (at least a batch); a segment's pages leave
#: this process's resident set when its last route's views go (the store written after ready)
_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class OnFile:
    """Where routes' utterance vectors already are: float32 rows of ``path`` (of dimension
    ``dim``), route ``name``'s first row ``first_rows[name]``, its rows following one another."""

    path: Path
    dim: int
    first_rows: Mapping[str, int]


class SpillFile:
    """The file a fresh replay appends its routes' vectors to (see the module docstring).

    Not thread-safe: one thread spills at a time (the replay's writer). Routes returned by
    :meth:`spill` keep their mappings alive; :meth:`remove` unlinks the file (mapped pages stay
    readable until the last view goes).
    """

    def __init__(self, directory: Path, dim: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale(directory)
        self.path = directory / f"{PREFIX}{uuid.uuid4().hex[:16]}.f32"
        self.dim = dim
        self._row_bytes = dim * 4
        # batches start on a mapping boundary: a whole number of rows and of granules
        self._align_rows = lcm(mmap.ALLOCATIONGRANULARITY, self._row_bytes) // self._row_bytes
        self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._first_rows: dict[str, int] = {}
        #: the current segment: its first row, its rows, and them mapped
        self._segment_start = 0
        self._segment_rows = 0
        self._segment: Vectors | None = None
        #: the next free row of the current segment
        self._rows = 0

    def spill(self, routes: Sequence[RouteVectors]) -> list[RouteVectors]:
        """``routes`` again, their utterance vectors now views of rows appended to the file."""
        counts = [int(rv.utterance_vectors.shape[0]) for rv in routes]
        total = sum(counts)
        if not total:
            return list(routes)
        segment = self._room_for(total)
        start = self._rows
        views = [memoryview(v).cast("B") for v in map(_VECTORS, routes) if v.size]
        _write_all(self._descriptor, views, start * self._row_bytes, self.path)
        self._rows = start + total
        at = start - self._segment_start
        made: list[RouteVectors] = []
        first_rows, trusted = self._first_rows, RouteVectors.trusted
        for rv, count in zip(routes, counts, strict=True):
            first_rows[rv.route.name] = self._segment_start + at
            rows = segment[at : at + count]
            made.append(trusted(rv.route, rows, rv.negative_vectors, rv.fingerprint, rv.digest))
            at += count
        for i in spread_sample(len(routes), _COMPARED):
            # read back, not through the mapping: a touch maps a whole folio (up to 2 MB) of the
            # page cache into this process, and a replay spills hundreds of batches
            wanted = routes[i].utterance_vectors
            first = first_rows[routes[i].route.name] * self._row_bytes
            back = os.pread(self._descriptor, wanted.nbytes, first)
            if back != np.ascontiguousarray(wanted, dtype="<f4").tobytes():
                raise IndexBuildFailed(f"spill file {self.path} does not hold route {routes[i].name!r}")
        return made

    def _room_for(self, rows: int) -> Vectors:
        """The current segment if ``rows`` more fit in it, else a new one after it."""
        if self._segment is not None and self._rows + rows <= self._segment_start + self._segment_rows:
            return self._segment
        start = -(-self._rows // self._align_rows) * self._align_rows  # on a mapping boundary
        wanted = max(rows, _SEGMENT_BYTES // self._row_bytes)
        length = -(-wanted // self._align_rows) * self._align_rows
        os.ftruncate(self._descriptor, (start + length) * self._row_bytes)
        size, offset = length * self._row_bytes, start * self._row_bytes
        mapped = mmap.mmap(self._descriptor, size, access=mmap.ACCESS_READ, offset=offset)
        mapped.madvise(mmap.MADV_RANDOM)  # read a route at a time, if at all: no read-ahead into RSS
        segment: Vectors = np.frombuffer(mapped, dtype="<f4").reshape(length, self.dim)
        self._segment, self._segment_start, self._segment_rows, self._rows = segment, start, length, start
        return segment

    def on_file(self) -> OnFile:
        """Where each spilled route's rows are (its last spill), for the index build."""
        return OnFile(self.path, self.dim, dict(self._first_rows))

    def remove(self) -> None:
        """Close and unlink the file (the views keep the pages they map)."""
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1
        self.path.unlink(missing_ok=True)


def remove_stale(directory: Path) -> None:
    """Delete spill files left in ``directory`` by a replica that stopped before its first index
    was built (nothing reads them after that)."""
    for stale in directory.glob(PREFIX + "*.f32"):
        logger.info("removing spill file %s left by an interrupted replay", stale)
        stale.unlink(missing_ok=True)


def _write_all(descriptor: int, views: list[memoryview], offset: int, path: Path) -> None:
    """Write ``views`` one after the other at ``offset`` (the write releases the GIL)."""
    for start in range(0, len(views), 512):  # below IOV_MAX (1024 on Linux)
        offset = pwrite_all(descriptor, views[start : start + 512], offset, path)
