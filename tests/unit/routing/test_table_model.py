"""Property test: any sequence of mutations and rebuilds answers like brute force over a plain dict."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.routing import IndexSettings, Route, RouteTable, RouteVectors, l2_normalise
from worker.routing.index import table_digest

DIM = 16
FP = "model-test"
NAMES = [f"route-{i}" for i in range(6)]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.integers(0, 5), st.integers(0, 3), st.integers(0, 10**6)),
        st.tuples(st.just("delete"), st.integers(0, 5), st.just(0), st.just(0)),
        st.tuples(st.just("rebuild"), st.just(0), st.just(0), st.just(0)),
    ),
    max_size=25,
)


def _route(name: str, utterances: int, seed: int) -> RouteVectors:
    vectors = l2_normalise(np.random.default_rng(seed).normal(size=(utterances, DIM)))
    route = Route(name, tuple(f"{name} {seed} {i}" for i in range(utterances)))
    return RouteVectors(route, vectors.reshape(utterances, DIM), np.zeros((0, DIM), dtype=np.float32), FP)


@settings(max_examples=40, deadline=None)
@given(operations)
def test_table_matches_brute_force(ops: list[tuple[str, int, int, int]]) -> None:
    _check_against_brute_force(ops, IndexSettings(overlay_rebuild_rows=10**9))


@settings(max_examples=8, deadline=None)
@given(operations)
def test_approximate_table_matches_brute_force(ops: list[tuple[str, int, int, int]]) -> None:
    # IVF main index (built by a child process) probing all of its lists: exact again.
    _check_against_brute_force(ops, IndexSettings(overlay_rebuild_rows=10**9, approximate_above=0))


def _check_against_brute_force(ops: list[tuple[str, int, int, int]], index_settings: IndexSettings) -> None:
    table = RouteTable(DIM, FP, index_settings)
    model: dict[str, RouteVectors] = {}
    queries = l2_normalise(np.random.default_rng(0).normal(size=(4, DIM)))
    for step, (kind, index, utterances, seed) in enumerate(ops, start=1):
        name = NAMES[index]
        if kind == "upsert":
            model[name] = _route(name, utterances, seed)
            table.apply([model[name]], [], ((0, step),))
        elif kind == "delete":
            model.pop(name, None)
            table.apply([], [name], ((0, step),))
        else:
            table.rebuild(block=True)
        snapshot = table.snapshot()
        assert snapshot.route_names() == sorted(model)
        assert snapshot.digest == table_digest((rv.name, rv.digest) for rv in model.values())
        rows = sum(rv.utterance_vectors.shape[0] for rv in model.values())
        hits = snapshot.search(queries, 5)
        if rows:
            everything = np.concatenate([rv.utterance_vectors for rv in model.values()])
            expected = np.sort(queries @ everything.T, axis=1)[:, ::-1][:, :5]
            width = expected.shape[1]
            assert np.allclose(hits.similarities[:, :width], expected, atol=1e-5)
            for row in range(queries.shape[0]):
                for route_id, similarity in zip(
                    hits.route_ids[row, :width], hits.similarities[row, :width], strict=True
                ):
                    owner = snapshot.route_at(int(route_id))
                    # the model's route, or (after a rebuild) the same one over its index's vectors file
                    assert model[owner.name].digest == owner.digest
                    assert np.array_equal(model[owner.name].utterance_vectors, owner.utterance_vectors)
                    assert np.isclose(owner.utterance_vectors @ queries[row], similarity, atol=1e-5).any()
        assert (hits.route_ids[:, rows:] == -1).all()
