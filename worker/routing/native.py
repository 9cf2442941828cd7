"""How the engine's native work shares the CPU: faiss's OpenMP threads, its BLAS use, and the GIL.

Searches run beside background work (rebuilds, persisting, mutations) on a small machine, so
every searching thread sets its own OpenMP thread count, and background Python work runs in
slices with a pause between them that hands the GIL to a waiting search.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import faiss as _faiss

_Item = TypeVar("_Item")

logger = logging.getLogger(__name__)

# faiss ships partial type stubs that vary between releases: use it untyped.
faiss: Any = _faiss

#: Items handled between two pauses by background work that holds the GIL (see :func:`in_slices`).
SLICE = 2_048

_omp = threading.local()


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


def spread_sample(count: int, at_most: int) -> list[int]:
    """Up to ``at_most`` positions evenly spread over ``range(count)``, then the last one: the few
    items a spot check looks at (empty when ``count`` is 0)."""
    if count <= 0:
        return []
    step = max(1, count // at_most)
    return [*range(0, count, step)[:at_most], count - 1]


def in_slices(items: Sequence[_Item], size: int = SLICE) -> Iterator[Sequence[_Item]]:
    """``items`` in consecutive slices of ``size``, pausing (:func:`pause`) between slices."""
    for start in range(0, len(items), size):
        if start:
            pause()
        yield items[start : start + size]


def pwrite_all(descriptor: int, views: Sequence[memoryview], offset: int, name: object) -> int:
    """Write ``views`` (at most IOV_MAX, 1024 on Linux) one after the other at ``offset`` of the
    file ``name`` is open on, short writes resumed; the offset after them. ``os.pwritev`` releases
    the GIL while the kernel copies."""
    part = list(views)
    while part:
        written = os.pwritev(descriptor, part, offset)
        if not written:
            raise OSError(f"no progress writing {name}")
        offset += written
        while part and written >= part[0].nbytes:
            written -= part.pop(0).nbytes
        if written:  # a short write ends inside part[0]
            part[0] = part[0][written:]
    return offset


@contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Python's cyclic garbage collector off while a bulk of long-lived, acyclic objects is made
    (routes read from the store): each collection meanwhile would only scan them again.

    With ``freeze`` every object alive at the end is moved out of the collector's generations
    (``gc.freeze``): the 1M+ objects of a 200k-route table were otherwise scanned again by the
    collections right after (a third of a second each). They are still freed when no longer
    referenced (reference counting); only cyclic garbage alive at that moment would stay.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A replay frees most of what it allocates (each record's JSON and base64 text) between the
    vectors it keeps, and the allocator keeps those holes: a 1M-vector replica ended its replay
    with hundreds of MB resident that nothing used. Walks the whole heap (a fraction of a second
    at that size, other threads' allocations wait meanwhile): call it after bulk work, not often.
    """
    trim = _malloc_trim()
    if trim is not None:
        began = time.perf_counter()
        trim(0)
        logger.info("returned the heap's free pages to the system in %.2f s", time.perf_counter() - began)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only (not musl, not macOS)
    except OSError:
        return None
