"""A fresh replay's spill file: routes hold views of what was written instead of heap copies, and
the first index build reads their rows from it, making the same index, vectors file and answers
(with its rows added by every CPU: the same index too)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_vectors_file import DIM, FP, IVF, VERSION, _by_name, _on_file, _routes, _same_answers

from worker.routing import RouteTable
from worker.routing import spill as spill_module
from worker.routing.builder import build_main
from worker.routing.spill import SpillFile


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
