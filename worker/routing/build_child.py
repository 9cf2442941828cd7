"""The index build process: ``python -m worker.routing.build_child JOB_FOLDER``.

It reads the job folder (:mod:`worker.routing.build_job`), builds the Faiss index with one thread
(the same index on every replica) and writes it back there. It stops when its parent is gone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.routing.build_job import INDEX_FILE, JOB_FILE, VECTORS_FILE, assemble_vectors, ordered_from
from worker.routing.calibration import calibrate_probes
from worker.routing.index_settings import IndexKind, IndexSettings
from worker.routing.native import faiss, use_blas_from
from worker.routing.types import Vectors

#: bytes per write of the vectors file
_WRITE_BYTES = 16 * 1024 * 1024


def new_index(kind: IndexKind, vectors: Vectors, settings: IndexSettings) -> Any:
    """A Faiss index over ``vectors`` (rows in order). Deterministic for equal inputs.

    The caller sets faiss to one thread (k-means is then reproducible); rows are added with
    ``settings.add_threads``, which makes the same index.
    """
    rows, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.index_factory(dim, settings.list_factory(rows, dim), faiss.METRIC_INNER_PRODUCT)
        lists = faiss.extract_index_ivf(index)  # a "pq4" index wraps its lists in a float16 re-ranker
        lists.cp.max_points_per_centroid = settings.train_rows_per_list
        lists.cp.min_points_per_centroid = 1  # a deliberately small sample is no cause for a warning
        lists.cp.niter = settings.kmeans_iterations
        # k-means samples its rows (seeded); PQ codes are trained on a seeded sample of residuals
        index.train(vectors)
        lists.nprobe = settings.probe_lists
    step = 16_384
    faiss.omp_set_num_threads(settings.add_threads)  # the same index with any count (IndexSettings)
    try:
        for start in range(0, rows, step):
            index.add(np.ascontiguousarray(vectors[start : start + step], dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(1)
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = calibrate_probes(index, vectors, settings).probe_lists
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Child process: build the index described in a job folder and write it there."""
    job = Path((sys.argv[1:] if argv is None else argv)[0])
    spec = json.loads((job / JOB_FILE).read_text())
    _exit_with(int(spec["parent"]))
    faiss.omp_set_num_threads(1)  # one thread: the same index on every replica
    settings = IndexSettings(**spec["settings"])
    use_blas_from(settings.blas_min_queries)
    rows, dim = int(spec["rows"]), int(spec["dim"])
    writer = None
    if "fresh_vectors" in spec and "previous" not in spec and "previous_vectors" not in spec:
        # every row is in a fresh replay's spill file: the job's vectors file is made from it
        vectors = ordered_from(job, Path(spec["fresh_vectors"]), rows, dim)
    elif "previous" in spec or "previous_vectors" in spec:
        vectors = assemble_vectors(
            job,
            Path(spec["previous"]) if "previous" in spec else None,
            rows,
            dim,
            Path(spec["previous_vectors"]) if "previous_vectors" in spec else None,
            int(spec.get("previous_rows", 0)),
        )
        # the parent maps the whole set in order: written while the index is built (faiss releases
        # the GIL), the file costs the build no time on a machine with a second CPU
        writer = _write_in_background(vectors, job / VECTORS_FILE)
    else:
        vectors = np.memmap(job / VECTORS_FILE, dtype=np.float32, mode="r", shape=(rows, dim))
    index = new_index(spec["kind"], vectors, settings)
    if writer is not None:
        thread, failures = writer
        thread.join()
        if failures:
            raise failures[0]
    del vectors  # the vectors file stays: the parent keeps it beside the index (vectors_file)
    temporary = job / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, job / INDEX_FILE)
    return 0


def _write_in_background(vectors: Any, path: Path) -> tuple[threading.Thread, list[BaseException]]:
    """Start writing ``vectors`` to ``path`` (under a temporary name, renamed when complete); the
    thread, and the list its error goes into."""
    failures: list[BaseException] = []

    def write() -> None:
        try:
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "wb") as out:
                view = memoryview(vectors).cast("B")
                for start in range(0, len(view), _WRITE_BYTES):  # each write releases the GIL
                    out.write(view[start : start + _WRITE_BYTES])
            os.replace(temporary, path)
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            failures.append(error)

    thread = threading.Thread(target=write, name="vectors-writer", daemon=True)
    thread.start()
    return thread, failures


def _exit_with(parent: int) -> None:
    """Stop building when the process that asked for the index is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
