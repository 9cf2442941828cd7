"""The job folder of an index build: what the serving process writes and the build process reads.

``job.json`` holds the kind, size and settings. The vectors come either all in ``vectors.f32``, or,
for a rebuild over an approximate index mapped from a file, only the changed routes' vectors, with
``sources.npy``/``counts.npy`` saying where each route's rows are: in the previous index's
vectors file or (raw float32 lists) its index file, which the build process reads itself, or in
``vectors.f32`` (or in the spill file of a fresh replay, which holds every row: see
:mod:`worker.routing.spill`). The built index is ``index.faiss``;
the build process leaves ``vectors.f32`` holding every row in order (assembled if it held only the
changed ones), which the parent keeps beside the index (:mod:`worker.routing.vectors_file`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from worker.routing.build_layout import Carried, Layout, take
from worker.routing.errors import IndexBuildFailed
from worker.routing.native import faiss, in_slices, pwrite_all
from worker.routing.spill import OnFile
from worker.routing.types import Int64s, RouteVectors

#: job folders are created under the index folder with this prefix (stale ones are removed)
JOB_PREFIX = "rebuild-"
JOB_FILE = "job.json"
VECTORS_FILE = "vectors.f32"
SOURCES_FILE = "sources.npy"
COUNTS_FILE = "counts.npy"
INDEX_FILE = "index.faiss"

_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")


def write_vectors(path: Path, ordered: Sequence[RouteVectors]) -> None:
    """Write the routes' vectors in order, straight from their arrays (no joined copy).

    The write releases the GIL while the kernel copies (:func:`~worker.routing.native.pwrite_all`);
    joining them first took the GIL for the whole copy and twice the time.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        for part in in_slices(ordered, 512):  # below IOV_MAX (1024 on Linux)
            views = [memoryview(vectors).cast("B") for vectors in map(_VECTORS, part) if vectors.size]
            offset = pwrite_all(descriptor, views, offset, path)
    finally:
        os.close(descriptor)


def write_changes(job: Path, layout: Layout, carried: Carried) -> None:
    """Write the vectors of the routes ``carried`` does not cover, and where every route's rows are.

    ``sources[i]`` is the first row of route ``i`` in the previous index when carried, else
    ``-1 - r`` where ``r`` is its first row in the vectors file.
    """
    fresh = carried.slots < 0
    sources = np.empty(len(layout.routes), dtype=np.int64)
    sources[~fresh] = first_rows(carried.previous.counts)[carried.slots[~fresh]]
    sources[fresh] = -1 - first_rows(layout.counts[fresh])
    np.save(job / SOURCES_FILE, sources)
    np.save(job / COUNTS_FILE, layout.counts)
    write_vectors(job / VECTORS_FILE, take(layout.routes, np.flatnonzero(fresh)))


def first_rows(counts: Int64s) -> Int64s:
    """The first row of each route whose rows follow one another (``counts`` rows each)."""
    first: Int64s = np.cumsum(counts) - counts
    return first


def write_on_file(job: Path, layout: Layout, on_file: OnFile) -> None:
    """Say where every route's rows are in ``on_file``'s file (the build reads them there): the
    sources and counts of :func:`write_changes` with every route fresh, and no vectors written."""
    try:
        rows = map(on_file.first_rows.__getitem__, layout.names)
        first = np.fromiter(rows, dtype=np.int64, count=len(layout.names))
    except KeyError as error:
        raise IndexBuildFailed(f"{on_file.path} holds no rows of route {error}") from error
    np.save(job / SOURCES_FILE, -1 - first)
    np.save(job / COUNTS_FILE, layout.counts)


def ordered_from(job: Path, fresh_path: Path, rows: int, dim: int) -> Any:
    """The job's vectors file made in order from ``fresh_path``, which holds every row where
    :func:`write_on_file` says, and mapped: the rows to build from, and the file the parent keeps.

    Read with ``preadv`` straight into the mapped file, a contiguous stretch of the source at a
    time: a gather into the heap and then a write cost two fresh copies of every page (1.5 GB
    each at 1M vectors), which on a virtual machine took as long as a third of the build.
    """
    sources, counts = np.load(job / SOURCES_FILE), np.load(job / COUNTS_FILE)
    if int(counts.sum()) != rows or bool((sources >= 0).any()):
        raise IndexBuildFailed(f"job lists {int(counts.sum())} rows of {fresh_path}, wants all {rows} there")
    width = dim * 4
    source_rows = fresh_path.stat().st_size // width
    starts, targets = -1 - sources, first_rows(counts)
    order = np.argsort(starts, kind="stable")
    order = order[counts[order] > 0]
    if len(order) and int((starts[order] + counts[order]).max()) > source_rows:
        raise IndexBuildFailed(f"{fresh_path} holds {source_rows} rows, fewer than the job reads")
    temporary = job / (VECTORS_FILE + ".tmp")
    with open(temporary, "wb") as out:
        _allocate(out.fileno(), rows * width)
    ordered: Any = np.memmap(temporary, dtype=np.float32, mode="r+", shape=(rows, dim))
    if rows:
        target = memoryview(ordered).cast("B")
        at, size, to = starts[order].tolist(), counts[order].tolist(), targets[order].tolist()
        descriptor = os.open(fresh_path, os.O_RDONLY)
        try:
            run = 0
            while run < len(at):
                # routes that follow one another in the source (up to IOV_MAX of them): one read
                end = run + 1
                while end < len(at) and end - run < 1024 and at[end] == at[end - 1] + size[end - 1]:
                    end += 1
                views = [target[to[i] * width : (to[i] + size[i]) * width] for i in range(run, end)]
                wanted = (at[end - 1] + size[end - 1] - at[run]) * width
                if os.preadv(descriptor, views, at[run] * width) != wanted:
                    raise IndexBuildFailed(f"{fresh_path} ends before row {at[end - 1] + size[end - 1]}")
                run = end
        finally:
            os.close(descriptor)
    os.replace(temporary, job / VECTORS_FILE)
    return ordered


def _allocate(descriptor: int, size: int) -> None:
    """Make the file ``size`` bytes long, its blocks allocated at once where the file system can
    (the rows are then written through a mapping: page faults over a sparse file allocated its
    blocks one page at a time, a second of a 1M-vector build on ext4); else merely extended.
    A disk without room fails here, not later in a write through the mapping."""
    if size:
        try:
            os.posix_fallocate(descriptor, 0, size)
            return
        except OSError as error:
            if error.errno not in _NO_FALLOCATE:
                raise
    os.ftruncate(descriptor, size)  # a file system without fallocate: a sparse file, as before


#: what posix_fallocate fails with where the file system does not do it
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})


def assemble_vectors(
    job: Path,
    previous_path: Path | None,
    rows: int,
    dim: int,
    previous_vectors: Path | None = None,
    previous_rows: int = 0,
) -> Any:
    """The rows of the index to build, in order: carried ones from the previous index's vectors
    file (``previous_rows`` rows) if given, else from its lists, the others from the job's vectors
    file (see :func:`write_changes`)."""
    sources, counts = np.load(job / SOURCES_FILE), np.load(job / COUNTS_FILE)
    if int(counts.sum()) != rows:
        raise IndexBuildFailed(f"job lists {int(counts.sum())} rows, wants {rows}")
    route_of_row = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(rows) - first_rows(counts)[route_of_row]
    first = sources[route_of_row]
    carried = first >= 0
    vectors = np.empty((rows, dim), dtype=np.float32)
    fresh = np.fromfile(job / VECTORS_FILE, dtype=np.float32).reshape(-1, dim)
    vectors[~carried] = fresh[-1 - first[~carried] + offset[~carried]]
    if previous_vectors is not None:
        if previous_vectors.stat().st_size != previous_rows * dim * 4:
            raise IndexBuildFailed(f"{previous_vectors} does not hold {previous_rows} rows of dim {dim}")
        old = np.memmap(previous_vectors, dtype=np.float32, mode="r", shape=(previous_rows, dim))
        vectors[carried] = old[(first + offset)[carried]]
        return vectors
    if previous_path is None:
        raise IndexBuildFailed("a rebuild carrying rows names neither a previous index nor its vectors")
    previous = faiss.read_index(str(previous_path), faiss.IO_FLAG_MMAP_IFC)
    ivf = faiss.extract_index_ivf(previous)
    if previous.d != dim or ivf.code_size != 4 * dim:
        raise IndexBuildFailed(f"previous index {previous_path} does not hold raw vectors of dim {dim}")
    target = np.full(previous.ntotal, -1, dtype=np.int64)  # previous row -> row being built
    target[(first + offset)[carried]] = np.flatnonzero(carried)
    lists, filled = ivf.invlists, 0
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size)
        wanted = target[ids]
        keep = wanted >= 0
        vectors[wanted[keep]] = codes.view(np.float32).reshape(size, dim)[keep]
        filled += int(keep.sum())
    if filled != int(carried.sum()):
        raise IndexBuildFailed(f"previous index held {filled} of the {int(carried.sum())} carried rows")
    return vectors
