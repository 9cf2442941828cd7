"""Approximate (IVF) main indexes: built by a child process, deterministic, mapped from disk."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from worker.routing import (
    IndexSettings,
    Route,
    RouteTable,
    RouteVectors,
    build_job,
    build_process,
    builder,
    l2_normalise,
)
from worker.routing import table as table_module
from worker.routing.build_job import JOB_PREFIX
from worker.routing.build_layout import is_sorted, take
from worker.routing.builder import build_main
from worker.routing.calibration import LeaveOneOut, calibrate_probes
from worker.routing.errors import IndexBuildFailed
from worker.routing.index import codes_label, holds_raw_vectors, pq_candidates, shortlist
from worker.routing.index_file import MANIFEST
from worker.routing.native import faiss

DIM = 64
FP = "hashing-bow@test:0"
RandomRoute = Callable[..., RouteVectors]
#: every table of these tests is approximate, with a few vectors per inverted list
IVF = IndexSettings(approximate_above=0, list_rows=8, probe_lists=2)
#: the same with raw float32 lists (a rebuild can read unchanged rows back from them)
IVF_RAW = IndexSettings(approximate_above=0, list_rows=8, probe_lists=2, ivf_codes="float32")
#: the same with float16 codes in the lists (the default lists hold 4-bit PQ codes)
IVF_FP16 = IndexSettings(approximate_above=0, list_rows=8, probe_lists=2, ivf_codes="float16")


def _routes(count: int, seed: int) -> list[RouteVectors]:
    rng = np.random.default_rng(seed)
    return [
        RouteVectors(
            Route(f"r{i:03d}", ("a", "b", "c")),
            l2_normalise(rng.normal(size=(3, DIM))),
            np.zeros((0, DIM), dtype=np.float32),
            FP,
        )
        for i in range(count)
    ]


def _names(table: RouteTable, queries: np.ndarray, k: int = 5) -> list[list[str]]:
    snapshot = table.snapshot()
    hits = snapshot.search(queries, k)
    return [[snapshot.route_at(int(i)).name for i in row if i >= 0] for row in hits.route_ids]


def test_the_same_routes_give_the_same_index_in_any_order() -> None:
    routes = _routes(120, seed=0)
    one = build_main(routes, DIM, IVF)
    other = build_main(list(reversed(routes)), DIM, IVF)
    assert one.kind == "ivf"
    assert faiss.extract_index_ivf(one.index).nlist == IVF.lists_for(360) == 32
    assert one.names == tuple(sorted(rv.name for rv in routes))
    assert np.array_equal(faiss.serialize_index(one.index), faiss.serialize_index(other.index))


def test_short_writes_of_the_vectors_still_give_the_same_index(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = _routes(50, seed=13)
    expected = faiss.serialize_index(build_main(routes, DIM, IVF).index)
    real = os.writev

    def short(descriptor: int, buffers: list[memoryview]) -> int:
        # at most 1000 bytes per call, often ending inside a route's vectors
        return real(descriptor, [buffers[0][:1000]])

    monkeypatch.setattr(build_job.os, "writev", short)
    assert np.array_equal(faiss.serialize_index(build_main(routes, DIM, IVF).index), expected)


def test_routes_without_utterances_take_a_slot_and_no_rows() -> None:
    empty = RouteVectors(Route("r015-empty", ()), np.zeros((0, DIM), np.float32), np.zeros((0, DIM)), FP)
    main = build_main([*_routes(30, seed=15), empty], DIM, IVF)
    assert (main.kind, main.rows, main.index.ntotal) == ("ivf", 90, 90)
    slot = main.slot("r015-empty")
    assert slot is not None
    assert main.counts[slot] == 0
    assert main.route("r015-empty") is empty


def test_probing_every_list_is_exact() -> None:
    routes = _routes(80, seed=1)
    queries = l2_normalise(np.random.default_rng(2).normal(size=(10, DIM)))
    exhaustive = IndexSettings(approximate_above=0, list_rows=8, probe_lists=10**6)
    approximate = build_main(routes, DIM, exhaustive)
    exact = build_main(routes, DIM, IndexSettings())
    assert (approximate.kind, exact.kind) == ("ivf", "flat")
    found, truth = approximate.search_rows(queries, 10), exact.search_rows(queries, 10)
    assert np.array_equal(found[1], truth[1])
    assert np.allclose(found[0], truth[0], atol=1e-5)


def test_each_ivf_build_scans_enough_lists_for_its_recall_target() -> None:
    # Unclustered random vectors: the hardest case for inverted lists.
    routes = _routes(400, seed=31)
    vectors = np.concatenate([rv.utterance_vectors for rv in routes])
    loose = IndexSettings(approximate_above=0, list_rows=8, probe_lists=1, recall_target=0.0)
    strict = IndexSettings(approximate_above=0, list_rows=8, probe_lists=1, recall_target=0.99)
    assert faiss.extract_index_ivf(build_main(routes, DIM, loose).index).nprobe == 1
    main = build_main(routes, DIM, strict)
    probes = faiss.extract_index_ivf(main.index).nprobe
    assert 1 < probes < IndexSettings().max_probe_lists
    assert main.probe_lists == probes  # searches use what the build chose
    # Recall measured independently, on queries that are not stored vectors.
    queries = l2_normalise(vectors[:200] + 0.05 * np.random.default_rng(32).normal(size=(200, DIM)))
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = main.search_rows(queries, 10)[1]
    assert np.mean([np.intersect1d(t, f).size / 10 for t, f in zip(truth, found, strict=True)]) >= 0.97
    calibration = calibrate_probes(main.index, vectors, strict)
    assert calibration.probe_lists == probes
    assert calibration.recalls[-1][1] >= 0.99 > calibration.recalls[-2][1]


def test_a_persisted_ivf_index_is_mapped_and_reused(tmp_path: Path) -> None:
    routes = _routes(100, seed=3)
    table = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, IVF, tmp_path)
    (index_file,) = tmp_path.glob("main-ivf-*.faiss")
    assert not list(tmp_path.glob(JOB_PREFIX + "*"))  # the built file was moved into place
    reloaded = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, IVF, tmp_path)
    main = reloaded.snapshot().main
    assert (main.kind, main.path, reloaded.snapshot().overlay.rows) == ("ivf", index_file, 0)
    queries = l2_normalise(np.random.default_rng(4).normal(size=(8, DIM)))
    assert _names(reloaded, queries) == _names(table, queries)
    # Other list counts (changed settings) are not reused: the table rebuilds.
    other = IndexSettings(approximate_above=0, list_rows=4, probe_lists=2)
    rebuilt = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, other, tmp_path)
    assert faiss.extract_index_ivf(rebuilt.snapshot().main.index).nlist == other.lists_for(300)
    assert [p.name for p in tmp_path.glob("main-*.faiss")] != [index_file.name]


def test_a_persisted_index_of_other_codes_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    routes = _routes(100, seed=3)
    RouteTable.from_routes(routes, ((0, 100),), DIM, FP, IVF_RAW, tmp_path)
    (raw_file,) = tmp_path.glob("main-ivf-*.faiss")
    assert holds_raw_vectors(faiss.read_index(str(raw_file)))
    # settings now want PQ lists: the float32 index on disk is not served, a new one is built
    rebuilt = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, IVF, tmp_path).snapshot().main
    assert rebuilt.path != raw_file
    assert not holds_raw_vectors(rebuilt.index)
    assert rebuilt.path is not None
    assert rebuilt.path.parent == tmp_path
    assert orjson.loads((tmp_path / MANIFEST).read_bytes())["codes"] == codes_label(rebuilt.index) == "pq4x32"
    # nor is it taken for float16 lists, nor for PQ codes of another width
    for settings, label in ((IVF_FP16, "float16"), (dataclasses.replace(IVF, pq_dims=4), "pq4x16")):
        other = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, settings, tmp_path).snapshot().main
        assert codes_label(other.index) == label
        assert other.path != rebuilt.path
    # and back: a coded one is not taken for float32 lists either
    again = RouteTable.from_routes(routes, ((0, 100),), DIM, FP, IVF_RAW, tmp_path).snapshot().main
    assert holds_raw_vectors(again.index)
    assert again.path != rebuilt.path


@pytest.mark.parametrize("settings", [IVF_FP16, IVF], ids=["float16", "pq4"])
def test_coded_lists_give_exact_similarities_of_the_rows_they_find(settings: IndexSettings) -> None:
    # 240 rows: fewer than the PQ candidates of a query, so with every list probed all are ranked
    routes = _routes(80, seed=41)
    vectors = np.concatenate([rv.utterance_vectors for rv in routes])
    queries = l2_normalise(vectors[:40] + 0.1 * np.random.default_rng(42).normal(size=(40, DIM)))
    coded = build_main(routes, DIM, dataclasses.replace(settings, probe_lists=10**6))
    assert not holds_raw_vectors(coded.index)
    sims, rows = coded.search_rows(queries, 10)
    exact_sims, exact_rows = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    # every list probed: the re-scored shortlist is exact search, similarities to float32 precision
    assert np.array_equal(rows, exact_rows)
    assert np.allclose(sims, exact_sims, atol=1e-6)
    assert np.allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-6)
    # a similarity of the codes alone is further off than that
    coded_sims, shortlist = coded.index.search(queries, 10)
    assert not np.allclose(coded_sims, np.einsum("qd,qkd->qk", queries, vectors[shortlist]), atol=1e-6)


def test_pq_lists_hold_4_bit_codes_and_rank_their_candidates_by_8_bit_codes() -> None:
    routes = _routes(400, seed=43)
    vectors = np.concatenate([rv.utterance_vectors for rv in routes])
    main = build_main(routes, DIM, dataclasses.replace(IVF, probe_lists=10**6))
    assert isinstance(main.index, faiss.IndexRefine)
    lists = faiss.downcast_index(faiss.extract_index_ivf(main.index))
    assert isinstance(lists, faiss.IndexIVFPQFastScan)
    assert (lists.pq.M, lists.pq.nbits, lists.by_residual) == (DIM // IVF.pq_dims, 4, True)
    assert codes_label(main.index) == IVF.codes_label(DIM, main.rows) == "pq4x32"
    # the 1200 rows are more than the candidates: the shortlist is the 8-bit best of PQ's best
    queries = l2_normalise(vectors[:20] + 0.02 * np.random.default_rng(44).normal(size=(20, DIM)))
    coded_sims, rows = shortlist(main.index, queries, 26, 10**6)
    ranker = faiss.downcast_index(main.index.refine_index)
    assert isinstance(ranker, faiss.IndexScalarQuantizer)
    assert ranker.sq.qtype == faiss.ScalarQuantizer.QT_8bit
    decoded = ranker.reconstruct_n(0, main.rows)
    assert np.allclose(coded_sims, np.einsum("qd,qkd->qk", queries, decoded[rows]), atol=1e-5)
    assert np.all(np.diff(coded_sims, axis=1) <= 0)
    # (random vectors have no neighbours for PQ codes to tell apart, but each query has its own row)
    sims, found = main.search_rows(queries, 10)
    assert found[:, 0].tolist() == list(range(20))
    assert np.allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[found]), atol=1e-6)


def test_pq_candidates_cover_a_floor_per_query() -> None:
    assert pq_candidates(64) == 8.0  # 512 candidates for a 64-row shortlist
    assert pq_candidates(26) == 10.0  # at least 256
    assert pq_candidates(1) == 256.0


def test_settings_name_their_lists_and_codes() -> None:
    assert IVF.list_factory(360, DIM) == "IVF32,PQ32x4fsr,Refine(SQ8)"
    assert IndexSettings().list_factory(1_000_000, 384) == "IVF512,PQ192x4fsr,Refine(SQ8)"
    assert IndexSettings().codes_label(384, 1_000_000) == "pq4x192"
    assert IVF_FP16.list_factory(1_000, 384) == "IVF128,SQfp16"
    assert IVF_RAW.list_factory(1_000, 384) == "IVF128,Flat"
    # PQ codes of 2 dimensions cannot split an odd dimension, nor learn from a handful of rows
    assert IndexSettings().codes_label(383, 1_000_000) == "float16"
    assert IndexSettings().list_factory(70_000, 383) == "IVF512,SQfp16"
    assert IVF.codes_label(DIM, 63) == "float16"
    assert IVF.codes_label(DIM, 64) == "pq4x32"


def test_a_calibration_whose_recall_stops_rising_takes_the_fewest_lists_of_the_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # codes that hold recall at 0.9 however many lists are scanned: the target is out of reach
    routes = _routes(400, seed=45)
    vectors = np.concatenate([rv.utterance_vectors for rv in routes])
    index = build_main(routes, DIM, IVF).index
    monkeypatch.setattr(LeaveOneOut, "recall", lambda _self, _index, probes: min(0.9, probes / 10))
    settings = IndexSettings(approximate_above=0, list_rows=8, probe_lists=1, recall_target=0.99)
    calibration = calibrate_probes(index, vectors, settings)
    assert [probes for probes, _ in calibration.recalls] == [1, 2, 3, 4, 6, 8, 11, 16, 23]
    assert calibration.probe_lists == 11


def test_a_rebuild_swaps_in_a_mapped_index_while_an_old_one_is_searched(tmp_path: Path) -> None:
    routes = _routes(60, seed=5)
    table = RouteTable.from_routes(routes, ((0, 60),), DIM, FP, IVF, tmp_path)
    old = table.snapshot()
    assert old.main.path is not None
    queries = l2_normalise(np.random.default_rng(6).normal(size=(8, DIM)))
    before = _names(table, queries)
    replacement = _routes(61, seed=7)[60:]
    table.apply(replacement, ["r000"], ((0, 62),))
    table.rebuild(block=True)
    new = table.snapshot().main
    # the same route, its vectors now rows of the new index's vectors file
    held = new.route("r060")
    assert held is not None
    assert held.digest == replacement[0].digest
    assert np.array_equal(held.utterance_vectors, replacement[0].utterance_vectors)
    assert new.vectors_path is not None
    assert new.vectors_path.parent == tmp_path
    assert new.slot("r000") is None
    # The replaced index keeps its files while searches may still hold them ...
    assert {p.name for p in tmp_path.glob("main-*.faiss")} == {old.main.path.name, new.path.name}
    assert {p.name for p in tmp_path.glob("main-*.vectors")} == {
        old.main.path.with_suffix(".vectors").name,
        new.path.with_suffix(".vectors").name,
    }
    hits = old.search(queries, 5)
    assert [[old.route_at(int(i)).name for i in row] for row in hits.route_ids] == before
    # ... until the next rebuild replaces the index that replaced it.
    table.apply([], ["r001"], ((0, 63),))
    table.rebuild(block=True)
    newest = table.snapshot().main.path
    assert newest is not None
    assert {p.name for p in tmp_path.glob("main-*.faiss")} == {new.path.name, newest.name}
    assert {p.stem for p in tmp_path.glob("main-*.vectors")} == {new.path.stem, newest.stem}
    reloaded = RouteTable.from_routes(table.snapshot().ordered_routes(), ((0, 63),), DIM, FP, IVF, tmp_path)
    assert reloaded.snapshot().main.path == newest


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of vectors each build sends to its build process."""
    counts: list[int] = []
    real_write = build_job.write_vectors

    def counting(path: Path, part: list[RouteVectors]) -> None:
        counts.append(sum(rv.utterance_vectors.shape[0] for rv in part))
        real_write(path, part)

    monkeypatch.setattr(build_job, "write_vectors", counting)  # a rebuild's changed routes
    monkeypatch.setattr(builder, "write_vectors", counting)  # a first build's routes
    return counts


@pytest.mark.parametrize("source", ["vectors file", "raw lists"])
def test_a_rebuild_reads_unchanged_rows_from_the_old_index_and_builds_the_same_index(
    tmp_path: Path, sent: list[int], source: str
) -> None:
    routes = _routes(90, seed=21)
    table = RouteTable.from_routes(routes, ((0, 90),), DIM, FP, IVF_RAW, tmp_path)
    if source == "raw lists":
        vectors_file = table.snapshot().main.vectors_path
        assert vectors_file is not None
        vectors_file.unlink()  # the views stay valid; the build process reads the raw lists instead
    sent.clear()
    extra = _routes(95, seed=22)[90:]  # new names, sorted among and after the others
    renamed = [
        RouteVectors(Route(f"r{i:03d}x", ("z",)), rv.utterance_vectors[:1], rv.negative_vectors, FP)
        for i, rv in zip((4, 40, 89), extra[:3], strict=True)
    ]
    replaced = _routes(12, seed=23)[10:]  # r010 and r011 with other vectors
    table.apply([*extra, *renamed, *replaced], ["r000", "r050", "r051"], ((0, 91),))
    plan = table.snapshot().fold_plan()
    ordered = list(plan.routes)
    assert [rv.name for rv in ordered] == sorted(rv.name for rv in table.snapshot().routes())
    assert plan.names == tuple(rv.name for rv in ordered)
    assert plan.digests == tuple(rv.digest for rv in ordered)
    assert plan.counts.tolist() == [rv.utterance_vectors.shape[0] for rv in ordered]
    main = table.snapshot().main
    assert plan.carried is not None
    for rv, slot in zip(ordered, plan.carried.slots.tolist(), strict=True):
        assert (rv if slot < 0 else main.slot_routes[slot]) is rv
        assert (slot < 0) == any(rv is changed for changed in [*extra, *renamed, *replaced])
    table.rebuild(block=True)
    assert sent == [3 * 5 + 3 + 3 * 2]  # only the changed routes' vectors went to the build process
    rebuilt = table.snapshot().main
    from_scratch = build_main(ordered, DIM, IVF_RAW)
    assert rebuilt.names == from_scratch.names
    assert np.array_equal(faiss.serialize_index(rebuilt.index), faiss.serialize_index(from_scratch.index))


@pytest.mark.parametrize("vectors_file", [True, False])
def test_a_rebuild_over_coded_lists_reads_unchanged_rows_from_the_vectors_file_and_builds_the_same_index(
    tmp_path: Path, sent: list[int], vectors_file: bool
) -> None:
    # PQ codes are not the vectors: without the vectors file every vector is sent
    routes = _routes(90, seed=21)
    table = RouteTable.from_routes(routes, ((0, 90),), DIM, FP, IVF, tmp_path)
    assert not holds_raw_vectors(table.snapshot().main.index)
    if not vectors_file:
        path = table.snapshot().main.vectors_path
        assert path is not None
        path.unlink()
    sent.clear()
    table.apply(_routes(95, seed=22)[90:], ["r000"], ((0, 91),))
    table.rebuild(block=True)
    assert sent == ([5 * 3] if vectors_file else [94 * 3])
    assert np.array_equal(
        faiss.serialize_index(table.snapshot().main.index),
        faiss.serialize_index(build_main(table.snapshot().ordered_routes(), DIM, IVF).index),
    )


def test_a_rebuild_whose_old_index_file_is_gone_sends_every_vector(tmp_path: Path, sent: list[int]) -> None:
    routes = _routes(60, seed=24)
    table = RouteTable.from_routes(routes, ((0, 60),), DIM, FP, IVF, tmp_path)
    old = table.snapshot().main.path
    assert old is not None
    old.unlink()  # the mapping stays valid; the build process cannot read the file any more
    old.with_suffix(".vectors").unlink()  # nor its vectors file
    sent.clear()
    table.apply(_routes(61, seed=25)[60:], [], ((0, 61),))
    table.rebuild(block=True)
    assert sent == [183]
    assert table.snapshot().main.rows == 183
    assert np.array_equal(
        faiss.serialize_index(table.snapshot().main.index),
        faiss.serialize_index(build_main(table.snapshot().ordered_routes(), DIM, IVF).index),
    )


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the idle scheduling class is a Linux feature")
@pytest.mark.parametrize("idle_s", [60.0, 0.0])
def test_the_build_process_starts_idle_and_gets_its_share_when_starved(
    monkeypatch: pytest.MonkeyPatch, idle_s: float
) -> None:
    routes = _routes(40, seed=30)
    expected = faiss.serialize_index(build_main(routes, DIM, IVF).index)
    calls: list[tuple[bool, int]] = []
    real = build_process.set_idle

    def recording(pid: int, idle: bool) -> bool:
        done = real(pid, idle)
        calls.append((idle, os.sched_getscheduler(pid)))
        return done

    monkeypatch.setattr(build_process, "set_idle", recording)
    settings = IndexSettings(approximate_above=0, list_rows=8, probe_lists=2, build_idle_s=idle_s)
    built = build_main(routes, DIM, settings)
    # 60 s: idle the whole build; 0 s: "starved" at once, so moved back to the normal class.
    wanted = [(True, os.SCHED_IDLE)] + ([(False, os.SCHED_OTHER)] if idle_s == 0 else [])
    assert calls == wanted
    assert np.array_equal(faiss.serialize_index(built.index), expected)


def test_a_table_without_index_dir_maps_its_index_from_a_private_folder() -> None:
    table = RouteTable(DIM, FP, IVF)
    table.apply(_routes(40, seed=14), [], ((0, 40),))
    table.rebuild(block=True)
    path = table.snapshot().main.path
    assert path is not None
    assert path.exists()
    folder = path.parent
    del table
    gc.collect()
    assert not folder.exists()


def test_a_failed_build_raises_and_leaves_the_table_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = _routes(30, seed=8)
    table = RouteTable(DIM, FP, IVF, tmp_path)
    table.apply(routes, [], ((0, 30),))
    monkeypatch.setattr(sys, "executable", "false")  # the build process exits with an error
    with pytest.raises(IndexBuildFailed, match="exited with 1"):
        table.rebuild(block=True)
    assert not list(tmp_path.glob(JOB_PREFIX + "*"))
    assert table.snapshot().overlay.rows == 90
    table.rebuild(block=False)
    table.wait_for_rebuild()
    assert isinstance(table.last_rebuild_error, IndexBuildFailed)
    assert _names(table, routes[4].utterance_vectors[:1], k=1) == [["r004"]]


def test_stale_job_folders_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / (JOB_PREFIX + "left-by-a-crash")
    stale.mkdir(parents=True)
    (stale / "vectors.f32").write_bytes(b"\0" * 16)
    RouteTable.from_routes(_routes(20, seed=9), (), DIM, FP, IVF, tmp_path)
    assert not stale.exists()
    assert (tmp_path / MANIFEST).exists()


def test_take_and_is_sorted() -> None:
    items = tuple(f"{i:05d}" for i in range(5_000))
    for picked in ([], [7], [4_999, 0, 2_048, 2_047, 3]):
        assert take(items, np.array(picked, dtype=np.int64)) == tuple(items[i] for i in picked)
    assert take(items, np.arange(5_000)) == items
    assert not is_sorted(["b", "a"])
    assert not is_sorted(["a", "a"])
    assert is_sorted([])
    assert is_sorted(["a"])
    # Checked in slices: an inversion right at a slice boundary is found too.
    names = [f"{i:05d}" for i in range(5_000)]
    assert is_sorted(names)
    for at in (2_047, 2_048, 4_095, 4_998):
        swapped = [*names[:at], names[at + 1], names[at], *names[at + 2 :]]
        assert not is_sorted(swapped), at


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a Linux feature")
def test_background_rebuilds_run_at_lower_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = table_module.build_laid_out

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(*args, **kwargs)

    monkeypatch.setattr(table_module, "build_laid_out", recording)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    table = RouteTable(DIM, FP, IndexSettings(build_niceness=7))
    table.apply(_routes(5, seed=11), [], ((0, 5),))
    table.rebuild(block=False)
    table.wait_for_rebuild()
    table.apply(_routes(6, seed=12)[5:], [], ((0, 6),))
    table.rebuild(block=True)
    assert seen == [max(own, 7), own]
    assert table.snapshot().overlay.rows == 0


def test_ivf_lists_stop_growing_at_max_lists() -> None:
    settings = IndexSettings(list_rows=64, max_lists=2048)
    assert settings.lists_for(64 * 1024) == 1024
    assert settings.lists_for(1_000_000) == 2048
    assert IndexSettings(list_rows=8, max_lists=16).lists_for(360) == 16


def test_probing_more_lists_than_an_index_has_probes_them_all() -> None:
    # faiss 1.15's fast-scan lists answered every query alike when asked for more lists than held
    routes = _routes(100, seed=46)
    vectors = np.concatenate([rv.utterance_vectors for rv in routes])
    main = build_main(routes, DIM, IVF)
    lists = int(faiss.extract_index_ivf(main.index).nlist)
    queries = l2_normalise(vectors[:10] + 0.02 * np.random.default_rng(47).normal(size=(10, DIM)))
    every = shortlist(main.index, queries, 26, lists)
    beyond = shortlist(main.index, queries, 26, lists * 100)
    assert np.array_equal(every[1], beyond[1])
    assert every[1][:, 0].tolist() == list(range(10))
