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

A large replay is decoded in processes of their own (:mod:`worker.replication.decoder`), which
write the vectors they decode into the file themselves (:class:`SpillRows`), each batch into a
segment set apart for it (:meth:`SpillFile.reserve`, sized for the most rows the batch can hold),
so that they write at once; the replica maps each such segment once it has the batch's answer.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True, slots=True)
class SpillPosition:
    """Where a spill file's next rows go: its current segment (first row and rows; 0 rows before
    the first) and the next free row in it. The replica's own appends go on from one to the next;
    a replay's decode process (:mod:`worker.replication.decode_child`) is given a segment of its
    own for each batch (:meth:`SpillFile.reserve`)."""

    segment_start: int = 0
    segment_rows: int = 0
    rows: int = 0


class SpillRows:
    """The writing half of a spill file: appends rows where a :class:`SpillPosition` says, in
    segments on mapping boundaries, extending the file as they need, and reads a few back.

    The replica's :class:`SpillFile` writes with one; a replay's decode process opens its own on
    the same file (``descriptor`` its own), so the vectors it decodes never pass through the replica.
    """

    def __init__(self, descriptor: int, path: Path, dim: int) -> None:
        self.descriptor = descriptor
        self.path = path
        self.dim = dim
        self.row_bytes = dim * 4
        # batches start on a mapping boundary: a whole number of rows and of granules
        self._align_rows = lcm(mmap.ALLOCATIONGRANULARITY, self.row_bytes) // self.row_bytes

    def append(
        self, at: SpillPosition, matrices: Sequence[Vectors], *, grow: bool = True
    ) -> tuple[SpillPosition, int]:
        """Write ``matrices`` one after the other from ``at``: the position after them, and the row
        the first is at. All of them go in one segment (a new one if the current has no room;
        without ``grow``, none: they must fit)."""
        total = sum(int(m.shape[0]) for m in matrices)
        if not grow and at.rows + total > at.segment_start + at.segment_rows:
            raise IndexBuildFailed(
                f"spill file {self.path}: {total} rows do not fit in the segment of {at.segment_rows} "
                f"rows from row {at.segment_start} ({at.rows - at.segment_start} taken)"
            )
        at = self._room_for(at, total)
        start = at.rows
        views: list[memoryview] = [memoryview(m).cast("B") for m in matrices if m.size]  # type: ignore[arg-type]
        _write_all(self.descriptor, views, start * self.row_bytes, self.path)
        return dataclasses.replace(at, rows=start + total), start

    def _room_for(self, at: SpillPosition, rows: int) -> SpillPosition:
        """``at`` if ``rows`` more fit in its segment, else a new segment after it (the file extended)."""
        if at.segment_rows and at.rows + rows <= at.segment_start + at.segment_rows:
            return at
        return self.segment(at, max(rows, _SEGMENT_BYTES // self.row_bytes))

    def segment(self, at: SpillPosition, rows: int) -> SpillPosition:
        """A new segment of at least ``rows`` rows after ``at``'s (the file extended to hold it)."""
        start = -(-at.rows // self._align_rows) * self._align_rows  # on a mapping boundary
        length = max(1, -(-rows // self._align_rows)) * self._align_rows
        end = (start + length) * self.row_bytes
        if os.fstat(self.descriptor).st_size < end:  # never shorter: other segments may be mapped
            os.ftruncate(self.descriptor, end)
        return SpillPosition(start, length, start)

    def check(self, matrices: Sequence[Vectors], first_rows: Sequence[int], names: Sequence[str]) -> None:
        """Read a few of ``matrices`` back from their first rows; raise if the file differs."""
        for i in spread_sample(len(matrices), _COMPARED):
            # read back, not through a mapping: a touch maps a whole folio (up to 2 MB) of the
            # page cache into the reading process, and a replay spills hundreds of batches
            wanted = matrices[i]
            back = os.pread(self.descriptor, wanted.nbytes, first_rows[i] * self.row_bytes)
            if back != np.ascontiguousarray(wanted, dtype="<f4").tobytes():
                raise IndexBuildFailed(f"spill file {self.path} does not hold route {names[i]!r}")


class SpillFile:
    """The file a fresh replay appends its routes' vectors to (see the module docstring).

    Not thread-safe: one thread spills at a time (the replay's writer). Routes returned by
    :meth:`spill` keep their mappings alive; :meth:`remove` unlinks the file (mapped pages stay
    readable until the last view goes). Rows may also be written by other processes (a replay's
    decode processes), each batch in a segment :meth:`reserve` sets apart; :meth:`adopt` maps
    it, and :meth:`rows` gives views of it.
    """

    def __init__(self, directory: Path, dim: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale(directory)
        self.path = directory / f"{PREFIX}{uuid.uuid4().hex[:16]}.f32"
        self.dim = dim
        self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._writer = SpillRows(self._descriptor, self.path, dim)
        self._first_rows: dict[str, int] = {}
        #: where this process's own next rows go (after every segment set apart too)
        self._at = SpillPosition()
        #: the segment of ``_at`` mapped (None: none yet)
        self._segment: Vectors | None = None
        #: the segment another writer filled that :meth:`adopt` mapped last: its first row, and it
        self._adopted: tuple[int, Vectors] | None = None

    def reserve(self, rows: int) -> SpillPosition:
        """A segment of at least ``rows`` rows after all the others, for another writer to fill
        (this process's own rows go after it)."""
        region = self._writer.segment(self._at, rows)
        end = region.segment_start + region.segment_rows
        self._at = SpillPosition(region.segment_start, region.segment_rows, end)  # full
        return region

    def adopt(self, at: SpillPosition) -> None:
        """Another writer filled the segment ``at`` is in (one :meth:`reserve` gave): map it."""
        if not at.segment_rows or (self._adopted is not None and self._adopted[0] == at.segment_start):
            return
        self._adopted = (at.segment_start, self._map(at))

    def rows(self, first: int, count: int) -> Vectors:
        """A read-only view of ``count`` rows from row ``first`` of the segment :meth:`adopt` mapped last."""
        if self._adopted is None:
            raise IndexBuildFailed(f"spill file {self.path}: no segment mapped for rows {first}+{count}")
        start, segment = self._adopted
        at = first - start
        if at < 0 or at + count > len(segment):
            raise IndexBuildFailed(f"spill file {self.path}: rows {first}+{count} are not in its segment")
        return segment[at : at + count]

    def spill(
        self, routes: Sequence[RouteVectors], placed: Mapping[int, int] | None = None
    ) -> list[RouteVectors]:
        """``routes`` again, their utterance vectors now views of rows appended to the file.

        ``placed`` maps the ``id`` of routes whose rows another writer already appended (their
        vectors are views of them, see :meth:`rows`) to their first row: only named, not written.
        """
        placed = placed or {}
        first_rows, trusted = self._first_rows, RouteVectors.trusted
        written = [rv for rv in routes if id(rv) not in placed]
        counts = [int(rv.utterance_vectors.shape[0]) for rv in written]
        total = sum(counts)
        made: dict[int, RouteVectors] = {}
        if total:
            matrices = list(map(_VECTORS, written))
            at, start = self._writer.append(self._at, matrices)
            if at.segment_start != self._at.segment_start or self._segment is None:
                self._segment = self._map(at)
            self._at = at
            segment, segment_start = self._segment, at.segment_start
            starts = np.cumsum([start, *counts[:-1]]).tolist()
            for rv, first, count in zip(written, starts, counts, strict=True):
                rows = segment[first - segment_start : first - segment_start + count]
                made[id(rv)] = trusted(rv.route, rows, rv.negative_vectors, rv.fingerprint, rv.digest)
                first_rows[rv.route.name] = first
            self._writer.check(matrices, starts, [rv.name for rv in written])
        out: list[RouteVectors] = []
        for rv in routes:
            key = id(rv)
            if key in placed:
                first_rows[rv.route.name] = placed[key]
                out.append(rv)
            else:
                out.append(made.get(key, rv))
        return out

    def _map(self, at: SpillPosition) -> Vectors:
        """``at``'s segment, mapped read-only."""
        size, offset = at.segment_rows * self._writer.row_bytes, at.segment_start * self._writer.row_bytes
        mapped = mmap.mmap(self._descriptor, size, access=mmap.ACCESS_READ, offset=offset)
        mapped.madvise(mmap.MADV_RANDOM)  # read a route at a time, if at all: no read-ahead into RSS
        segment: Vectors = np.frombuffer(mapped, dtype="<f4").reshape(at.segment_rows, self.dim)
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
