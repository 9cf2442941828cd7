"""The main index's vectors file: routes hold views of it instead of heap copies, a restart takes
unchanged routes' vectors from it instead of the store, and falls back to the store when it is
missing or does not match."""

from __future__ import annotations

import logging
import mmap
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from worker.routing import (
    IndexSettings,
    Route,
    RouteStore,
    RouteTable,
    RouteVectors,
    StoreError,
    l2_normalise,
)
from worker.routing import store as store_module
from worker.routing.index_file import MANIFEST, load_stored
from worker.routing.types import Vectors

DIM = 64
FP = "hashing-bow@test:0"
IVF = IndexSettings(approximate_above=0, list_rows=8, probe_lists=2)
VERSION = ((0, 100),)


def _route(name: str, seed: int, utterances: int = 3, negatives: int = 0) -> RouteVectors:
    rng = np.random.default_rng(seed)
    return RouteVectors(
        Route(
            name, tuple(f"{name} {i}" for i in range(utterances)), tuple(f"not {i}" for i in range(negatives))
        ),
        l2_normalise(rng.normal(size=(utterances, DIM))),
        l2_normalise(rng.normal(size=(negatives, DIM))).reshape(negatives, DIM),
        FP,
    )


def _routes(count: int, seed: int = 1) -> list[RouteVectors]:
    # a route without utterances and one with negatives among them
    return [
        _route(f"r{i:03d}", seed * 1000 + i, 0 if i == 7 else 3, 2 if i == 3 else 0) for i in range(count)
    ]


def _on_file(vectors: Vectors) -> bool:
    """Whether ``vectors`` are rows of a mapped file (not a heap copy)."""
    base: object = vectors
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def _served(tmp_path: Path, routes: list[RouteVectors]) -> tuple[RouteStore, Path]:
    """A store holding ``routes`` and the index (with its vectors file) a replica persisted for them."""
    store = RouteStore(tmp_path / "routes.db")
    store.apply(routes, [], dict(VERSION))
    index_dir = tmp_path / "routes.db.index"
    table = RouteTable(DIM, FP, IVF, index_dir)
    table.install(routes, VERSION)
    return store, index_dir


def _restart(store: RouteStore, index_dir: Path) -> RouteTable:
    state, persisted = load_stored(store, index_dir, DIM, FP)
    return RouteTable.from_routes(list(state.routes), state.version, DIM, FP, IVF, index_dir, persisted)


def _old_path(store: RouteStore, index_dir: Path) -> RouteTable:
    """A restart as before vectors files: every vector read from the store."""
    state = store.load()
    return RouteTable.from_routes(list(state.routes), state.version, DIM, FP, IVF, index_dir)


def _answers(table: RouteTable) -> tuple[list[list[str]], np.ndarray]:
    queries = l2_normalise(np.random.default_rng(9).normal(size=(16, DIM)))
    snapshot = table.snapshot()
    hits = snapshot.search(queries, 8)
    names = [[snapshot.route_at(int(i)).name for i in row if i >= 0] for row in hits.route_ids]
    return names, hits.similarities


def _same_answers(a: RouteTable, b: RouteTable) -> None:
    names_a, sims_a = _answers(a)
    names_b, sims_b = _answers(b)
    assert names_a == names_b
    assert np.array_equal(sims_a, sims_b)
    assert a.digest() == b.digest()


def _by_name(table: RouteTable) -> dict[str, RouteVectors]:
    return {rv.name: rv for rv in table.snapshot().routes()}


def test_an_installed_index_holds_its_routes_vectors_on_file(tmp_path: Path) -> None:
    routes = _routes(60)
    _, index_dir = _served(tmp_path, routes)
    table = RouteTable(DIM, FP, IVF, index_dir)
    table.install(routes, VERSION)
    main = table.snapshot().main
    assert main.vectors_path is not None
    assert main.path is not None
    assert main.vectors_path == main.path.with_suffix(".vectors")
    held = _by_name(table)
    for rv in routes:
        assert held[rv.name].digest == rv.digest
        assert np.array_equal(held[rv.name].utterance_vectors, rv.utterance_vectors)
        assert _on_file(held[rv.name].utterance_vectors)
        assert not held[rv.name].utterance_vectors.flags.writeable
        assert held[rv.name].negative_vectors is rv.negative_vectors
    assert main.vectors_path.name in (index_dir / MANIFEST).read_text()


def test_a_restart_takes_unchanged_routes_vectors_from_the_file_and_answers_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = _routes(60)
    store, index_dir = _served(tmp_path, routes)
    with caplog.at_level(logging.INFO):
        restarted = _restart(store, index_dir)
    assert "60 of 60 routes' utterance vectors taken from" in caplog.text
    held = _by_name(restarted)
    assert all(_on_file(rv.utterance_vectors) for rv in held.values())
    assert restarted.snapshot().overlay.rows == 0
    old_path = _old_path(store, index_dir)
    assert not any(_on_file(rv.utterance_vectors) for rv in _by_name(old_path).values())
    _same_answers(restarted, old_path)
    for rv in routes:
        assert held[rv.name].digest == rv.digest
        assert np.array_equal(held[rv.name].negative_vectors, rv.negative_vectors)


def test_a_crash_after_a_store_commit_reads_the_changed_routes_from_the_store(tmp_path: Path) -> None:
    routes = _routes(60)
    store, index_dir = _served(tmp_path, routes)
    # committed to the store, then killed before any rebuild wrote a new index and vectors file
    changed, added = _route("r010", seed=77), _route("r999", seed=78)
    store.apply([changed, added], ["r020"], {0: 103})
    restarted = _restart(store, index_dir)
    held = _by_name(restarted)
    assert "r020" not in held
    for rv in (changed, added):
        assert held[rv.name].digest == rv.digest
        assert np.array_equal(held[rv.name].utterance_vectors, rv.utterance_vectors)
        assert not _on_file(held[rv.name].utterance_vectors)
    assert _on_file(held["r011"].utterance_vectors)
    _same_answers(restarted, _old_path(store, index_dir))


@pytest.mark.parametrize("damage", ["missing", "truncated", "other contents"])
def test_a_vectors_file_that_is_missing_or_does_not_match_falls_back_to_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    routes = _routes(60)
    store, index_dir = _served(tmp_path, routes)
    (vectors_file,) = index_dir.glob("main-*.vectors")
    if damage == "missing":
        vectors_file.unlink()
    elif damage == "truncated":
        vectors_file.write_bytes(vectors_file.read_bytes()[:-4])
    else:
        vectors_file.write_bytes(bytes(vectors_file.stat().st_size))  # the right size, all zeros
    with caplog.at_level(logging.INFO):
        restarted = _restart(store, index_dir)
    expected = "do not match the routes' digests" if damage == "other contents" else "is missing or not of"
    assert expected in caplog.text
    held = _by_name(restarted)
    assert not any(_on_file(rv.utterance_vectors) for rv in held.values())
    assert restarted.snapshot().main.path is not None  # the index file itself is still reused
    assert restarted.snapshot().main.vectors_path is None  # and a rebuild carries no rows from it
    _same_answers(restarted, _old_path(store, index_dir))
    changed = _route("r005", seed=93)
    restarted.apply([changed], [], ((0, 101),))
    restarted.rebuild(block=True)
    rebuilt = _by_name(restarted)
    expected = {rv.name: rv for rv in routes} | {"r005": changed}
    assert sorted(rebuilt) == sorted(expected)
    for name, rv in expected.items():
        assert np.array_equal(rebuilt[name].utterance_vectors, rv.utterance_vectors)
        assert _on_file(rebuilt[name].utterance_vectors)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_routes_missing_from_the_vectors_file_are_read_by_name_or_by_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    monkeypatch.setattr(store_module, "_LOOKUP_SHARE", share)
    routes = _routes(30)
    store, index_dir = _served(tmp_path, routes)
    changed = [_route(f"r{i:03d}", seed=500 + i) for i in range(0, 30, 3)]
    store.apply(changed, [], {0: 101})
    state, persisted = load_stored(store, index_dir, DIM, FP)
    assert persisted is not None
    assert persisted.vectors is not None
    loaded = {rv.name: rv for rv in state.routes}
    expected = {rv.name: rv for rv in routes} | {rv.name: rv for rv in changed}
    assert sorted(loaded) == sorted(expected)
    for name, rv in expected.items():
        assert loaded[name].digest == rv.digest
        assert np.array_equal(loaded[name].utterance_vectors, rv.utterance_vectors)
        assert _on_file(loaded[name].utterance_vectors) == (rv not in changed)


def test_a_rebuild_keeps_its_vectors_file_and_a_restart_after_it_uses_that(tmp_path: Path) -> None:
    routes = _routes(60)
    store, index_dir = _served(tmp_path, routes)
    table = _restart(store, index_dir)
    changed = _route("r005", seed=91)
    store.apply([changed], ["r006"], {0: 102})
    table.apply([changed], ["r006"], ((0, 102),))
    table.rebuild(block=True)
    held = _by_name(table)
    assert all(_on_file(rv.utterance_vectors) for rv in held.values())
    assert held["r005"].digest == changed.digest
    restarted = _restart(store, index_dir)
    assert all(_on_file(rv.utterance_vectors) for rv in _by_name(restarted).values())
    assert restarted.snapshot().overlay.rows == 0
    _same_answers(restarted, table)


def test_a_store_of_schema_2_is_converted_in_place(tmp_path: Path) -> None:
    path = tmp_path / "routes.db"
    billing, weather = _route("billing", seed=1, negatives=2), _route("weather", seed=2)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE routes (name TEXT PRIMARY KEY, definition TEXT NOT NULL, fingerprint TEXT NOT NULL,
                dim INTEGER NOT NULL, utterance_vectors BLOB NOT NULL, negative_vectors BLOB NOT NULL,
                digest TEXT NOT NULL);
            CREATE TABLE offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
            CREATE TABLE records (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '2');
            INSERT INTO offsets VALUES (0, 9);
            """
        )
        conn.executemany(
            "INSERT INTO routes VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    rv.name,
                    rv.route.canonical_json(),
                    rv.fingerprint,
                    DIM,
                    rv.utterance_vectors.tobytes(),
                    rv.negative_vectors.tobytes(),
                    rv.digest,
                )
                for rv in (billing, weather)
            ],
        )
    store = RouteStore(path)
    assert store.schema_version() == store_module.SCHEMA_VERSION == 3
    state = store.load()
    assert state.version == ((0, 9),)
    loaded = {rv.name: rv for rv in state.routes}
    for rv in (billing, weather):
        assert loaded[rv.name].route == rv.route
        assert loaded[rv.name].digest == rv.digest
        assert np.array_equal(loaded[rv.name].utterance_vectors, rv.utterance_vectors)
        assert np.array_equal(loaded[rv.name].negative_vectors, rv.negative_vectors)
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "routes_v2" not in tables


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif first == "Rss:" and inside:
                total += int(line.split()[1])
    return total


def test_searches_read_the_rows_they_rescore_without_mapping_them(tmp_path: Path) -> None:
    routes = _routes(400)
    store, index_dir = _served(tmp_path, routes)
    restarted = _restart(store, index_dir)
    main = restarted.snapshot().main
    assert main.row_reader is not None
    assert main.vectors_path is not None
    before = _mapped_kb(main.vectors_path)
    _answers(restarted)
    assert _mapped_kb(main.vectors_path) == before
    _same_answers(restarted, _old_path(store, index_dir))
    # runs of neighbouring rows and single rows, in one read
    wanted = np.array([0, 1, 2, 7, 40, 41, main.rows - 1])
    expected = np.concatenate([rv.utterance_vectors for rv in routes])[wanted]
    assert np.array_equal(main.row_reader.read(wanted), expected)
    assert main.row_reader.read(np.zeros(0, dtype=np.int64)).shape == (0, DIM)


def test_a_restart_from_the_vectors_file_still_checks_every_stored_definition(tmp_path: Path) -> None:
    # the file holds r010's three rows (its digest is unchanged), its definition now says two
    store, index_dir = _served(tmp_path, _routes(60))
    with sqlite3.connect(tmp_path / "routes.db") as conn:
        conn.execute(
            "UPDATE routes SET definition = json_set(definition, '$.utterances', json_array('a', 'b')) "
            "WHERE name = 'r010'"
        )
    with pytest.raises(StoreError, match=r"'r010'.*do not match"):
        load_stored(store, index_dir, DIM, FP)
    state, _ = load_stored(store, index_dir, DIM, FP, check_later=True)
    assert state.from_known == 60
    with pytest.raises(StoreError, match="'r010'"):
        state.check()
