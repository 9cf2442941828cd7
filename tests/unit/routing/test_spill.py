"""A fresh replay's spill file: routes hold views of what was written instead of heap copies, and
the first index build reads their rows from it, making the same index, vectors file and answers
(with its rows added by every CPU: the same index too)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from test_vectors_file import DIM, FP, IVF, VERSION, _by_name, _on_file, _routes, _same_answers

from worker.routing import RouteTable, build_job
from worker.routing import spill as spill_module
from worker.routing.builder import build_main
from worker.routing.errors import IndexBuildFailed
from worker.routing.spill import SpillFile, SpillRows


def test_spilled_routes_are_views_of_the_file_with_the_same_bytes_and_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill_module, "_SEGMENT_BYTES", 4096)  # 16 rows of DIM 64: a few segments
    (tmp_path / "replay-stale.f32").write_bytes(b"left by a crash")
    spill = SpillFile(tmp_path, DIM)
    assert not (tmp_path / "replay-stale.f32").exists()
    routes = _routes(40)
    spilled = [*spill.spill(routes[:7]), *spill.spill(routes[7:30]), *spill.spill(routes[30:])]
    for rv, on_file in zip(routes, spilled, strict=True):
        assert on_file.digest == rv.digest
        assert on_file.route is rv.route
        assert np.array_equal(on_file.utterance_vectors, rv.utterance_vectors)
        assert on_file.negative_vectors is rv.negative_vectors
        if len(rv.utterance_vectors):
            assert _on_file(on_file.utterance_vectors)
            assert not on_file.utterance_vectors.flags.writeable
    written = np.fromfile(spill.path, dtype=np.float32).reshape(-1, DIM)
    first_rows = spill.on_file().first_rows
    for rv in routes:
        rows = written[first_rows[rv.name] : first_rows[rv.name] + len(rv.utterance_vectors)]
        assert np.array_equal(rows, rv.utterance_vectors)
    again = spill.spill([routes[5]])  # a route spilled again: its latest rows are the ones named
    assert spill.on_file().first_rows[routes[5].name] > first_rows[routes[5].name]
    spill.remove()
    assert not spill.path.exists()
    assert np.array_equal(again[0].utterance_vectors, routes[5].utterance_vectors)  # still mapped


def test_an_index_built_from_the_spill_file_is_the_one_built_from_the_routes(tmp_path: Path) -> None:
    routes = _routes(60)
    spill = SpillFile(tmp_path / "spilled.index", DIM)
    spilled = [*spill.spill(routes[40:]), *spill.spill(routes[:40])]  # not in name order
    from_file = RouteTable(DIM, FP, IVF, tmp_path / "spilled.index")
    from_file.install(spilled, VERSION, on_file=spill.on_file())
    spill.remove()
    sent = RouteTable(DIM, FP, IVF, tmp_path / "sent.index")
    sent.install(routes, VERSION)
    _same_answers(from_file, sent)
    main_a, main_b = from_file.snapshot().main, sent.snapshot().main
    assert main_a.vectors_path is not None
    assert main_b.vectors_path is not None
    assert main_a.vectors_path.read_bytes() == main_b.vectors_path.read_bytes()
    assert main_a.path is not None
    assert main_b.path is not None
    assert main_a.path.read_bytes() == main_b.path.read_bytes()
    held = _by_name(from_file)
    assert all(_on_file(rv.utterance_vectors) for rv in held.values() if len(rv.utterance_vectors))
    assert not list((tmp_path / "spilled.index").glob("replay-*"))


def test_a_first_build_adding_rows_with_more_threads_makes_the_same_index(tmp_path: Path) -> None:
    routes = _routes(400)
    built = []
    for threads in (1, 2):
        directory = tmp_path / f"threads-{threads}"
        main = build_main(routes, DIM, dataclasses.replace(IVF, add_threads=threads), directory)
        assert main.path is not None
        built.append(main.path.read_bytes())
    assert built[0] == built[1]


def test_segments_set_apart_for_other_writers_are_never_written_over(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path, DIM)
    routes = _routes(12)
    first = spill.reserve(40)  # filled by another writer (a replay's decode process)
    own = spill.spill(routes[:4])
    second = spill.reserve(8)
    more = spill.spill(routes[4:])
    assert first.segment_start == first.rows == 0
    assert first.segment_rows >= 40
    assert second.segment_start >= first.segment_start + first.segment_rows
    rows = {spill.on_file().first_rows[rv.name] for rv in [*own, *more]}
    for region in (first, second):
        assert not rows & set(range(region.segment_start, region.segment_start + region.segment_rows))
    writer = SpillRows(os.open(spill.path, os.O_RDWR), spill.path, DIM)
    matrices = [rv.utterance_vectors for rv in routes[:2]]
    at, start = writer.append(second, matrices, grow=False)
    assert start == second.segment_start
    with pytest.raises(IndexBuildFailed, match="do not fit"):
        writer.append(at, [rv.utterance_vectors for rv in routes], grow=False)
    os.close(writer.descriptor)
    spill.adopt(at)
    assert np.array_equal(spill.rows(start, len(matrices[0])), matrices[0])
    with pytest.raises(IndexBuildFailed, match="not in its segment"):
        spill.rows(first.segment_start, 1)
    for rv, on_file in zip(routes, [*own, *more], strict=True):  # the own rows are intact
        assert np.array_equal(on_file.utterance_vectors, rv.utterance_vectors)
    spill.remove()


def test_the_jobs_vectors_file_is_allocated_at_once_or_else_extended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocated = tmp_path / "allocated"
    with open(allocated, "wb") as out:
        build_job._allocate(out.fileno(), 1 << 20)
    assert allocated.stat().st_size == 1 << 20
    assert allocated.stat().st_blocks * 512 >= 1 << 20  # blocks there already, not a sparse file

    def unsupported(descriptor: int, offset: int, size: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as out:
        build_job._allocate(out.fileno(), 1 << 20)
    assert sparse.stat().st_size == 1 << 20

    def full(descriptor: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with open(tmp_path / "full", "wb") as out, pytest.raises(OSError, match="No space"):
        build_job._allocate(out.fileno(), 1 << 20)  # now, not later in a write through a mapping
