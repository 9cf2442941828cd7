from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from worker.routing import (
    DimensionMismatch,
    FingerprintMismatch,
    IndexSettings,
    InvalidRoute,
    Route,
    RouteTable,
    RouteVectors,
    l2_normalise,
)
from worker.routing.index_file import MANIFEST

DIM = 64
FP = "hashing-bow@test:0"
RandomRoute = Callable[..., RouteVectors]


def _names(table: RouteTable, queries: np.ndarray, k: int = 5) -> list[list[str]]:
    snapshot = table.snapshot()
    hits = snapshot.search(queries, k)
    return [[snapshot.route_at(int(i)).name for i in row if i >= 0] for row in hits.route_ids]


def _table(routes: list[RouteVectors], **settings: int) -> RouteTable:
    return RouteTable.from_routes(routes, ((0, len(routes)),), DIM, FP, IndexSettings(**settings))


def test_search_finds_the_route_of_an_exact_utterance(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(0)
    routes = [random_route(f"r{i}", rng) for i in range(20)]
    table = _table(routes)
    queries = np.stack([routes[7].utterance_vectors[1], routes[3].utterance_vectors[0]])
    assert [names[0] for names in _names(table, queries)] == ["r7", "r3"]
    assert table.snapshot().overlay.rows == 0


def test_replacing_a_main_route_masks_its_old_vectors(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(1)
    routes = [random_route(f"r{i}", rng) for i in range(10)]
    table = _table(routes)
    old = routes[4].utterance_vectors
    new = random_route("r4", rng)
    table.apply([new], [], ((0, 11),))
    hits = _names(table, np.concatenate([old, new.utterance_vectors]), k=3)
    # The old utterances no longer lead to r4 and the new ones do, straight from the overlay.
    assert all("r4" not in row[:1] for row in hits[:3])
    assert all(row[0] == "r4" for row in hits[3:])
    assert table.snapshot().route("r4") is new
    assert len(table) == 10
    assert table.version == ((0, 11),)


def test_deleting_a_main_route_hides_it(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(2)
    routes = [random_route(f"r{i}", rng) for i in range(10)]
    table = _table(routes)
    table.apply([], ["r2", "never-existed"], ((0, 11),))
    hits = _names(table, routes[2].utterance_vectors, k=30)
    assert all("r2" not in row for row in hits)
    # Every other route is still found: masked rows are over-fetched around, not returned short.
    assert all(len(row) == 27 for row in hits)
    assert "r2" not in table.route_names()
    assert len(table) == 9


def test_rebuild_folds_the_overlay_and_keeps_answers(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(3)
    routes = [random_route(f"r{i}", rng) for i in range(10)]
    table = _table(routes)
    table.apply([random_route("r1", rng), random_route("extra", rng)], ["r5"], ((0, 12),))
    queries = l2_normalise(rng.normal(size=(16, DIM)))
    before = _names(table, queries)
    digest = table.digest()
    table.rebuild(block=True)
    snapshot = table.snapshot()
    assert snapshot.overlay.rows == 0
    assert not snapshot.overlay.masked.any()
    assert _names(table, queries) == before
    assert table.digest() == digest
    assert "r5" not in snapshot.main.names


def test_background_rebuild_triggers_when_overlay_grows(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(4)
    table = _table([random_route(f"r{i}", rng) for i in range(5)], overlay_rebuild_rows=6)
    table.apply([random_route("a", rng), random_route("b", rng)], [], ((0, 7),))
    table.wait_for_rebuild()
    assert table.last_rebuild_error is None
    assert table.snapshot().overlay.rows == 0
    assert {"a", "b"} <= set(table.snapshot().main.names)


def test_digest_is_independent_of_history(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(5)
    routes = [random_route(f"r{i}", rng) for i in range(6)]
    replacement = random_route("r0", rng)
    one = _table(routes)
    one.apply([replacement], ["r3"], ((0, 8),))
    other = RouteTable(DIM, FP)
    other.apply([replacement, *routes[1:3]], [], ((0, 3),))
    other.rebuild(block=True)
    other.apply(routes[4:], [], ((0, 8),))
    assert one.digest() == other.digest()
    other.apply([random_route("r9", rng)], [], ((0, 9),))
    assert one.digest() != other.digest()


def test_wrong_model_or_dimension_is_refused(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(6)
    table = RouteTable(DIM, "another-model")
    with pytest.raises(FingerprintMismatch):
        table.apply([random_route("r", rng)], [], ())
    table = RouteTable(DIM + 1, FP)
    with pytest.raises(DimensionMismatch):
        table.apply([random_route("r", rng)], [], ())
    with pytest.raises(DimensionMismatch):
        table.snapshot().search(np.zeros((1, DIM), dtype=np.float32), 3)


def test_a_batch_may_not_upsert_and_delete_one_route(random_route: RandomRoute) -> None:
    table = RouteTable(DIM, FP)
    with pytest.raises(InvalidRoute):
        table.apply([random_route("r", np.random.default_rng(7))], ["r"], ())


def test_empty_table_answers_nothing() -> None:
    hits = RouteTable(DIM, FP).snapshot().search(np.ones((2, DIM), dtype=np.float32), 4)
    assert (hits.route_ids == -1).all()
    assert np.isneginf(hits.similarities).all()


def test_persisted_index_is_reused_and_partly_reused(tmp_path: Path, random_route: RandomRoute) -> None:
    rng = np.random.default_rng(8)
    routes = [random_route(f"r{i}", rng) for i in range(8)]
    table = RouteTable.from_routes(routes, ((0, 8),), DIM, FP, index_dir=tmp_path)
    assert (tmp_path / MANIFEST).exists()
    reloaded = RouteTable.from_routes(routes, ((0, 8),), DIM, FP, index_dir=tmp_path)
    assert reloaded.snapshot().overlay.rows == 0
    assert reloaded.snapshot().main.index is not table.snapshot().main.index
    queries = l2_normalise(rng.normal(size=(8, DIM)))
    assert _names(reloaded, queries) == _names(table, queries)
    # After a change that never reached a rebuild, the stored routes differ from the persisted index:
    # unchanged routes come from the file, the changed and deleted ones are masked and overlaid.
    changed = [random_route("r0", rng), *routes[1:6], random_route("new", rng)]
    restarted = RouteTable.from_routes(changed, ((0, 11),), DIM, FP, index_dir=tmp_path)
    snapshot = restarted.snapshot()
    assert set(snapshot.overlay.routes) == {"r0", "new"}
    assert snapshot.overlay.masked.sum() == 3  # r0 replaced, r6 and r7 gone
    fresh = RouteTable.from_routes(changed, ((0, 11),), DIM, FP)
    assert restarted.digest() == fresh.digest()
    assert _names(restarted, queries) == _names(fresh, queries)


def test_a_mismatched_persisted_index_is_ignored(tmp_path: Path, random_route: RandomRoute) -> None:
    rng = np.random.default_rng(9)
    routes = [random_route(f"r{i}", rng) for i in range(4)]
    RouteTable.from_routes(routes, (), DIM, FP, index_dir=tmp_path)
    (index_file,) = tmp_path.glob("main-*.faiss")
    index_file.write_bytes(b"not an index")
    table = RouteTable.from_routes(routes, (), DIM, FP, index_dir=tmp_path)
    assert table.snapshot().overlay.rows == 0
    assert len(table.snapshot().main.names) == 4
    other_model = RouteTable.from_routes([], (), DIM, "other-model", index_dir=tmp_path)
    assert len(other_model) == 0


def test_ivf_recall_at_10_on_clustered_data() -> None:
    rng = np.random.default_rng(10)
    dim, clusters, per_route, count = 32, 60, 6, 1000
    centres = l2_normalise(rng.normal(size=(clusters, dim)))

    def around_centres(n: int) -> np.ndarray:
        return l2_normalise(centres[rng.integers(0, clusters, size=n)] + 0.06 * rng.normal(size=(n, dim)))

    points = around_centres(per_route * count)
    routes = [
        RouteVectors(
            Route(f"r{i:04d}", tuple(f"u{j}" for j in range(per_route))),
            points[i * per_route : (i + 1) * per_route],
            np.zeros((0, dim), dtype=np.float32),
            FP,
        )
        for i in range(count)
    ]
    queries = around_centres(200)
    exact = RouteTable.from_routes(routes, (), dim, FP).snapshot().main
    approximate = (
        RouteTable.from_routes(routes, (), dim, FP, IndexSettings(approximate_above=1000)).snapshot().main
    )
    assert (exact.kind, approximate.kind) == ("flat", "ivf")
    # Both lay rows out in route-name order, so row ids are comparable.
    _, truth = exact.index.search(queries, 10)
    # (its float16 shortlist re-scored exactly: what searches are served)
    _, found = approximate.search_rows(queries, 10)
    recall = np.mean([len(np.intersect1d(t, f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.99
    # Searching through the table (slots, masks) agrees with the raw index.
    slots = approximate.search(queries, 10, np.zeros(count, dtype=bool))[1]
    assert (slots == approximate.row_slot[found]).all()


def test_mutations_during_a_rebuild_stay_visible(
    monkeypatch: pytest.MonkeyPatch, random_route: RandomRoute
) -> None:
    from worker.routing.builder import build_laid_out

    rng = np.random.default_rng(11)
    routes = [random_route(f"r{i}", rng) for i in range(6)]
    table = _table(routes)
    table.apply([random_route("before", rng)], [], ((0, 7),))
    during = random_route("r1", rng)

    def build_while_mutating(*args: object, **kwargs: object) -> object:
        # A mutation lands after the rebuild took its snapshot, before it swaps.
        table.apply([during, random_route("added", rng)], ["r2", "before"], ((0, 10),))
        return build_laid_out(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.routing.table.build_laid_out", build_while_mutating)
    table.rebuild(block=True)
    snapshot = table.snapshot()
    assert "before" in snapshot.main.names  # folded in by this rebuild ...
    assert snapshot.route("before") is None  # ... but deleted meanwhile, so masked
    assert snapshot.route("r1") is during
    assert snapshot.route("r2") is None
    assert set(snapshot.overlay.routes) == {"r1", "added"}
    assert table.version == ((0, 10),)
    assert table.route_names() == ["added", "r0", "r1", "r3", "r4", "r5"]
    hits = _names(table, during.utterance_vectors, k=1)
    assert hits == [["r1"]] * 3


@pytest.mark.parametrize("settings", [IndexSettings(), IndexSettings(approximate_above=0, list_rows=8)])
def test_install_fills_an_empty_table_with_a_main_index_and_no_overlay(
    tmp_path: Path, random_route: RandomRoute, settings: IndexSettings
) -> None:
    rng = np.random.default_rng(12)
    routes = [random_route(f"r{i:02d}", rng) for i in range(40)]
    installed = RouteTable(DIM, FP, settings, index_dir=tmp_path)
    installed.install(list(reversed(routes)), ((0, 40),))
    snapshot = installed.snapshot()
    assert snapshot.overlay.rows == 0
    assert snapshot.main.rows == 120
    assert snapshot.main.kind == settings.kind_for(120)
    assert installed.version == ((0, 40),)
    applied = RouteTable.from_routes(routes, ((0, 40),), DIM, FP, settings)
    assert installed.digest() == applied.digest()
    queries = l2_normalise(rng.normal(size=(6, DIM)))
    assert _names(installed, queries) == _names(applied, queries)
    # persisted like a rebuild's index: a restart maps it and overlays nothing
    restarted = RouteTable.from_routes(routes, ((0, 40),), DIM, FP, settings, index_dir=tmp_path)
    assert restarted.snapshot().overlay.rows == 0
    assert _names(restarted, queries) == _names(installed, queries)


def test_install_refuses_a_table_that_holds_routes(random_route: RandomRoute) -> None:
    rng = np.random.default_rng(13)
    table = RouteTable(DIM, FP)
    table.apply([random_route("a", rng)], (), ((0, 1),))
    with pytest.raises(ValueError, match="empty table"):
        table.install([random_route("b", rng)], ((0, 2),))
    assert table.route_names() == ["a"]
