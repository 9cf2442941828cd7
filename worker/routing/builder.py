"""Building the main index off to the side of the searches.

Exact (flat) indexes are small and built in the calling thread, slice by slice. Approximate (IVF)
indexes are built by a child process (:mod:`worker.routing.build_child`, started by
:mod:`worker.routing.build_process`) at low priority: its k-means and list assignment then neither
hold this process's GIL nor take CPU time the searches want. The child writes the index file into
a job folder (:mod:`worker.routing.build_job`) and the parent maps that file into memory (no copy,
no parsing). The child keeps the vectors file it built from: the parent maps it too and the index's
routes hold row views of it instead of heap copies (:mod:`worker.routing.vectors_file`).

A rebuild that folds an overlay into an approximate main index sends only the overlay's vectors
and, per route, where its rows are in the current main index's vectors file (or, without one, its
raw float32 lists), which the child reads itself: sending all of them (384 MB at 250k vectors)
made the serving process copy them through the kernel and held up its searches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from worker.routing.build_job import (
    INDEX_FILE,
    JOB_FILE,
    JOB_PREFIX,
    VECTORS_FILE,
    write_changes,
    write_on_file,
    write_vectors,
)
from worker.routing.build_layout import Layout
from worker.routing.build_process import run_build_process
from worker.routing.calibration import searched_lists
from worker.routing.errors import IndexBuildFailed
from worker.routing.index import MainIndex, map_index
from worker.routing.index_settings import IndexKind, IndexSettings
from worker.routing.native import faiss, in_slices
from worker.routing.spill import OnFile
from worker.routing.types import RouteVectors
from worker.routing.vectors_file import map_vectors, routes_on_file

logger = logging.getLogger(__name__)

_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")


def build_main(
    routes: Sequence[RouteVectors],
    dim: int,
    settings: IndexSettings,
    directory: Path | None = None,
    on_file: OnFile | None = None,
) -> MainIndex:
    """Build a main index over ``routes`` (ideally already in name order; sorted otherwise).

    An approximate index is built by a child process (at the calling thread's priority, which it
    inherits) in a job folder under ``directory`` (the system's temporary folder when None) and
    mapped from there; :func:`~worker.routing.index_file.place_index` moves the file into place.
    ``on_file`` says where the routes' vectors already are (a fresh replay's spill file): the
    child process then reads them there instead of being sent them.
    """
    return build_laid_out(Layout.of(routes), dim, settings, directory, on_file)


def build_laid_out(
    layout: Layout,
    dim: int,
    settings: IndexSettings,
    directory: Path | None = None,
    on_file: OnFile | None = None,
) -> MainIndex:
    """Build a main index over ``layout``'s routes (see :func:`build_main`)."""
    if not layout.routes:
        return MainIndex.empty(dim, settings.faiss_threads)
    rows = int(layout.counts.sum())
    kind = settings.kind_for(rows)
    index, path, routes = None, None, layout.routes
    vectors_path = None
    if rows and kind == "flat":
        index = _build_here(layout.routes, dim)
    elif rows:
        index, path = _build_in_child(layout, kind, dim, settings, directory, on_file)
        kept = None if path is None else path.with_name(VECTORS_FILE)
        vectors = None if kept is None else map_vectors(kept, rows, dim)
        if vectors is not None:
            # the slots' vectors are in the file the child kept: the routes' heap copies can go
            routes = routes_on_file(layout.routes, vectors, layout.counts)
            vectors_path = kept
    return MainIndex.assemble(
        dim,
        kind,
        index,
        layout.names,
        layout.digests,
        layout.counts,
        routes,
        searched_lists(index, kind, settings),
        path,
        known=np.ones(len(layout.routes), dtype=np.bool_),
        threads=settings.faiss_threads,
        vectors_path=vectors_path,
    )


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
    on_file: OnFile | None = None,
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
        if on_file is not None and carried is None and on_file.dim == dim:
            spec["fresh_vectors"] = str(on_file.path)
            write_on_file(job, layout, on_file)
        elif carried is None or not carried.usable_for(len(layout.routes)):
            write_vectors(job / VECTORS_FILE, layout.routes)
        else:
            source = carried.vectors_file()
            if source is not None:
                spec["previous_vectors"] = str(source)
                spec["previous_rows"] = carried.previous.rows
            else:
                spec["previous"] = str(carried.previous.path)
            write_changes(job, layout, carried)
        (job / JOB_FILE).write_text(json.dumps(spec))
        written = time.perf_counter()
        run_build_process(job, settings.build_idle_s)
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
