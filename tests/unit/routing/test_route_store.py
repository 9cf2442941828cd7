from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from worker.routing import (
    OffsetRegression,
    Route,
    RouteStore,
    RouteTable,
    RouteVectors,
    SchemaTooNew,
    StoreError,
)
from worker.routing import store as store_module
from worker.routing.store import SCHEMA_VERSION

MakeRoute = Callable[..., RouteVectors]


def _same(a: RouteVectors, b: RouteVectors) -> bool:
    return (
        a.route == b.route
        and a.fingerprint == b.fingerprint
        and a.digest == b.digest
        and np.array_equal(a.utterance_vectors, b.utterance_vectors)
        and np.array_equal(a.negative_vectors, b.negative_vectors)
    )


def test_apply_then_load_round_trips(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    billing = make_route("billing", ["pay my bill", "invoice"], ["pay a friend"], 0.7)
    weather = make_route("weather", ["will it rain"])
    store.apply([billing, weather], [], {0: 2, 1: 1})
    store.apply([], ["weather"], {1: 2})
    state = store.load()
    assert state.version == ((0, 2), (1, 2))
    assert [rv.name for rv in state.routes] == ["billing"]
    assert _same(state.routes[0], billing)
    assert store.schema_version() == SCHEMA_VERSION


def test_many_routes_are_written_several_statements_at_a_time(
    tmp_path: Path, make_route: MakeRoute, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_ROWS_PER_STATEMENT", 3)  # 10 routes: statements of 3, 3, 3, 1
    store = RouteStore(tmp_path / "routes.db")
    routes = [make_route(f"r{i:02d}", [f"text {i}", "other"], ["no"] if i % 2 else []) for i in range(10)]
    store.apply(list(reversed(routes)), [], {0: 10})
    store.apply([make_route("r03", ["changed"])], ["r04"], {0: 12})
    loaded = {rv.name: rv for rv in store.load().routes}
    assert sorted(loaded) == [rv.name for rv in routes if rv.name != "r04"]
    assert loaded["r03"].route.utterances == ("changed",)
    assert all(_same(loaded[rv.name], rv) for rv in routes if rv.name not in ("r03", "r04"))


def test_a_failure_mid_apply_writes_nothing(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay my bill"])], [], {0: 1})
    # The routes are written first; the out-of-range offset fails inside the same transaction.
    with pytest.raises(OverflowError):
        store.apply([make_route("weather", ["rain"])], ["billing"], {0: 2, 1: 2**70})
    state = store.load()
    assert [rv.name for rv in state.routes] == ["billing"]
    assert state.version == ((0, 1),)


def test_offsets_never_move_backwards(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([], [], {0: 5})
    with pytest.raises(OffsetRegression):
        store.apply([make_route("billing", ["pay"])], [], {0: 4})
    assert store.load().routes == ()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routes.db"
    RouteStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaTooNew, match="upgrade routeworker"):
        RouteStore(path)


def test_other_records_are_kept_with_the_offsets(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay"])], [], {0: 2}, {"__routeworker__/calibration": b"{1}"})
    assert store.load().records == {"__routeworker__/calibration": b"{1}"}
    store.apply([], [], {0: 3}, {"__routeworker__/calibration": b"{2}"})
    assert store.load().records == {"__routeworker__/calibration": b"{2}"}
    with pytest.raises(OffsetRegression):  # nothing of a refused transaction is written
        store.apply([], [], {0: 1}, {"__routeworker__/calibration": b"{3}"})
    assert store.load().records == {"__routeworker__/calibration": b"{2}"}
    store.apply([], [], {0: 4}, {"__routeworker__/calibration": None})
    assert store.load().records == {}


def test_a_store_of_schema_1_is_emptied_to_replay_the_log(tmp_path: Path, make_route: MakeRoute) -> None:
    # schema 1 predates calibration records: its replica skipped them, so its offsets cannot be trusted
    path = tmp_path / "routes.db"
    store = RouteStore(path)
    store.apply([make_route("billing", ["pay"])], [], {0: 7})
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    reopened = RouteStore(path)
    state = reopened.load()
    assert (state.routes, state.version) == ((), ())
    assert reopened.schema_version() == SCHEMA_VERSION


def test_store_uses_wal_journal(tmp_path: Path) -> None:
    path = tmp_path / "routes.db"
    RouteStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_readers_in_threads_see_whole_batches(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    batches = 30
    seen: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                state = store.load()
                seen.append((len(state.routes), dict(state.version).get(0, 0)))
        except BaseException as error:
            failures.append(error)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for i in range(batches):
        # Each batch adds two routes and moves the offset by two: a reader sees both or neither.
        store.apply([make_route(f"a{i}", ["x"]), make_route(f"b{i}", ["y"])], [], {0: 2 * (i + 1)})
    done.set()
    for reader in readers:
        reader.join()
    assert not failures
    assert seen
    assert all(routes == offset for routes, offset in seen)


def test_reloaded_table_equals_the_live_one(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    live = RouteTable(64, "hashing-bow@test:0")
    batches = [
        ([make_route("billing", ["pay my bill"]), make_route("weather", ["rain today"])], [], {0: 2}),
        ([make_route("billing", ["pay my bill", "refund"])], ["weather"], {0: 4}),
        ([make_route("news", ["headlines"], ["weather news"])], [], {1: 1}),
    ]
    for upserts, deletes, offsets in batches:
        store.apply(upserts, deletes, offsets)
        live.apply(upserts, deletes, tuple(sorted({**dict(live.version), **offsets}.items())))
    state = store.load()
    reloaded = RouteTable.from_routes(state.routes, state.version, 64, "hashing-bow@test:0")
    assert reloaded.version == live.version == ((0, 4), (1, 1))
    assert reloaded.digest() == live.digest()
    assert reloaded.route_names() == live.route_names() == ["billing", "news"]


def test_clear_forgets_everything(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay"])], [], {0: 3})
    store.clear()
    state = store.load()
    assert state.routes == ()
    assert state.version == ()


def test_the_caught_up_mark_only_moves_forward_and_goes_with_a_clear(
    tmp_path: Path, make_route: MakeRoute
) -> None:
    store = RouteStore(tmp_path / "routes.db")
    assert store.caught_up_at_ms() is None
    store.apply([make_route("billing", ["pay my bill"])], [], {0: 1})
    store.mark_caught_up(2_000)
    store.mark_caught_up(1_000)  # an older mark never replaces a newer one
    assert store.caught_up_at_ms() == 2_000
    assert store.load().caught_up_at_ms == 2_000
    store.clear()
    assert store.load().caught_up_at_ms is None
    assert RouteStore(tmp_path / "routes.db").caught_up_at_ms() is None


def test_loaded_vectors_are_read_only_rows_of_their_digest(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    billing = make_route("billing", ["pay my bill", "invoice"], ["pay a friend"], 0.7)
    store.apply([billing], [], {0: 1})
    (loaded,) = store.load().routes
    assert not loaded.utterance_vectors.flags.writeable
    assert not loaded.negative_vectors.flags.writeable
    assert loaded.utterance_vectors.dtype == np.float32
    rebuilt = RouteVectors(
        loaded.route, loaded.utterance_vectors, loaded.negative_vectors, loaded.fingerprint
    )
    assert rebuilt.digest == loaded.digest == billing.digest


def test_stored_vectors_that_do_not_match_their_utterances_are_an_error(
    tmp_path: Path, make_route: MakeRoute
) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay my bill", "invoice"])], [], {0: 1})
    with sqlite3.connect(tmp_path / "routes.db") as conn:
        conn.execute("UPDATE route_vectors SET utterance_vectors = substr(utterance_vectors, 1, 256)")
    with pytest.raises(StoreError, match="billing"):
        store.load()


def _definitions(path: Path, set_to: str) -> None:
    """Rewrite the stored definition of every route with SQL ``set_to`` (over ``definition``)."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE routes SET definition = {set_to}")


def test_loaded_routes_are_the_applied_routes_on_every_field(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    applied = [
        make_route("billing", ["pay my bill", "invoice"], ["pay a friend"], 0.7),
        make_route("weather", ["rain today"]),
        make_route("news", ["headlines", "sport", "politics"], ["weather news", "fake"]),
    ]
    store.apply(applied, [], {0: 3})
    state = store.load()
    assert state.models == {("hashing-bow@test:0", 64)}
    assert dict(state.by_name) == {rv.name: rv for rv in state.routes}
    for rv in applied:
        loaded = state.by_name[rv.name]
        assert _same(loaded, rv)
        for field in ("name", "utterances", "negative_utterances", "threshold", "metadata"):
            assert getattr(loaded.route, field) == getattr(Route.stored(rv.route.definition()), field)
        assert loaded.route.canonical_json() == rv.route.canonical_json()


@pytest.mark.parametrize(
    ("set_to", "reason"),
    [
        ("substr(definition, 1, 40)", "cannot be read"),  # torn
        ("json_remove(definition, '$.utterances')", "utterances"),
        ("json_set(definition, '$.threshold', 'high')", "high"),
        ("json_set(definition, '$.name', 'other')", "other"),
        ("json_set(definition, '$.utterances', json_array('a', 'b', 'c'))", "do not match"),
        ("json_set(definition, '$.negative_utterances', json_array())", "do not match"),
    ],
)
def test_a_stored_definition_that_is_not_sound_fails_the_load_naming_its_route(
    tmp_path: Path, make_route: MakeRoute, set_to: str, reason: str
) -> None:
    # as before routes were made without reading their definitions: the load fails, it does not
    # hand out a route that fails later, in a decision
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay my bill", "invoice"], ["pay a friend"])], [], {0: 1})
    _definitions(tmp_path / "routes.db", set_to)
    with pytest.raises(StoreError, match=f"'billing'.*{reason}"):
        store.load()
    state = store.load(check_later=True)  # a replica's load: its check is waited for later
    with pytest.raises(StoreError, match=f"'billing'.*{reason}"):
        state.check()


def test_a_definition_the_check_in_sql_cannot_read_is_read_in_python(
    tmp_path: Path, make_route: MakeRoute
) -> None:
    # json.dumps writes NaN, which SQLite's json_valid refuses: every route is read and checked
    store = RouteStore(tmp_path / "routes.db")
    nan = make_route("billing", ["pay my bill"], [], float("nan"))
    store.apply([nan, make_route("weather", ["rain today"])], [], {0: 2})
    state = store.load()
    loaded = state.by_name["billing"]
    assert loaded.route.threshold != loaded.route.threshold
    assert loaded.route.canonical_json() == nan.route.canonical_json()
    assert loaded.digest == nan.digest


def test_the_check_waits_in_the_load_unless_asked_to_wait_later(
    tmp_path: Path, make_route: MakeRoute, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay my bill"])], [], {0: 1})
    release = threading.Event()
    counted = store.sound_definitions

    def held_back() -> tuple[int, int, tuple[tuple[int, int], ...]]:
        release.wait(timeout=30)
        return counted()

    monkeypatch.setattr(store, "sound_definitions", held_back)
    state = store.load(check_later=True)  # returns while the check is held back
    assert [rv.name for rv in state.routes] == ["billing"]
    release.set()
    state.check()
    assert store.load().by_name.keys() == {"billing"}


def test_a_store_written_during_the_check_is_checked_route_by_route(
    tmp_path: Path, make_route: MakeRoute, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RouteStore(tmp_path / "routes.db")
    store.apply([make_route("billing", ["pay my bill"])], [], {0: 1})
    counted = store.sound_definitions
    checked_each: list[int] = []
    monkeypatch.setattr(store_module, "_check_each", lambda routes: checked_each.append(len(routes)))

    loaded = threading.Event()

    def after_a_write() -> tuple[int, int, tuple[tuple[int, int], ...]]:
        loaded.wait(timeout=30)  # the load has read its routes: now the store moves on
        store.apply([make_route("weather", ["rain today"])], [], {0: 2})
        return counted()

    monkeypatch.setattr(store, "sound_definitions", after_a_write)
    state = store.load(check_later=True)
    loaded.set()
    state.check()
    assert [rv.name for rv in state.routes] == ["billing"]
    assert checked_each == [1]  # the routes the load read, not the store's newer state


def test_routes_of_two_models_load_each_with_its_own(tmp_path: Path, make_route: MakeRoute) -> None:
    store = RouteStore(tmp_path / "routes.db")
    billing, weather = make_route("billing", ["pay my bill"]), make_route("weather", ["rain today"])
    older = RouteVectors(
        weather.route, weather.utterance_vectors[:, :32], weather.negative_vectors[:, :32], "older@test:0"
    )
    store.apply([billing, older], [], {0: 2})
    state = store.load()
    assert state.models == {("hashing-bow@test:0", 64), ("older@test:0", 32)}
    assert _same(state.by_name["billing"], billing)
    assert _same(state.by_name["weather"], older)
