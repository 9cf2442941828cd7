"""Building the main index off to the side of the searches.

Exact (flat) indexes are small and built in the calling thread, slice by slice. Approximate (IVF)
indexes are built by a child process (``python -m worker.routing.builder JOB_FOLDER``) at low
priority: its k-means and list assignment then neither hold this process's GIL nor take CPU time
the searches want. The child writes the index file into a job folder and the parent maps that
file into memory (no copy, no parsing).

The child gets the vectors from files in the job folder. A rebuild that folds an overlay into an
approximate main index sends only the overlay's vectors and, per route, where its rows are in the
current main index's file, which the child reads itself: sending all of them (384 MB at 250k
vectors) made the serving process copy them through the kernel and held up its searches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from operator import attrgetter, itemgetter, lt
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.routing.errors import IndexBuildFailed
from worker.routing.index import (
    SLICE,
    IndexKind,
    IndexSettings,
    Int64s,
    MainIndex,
    faiss,
    in_slices,
    new_index,
    pause,
    searched_lists,
    use_blas_from,
)
from worker.routing.types import RouteVectors

logger = logging.getLogger(__name__)

#: job folders are created under the index folder with this prefix (stale ones are removed)
JOB_PREFIX = "rebuild-"
JOB_FILE = "job.json"
VECTORS_FILE = "vectors.f32"
SOURCES_FILE = "sources.npy"
COUNTS_FILE = "counts.npy"
INDEX_FILE = "index.faiss"

_NAME: Callable[[RouteVectors], str] = attrgetter("route.name")
_DIGEST: Callable[[RouteVectors], str] = attrgetter("digest")
_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")
_Value = TypeVar("_Value")


@dataclass(frozen=True, eq=False)
class Carried:
    """Routes a new main index takes over unchanged from ``previous``, the one it replaces.

    ``slots[i]`` is the slot in ``previous`` of the i-th route being built, or -1 when that route
    is new or changed. Used when ``previous`` is an approximate index mapped from a file.
    """

    previous: MainIndex
    slots: Int64s

    def usable_for(self, routes: int) -> bool:
        """Whether the child process can read the carried rows from ``previous``'s file."""
        path = self.previous.path
        return (
            self.previous.kind == "ivf"
            and path is not None
            and path.is_file()
            and self.slots.shape == (routes,)
            and bool((self.slots < len(self.previous.names)).all())
        )


@dataclass(frozen=True, eq=False)
class Layout:
    """Routes in name order with what a main index records of each, gathered before building.

    ``carried`` (aligned with ``routes``) lets the build read unchanged routes' rows from the index
    being replaced; the index built is the same as without it.
    """

    routes: tuple[RouteVectors, ...]
    names: tuple[str, ...]
    digests: tuple[str, ...]
    counts: Int64s
    carried: Carried | None = None

    @classmethod
    def of(cls, routes: Sequence[RouteVectors]) -> Layout:
        """``routes`` (ideally already in name order; sorted otherwise) laid out."""
        ordered = list(routes)
        names = _gather(ordered, _NAME)
        if not is_sorted(names):
            ordered.sort(key=_NAME)
            names = _gather(ordered, _NAME)
        counts = np.fromiter(
            chain.from_iterable(map(len, map(_VECTORS, part)) for part in in_slices(ordered)),
            dtype=np.int64,
            count=len(ordered),
        )
        return cls(tuple(ordered), names, _gather(ordered, _DIGEST), counts)


def take(items: Sequence[_Value], positions: Int64s) -> tuple[_Value, ...]:
    """``items`` at ``positions``, gathered in C slice by slice (pausing between slices)."""
    picked = positions.tolist()

    def part(at: Sequence[int]) -> Sequence[_Value]:
        return (items[at[0]],) if len(at) == 1 else itemgetter(*at)(items)

    return tuple(chain.from_iterable(map(part, in_slices(picked))))


def build_main(
    routes: Sequence[RouteVectors],
    dim: int,
    settings: IndexSettings,
    directory: Path | None = None,
) -> MainIndex:
    """Build a main index over ``routes`` (ideally already in name order; sorted otherwise).

    An approximate index is built by a child process (at the calling thread's priority, which it
    inherits) in a job folder under ``directory`` (the system's temporary folder when None) and
    mapped from there; :func:`~worker.routing.index_file.place_index` moves the file into place.
    """
    return build_laid_out(Layout.of(routes), dim, settings, directory)


def build_laid_out(
    layout: Layout, dim: int, settings: IndexSettings, directory: Path | None = None
) -> MainIndex:
    """Build a main index over ``layout``'s routes (see :func:`build_main`)."""
    if not layout.routes:
        return MainIndex.empty(dim, settings.faiss_threads)
    rows = int(layout.counts.sum())
    kind = settings.kind_for(rows)
    index, path = None, None
    if rows and kind == "flat":
        index = _build_here(layout.routes, dim)
    elif rows:
        index, path = _build_in_child(layout, kind, dim, settings, directory)
    return MainIndex.assemble(
        dim,
        kind,
        index,
        layout.names,
        layout.digests,
        layout.counts,
        layout.routes,
        searched_lists(index, kind, settings),
        path,
        known=np.ones(len(layout.routes), dtype=np.bool_),
        threads=settings.faiss_threads,
    )


def _gather(items: Sequence[RouteVectors], getter: Callable[[RouteVectors], _Value]) -> tuple[_Value, ...]:
    return tuple(chain.from_iterable(map(getter, part) for part in in_slices(items)))


def is_sorted(names: Sequence[str]) -> bool:
    """Whether ``names`` are strictly increasing (checked in slices, pausing between them)."""
    for start in range(0, max(len(names) - 1, 0), SLICE):
        if start:
            pause()
        part = names[start : start + SLICE + 1]  # overlapping by one: every neighbouring pair
        if not all(map(lt, part, part[1:])):
            return False
    return True


def _build_here(ordered: Sequence[RouteVectors], dim: int) -> Any:
    index = faiss.IndexFlatIP(dim)
    for part in in_slices(ordered, 512):
        index.add(np.concatenate(list(map(_VECTORS, part)), axis=0))
    return index


def _build_in_child(
    layout: Layout,
    kind: IndexKind,
    dim: int,
    settings: IndexSettings,
    directory: Path | None,
) -> tuple[Any, Path | None]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(JOB_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    job = Path(tempfile.mkdtemp(prefix=JOB_PREFIX, dir=directory))
    try:
        started = time.perf_counter()
        rows = int(layout.counts.sum())
        spec: dict[str, Any] = {
            "kind": kind,
            "rows": rows,
            "dim": dim,
            "settings": asdict(settings),
            "parent": os.getpid(),
        }
        carried = layout.carried
        if carried is None or not carried.usable_for(len(layout.routes)):
            _write_vectors(job / VECTORS_FILE, layout.routes)
        else:
            spec["previous"] = str(carried.previous.path)
            _write_changes(job, layout, carried)
        (job / JOB_FILE).write_text(json.dumps(spec))
        written = time.perf_counter()
        _run_child(job, settings.build_idle_s)
        path = job / INDEX_FILE
        index = map_index(path)
        if index.ntotal != rows or index.d != dim:
            raise IndexBuildFailed(
                f"built index has {index.ntotal} rows of dim {index.d}, wanted {rows}x{dim}"
            )
        logger.info(
            "built %s index of %d vectors in a child process: %.2fs (vectors written in %.2fs)",
            kind,
            rows,
            time.perf_counter() - started,
            written - started,
        )
    except BaseException:
        shutil.rmtree(job, ignore_errors=True)
        raise
    if directory is None:
        # The mapping keeps the unlinked file's pages; nothing else needs its name.
        shutil.rmtree(job, ignore_errors=True)
        return index, None
    return index, path


def _write_vectors(path: Path, ordered: Sequence[RouteVectors]) -> None:
    """Write the routes' vectors in order, straight from their arrays (no joined copy).

    ``os.writev`` releases the GIL while the kernel copies; joining them first took the GIL for
    the whole copy and twice the time.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for part in in_slices(ordered, 512):  # below IOV_MAX (1024 on Linux)
            views = [memoryview(vectors).cast("B") for vectors in map(_VECTORS, part) if vectors.size]
            while views:
                written = os.writev(descriptor, views)
                if not written:
                    raise OSError(f"no progress writing {path}")
                while views and written >= views[0].nbytes:
                    written -= views.pop(0).nbytes
                if written:  # a short write ends inside views[0]
                    views[0] = views[0][written:]
    finally:
        os.close(descriptor)


def _write_changes(job: Path, layout: Layout, carried: Carried) -> None:
    """Write the vectors of the routes ``carried`` does not cover, and where every route's rows are.

    ``sources[i]`` is the first row of route ``i`` in the previous index when carried, else
    ``-1 - r`` where ``r`` is its first row in the vectors file.
    """
    fresh = carried.slots < 0
    sources = np.empty(len(layout.routes), dtype=np.int64)
    sources[~fresh] = _first_rows(carried.previous.counts)[carried.slots[~fresh]]
    sources[fresh] = -1 - _first_rows(layout.counts[fresh])
    np.save(job / SOURCES_FILE, sources)
    np.save(job / COUNTS_FILE, layout.counts)
    _write_vectors(job / VECTORS_FILE, take(layout.routes, np.flatnonzero(fresh)))


def _first_rows(counts: Int64s) -> Int64s:
    """The first row of each route whose rows follow one another (``counts`` rows each)."""
    first: Int64s = np.cumsum(counts) - counts
    return first


def _assemble(job: Path, previous_path: Path, rows: int, dim: int) -> Any:
    """The rows of the index to build, in order: carried ones from the previous index's lists,
    the others from the job's vectors file (see :func:`_write_changes`)."""
    sources, counts = np.load(job / SOURCES_FILE), np.load(job / COUNTS_FILE)
    if int(counts.sum()) != rows:
        raise IndexBuildFailed(f"job lists {int(counts.sum())} rows, wants {rows}")
    route_of_row = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(rows) - _first_rows(counts)[route_of_row]
    first = sources[route_of_row]
    carried = first >= 0
    vectors = np.empty((rows, dim), dtype=np.float32)
    fresh = np.fromfile(job / VECTORS_FILE, dtype=np.float32).reshape(-1, dim)
    vectors[~carried] = fresh[-1 - first[~carried] + offset[~carried]]
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


def map_index(path: Path) -> Any:
    """Read an index file, mapping its vectors into memory instead of copying them."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)


def _run_child(job: Path, idle_s: float | None) -> None:
    """Run the build process; idle (only on a free CPU) for its first ``idle_s`` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    with subprocess.Popen(
        [sys.executable, "-m", "worker.routing.builder", str(job)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as child:
        # Waiting in communicate() releases the GIL for the whole build.
        idle = idle_s is not None and _set_idle(child.pid, True)
        try:
            _, errors = child.communicate(timeout=idle_s if idle else None)
        except subprocess.TimeoutExpired:
            # Starved (no CPU came free): the inherited niceness gives it a share of a busy one.
            logger.info("index build process idle for %.0fs without finishing: giving it its share", idle_s)
            _set_idle(child.pid, False)
            _, errors = child.communicate()
    if child.returncode != 0:
        tail = errors.decode(errors="replace").strip().splitlines()[-5:]
        raise IndexBuildFailed(f"index build process exited with {child.returncode}: {' | '.join(tail)}")


def _set_idle(pid: int, idle: bool) -> bool:
    """Put process ``pid`` in (or out of) the idle scheduling class (Linux); whether it worked.

    An idle process runs only on a CPU nothing else wants: a search thread waking up takes the CPU
    at once, where beside a niced build it waited up to 24 ms (benchmarks/engine.py).
    """
    policy = getattr(os, "SCHED_IDLE", None) if idle else getattr(os, "SCHED_OTHER", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    except OSError:  # the process has exited, or the system refuses
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Child process: build the index described in a job folder and write it there."""
    job = Path((sys.argv[1:] if argv is None else argv)[0])
    spec = json.loads((job / JOB_FILE).read_text())
    _exit_with(int(spec["parent"]))
    faiss.omp_set_num_threads(1)  # one thread: the same index on every replica
    settings = IndexSettings(**spec["settings"])
    use_blas_from(settings.blas_min_queries)
    rows, dim = int(spec["rows"]), int(spec["dim"])
    if "previous" in spec:
        vectors = _assemble(job, Path(spec["previous"]), rows, dim)
    else:
        vectors = np.memmap(job / VECTORS_FILE, dtype=np.float32, mode="r", shape=(rows, dim))
    index = new_index(spec["kind"], vectors, settings)
    del vectors
    (job / VECTORS_FILE).unlink()
    temporary = job / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, job / INDEX_FILE)
    return 0


def _exit_with(parent: int) -> None:
    """Stop building when the process that asked for the index is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
