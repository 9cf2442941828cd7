"""Building the main index off to the side of the searches.

Exact (flat) indexes are small and built in the calling thread, slice by slice. Approximate (IVF)
indexes are built by a child process (``python -m worker.routing.builder JOB_FOLDER``) at low
priority: its k-means and list assignment then neither hold this process's GIL nor take CPU time
the searches want. The parent writes the vectors in row order into the job folder, the child
writes the index file there, and the parent maps that file into memory (no copy, no parsing).
"""

from __future__ import annotations

import bisect
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
from dataclasses import asdict
from itertools import chain
from operator import attrgetter, lt
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.routing.errors import IndexBuildFailed
from worker.routing.index import (
    SLICE,
    IndexKind,
    IndexSettings,
    MainIndex,
    faiss,
    in_slices,
    new_index,
    pause,
    use_blas_from,
)
from worker.routing.types import RouteVectors

logger = logging.getLogger(__name__)

#: job folders are created under the index folder with this prefix (stale ones are removed)
JOB_PREFIX = "rebuild-"
JOB_FILE = "job.json"
VECTORS_FILE = "vectors.f32"
INDEX_FILE = "index.faiss"

_NAME: Callable[[RouteVectors], str] = attrgetter("route.name")
_DIGEST: Callable[[RouteVectors], str] = attrgetter("digest")
_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")
_Value = TypeVar("_Value")


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
    ordered = list(routes)
    names = _gather(ordered, _NAME)
    if not is_sorted(names):
        ordered.sort(key=_NAME)
        names = _gather(ordered, _NAME)
    if not ordered:
        return MainIndex.empty(dim, settings.faiss_threads)
    counts = np.fromiter(
        chain.from_iterable(map(len, map(_VECTORS, part)) for part in in_slices(ordered)),
        dtype=np.int64,
        count=len(ordered),
    )
    rows = int(counts.sum())
    kind = settings.kind_for(rows)
    index, path = None, None
    if rows and kind == "flat":
        index = _build_here(ordered, dim)
    elif rows:
        index, path = _build_in_child(ordered, kind, dim, rows, settings, directory)
    return MainIndex.assemble(
        dim,
        kind,
        index,
        names,
        _gather(ordered, _DIGEST),
        counts,
        tuple(ordered),
        settings.probe_lists,
        path,
        known=np.ones(len(ordered), dtype=np.bool_),
        threads=settings.faiss_threads,
    )


def merge_by_name(ordered: list[RouteVectors], extra: Sequence[RouteVectors]) -> list[RouteVectors]:
    """``ordered`` (sorted by name) with ``extra`` (any order, names not in ``ordered``) merged in.

    Slices of pointers are copied in C: no per-route Python work for the long sorted part.
    """
    if not extra:
        return ordered
    names = _gather(ordered, _NAME)
    merged: list[RouteVectors] = []
    previous = 0
    for rv in sorted(extra, key=_NAME):
        at = bisect.bisect_left(names, rv.name, previous)
        merged.extend(ordered[previous:at])
        merged.append(rv)
        previous = at
    merged.extend(ordered[previous:])
    return merged


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
    ordered: Sequence[RouteVectors],
    kind: IndexKind,
    dim: int,
    rows: int,
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
        _write_vectors(job / VECTORS_FILE, ordered)
        spec = {
            "kind": kind,
            "rows": rows,
            "dim": dim,
            "settings": asdict(settings),
            "parent": os.getpid(),
        }
        (job / JOB_FILE).write_text(json.dumps(spec))
        written = time.perf_counter()
        _run_child(job)
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


def map_index(path: Path) -> Any:
    """Read an index file, mapping its vectors into memory instead of copying them."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)


def _run_child(job: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    # Waiting in subprocess.run releases the GIL for the whole build.
    result = subprocess.run(
        [sys.executable, "-m", "worker.routing.builder", str(job)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise IndexBuildFailed(f"index build process exited with {result.returncode}: {' | '.join(tail)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Child process: build the index described in a job folder and write it there."""
    job = Path((sys.argv[1:] if argv is None else argv)[0])
    spec = json.loads((job / JOB_FILE).read_text())
    _exit_with(int(spec["parent"]))
    faiss.omp_set_num_threads(1)  # one thread: the same index on every replica
    settings = IndexSettings(**spec["settings"])
    use_blas_from(settings.blas_min_queries)
    rows, dim = int(spec["rows"]), int(spec["dim"])
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
