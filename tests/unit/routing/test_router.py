from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.routing import Router, RouteTable, RouteVectors, ScoringConfig, Thresholds
from worker.routing.scoring import aggregate
from worker.routing.snapshot import Hits

MakeRoute = Callable[..., RouteVectors]
DIM = 64
FP = "hashing-bow@test:0"


class _Embed:
    def __init__(self, encoder: object) -> None:
        self.encoder = encoder

    def __call__(self, *texts: str) -> np.ndarray:
        return self.encoder.embed_sync(texts)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def embed(encoder: object) -> _Embed:
    return _Embed(encoder)


@pytest.fixture
def table(make_route: MakeRoute) -> RouteTable:
    table = RouteTable(DIM, FP)
    table.apply(
        [
            make_route("billing", ["pay my bill", "my invoice is wrong", "refund my payment"]),
            make_route(
                "weather", ["will it rain tomorrow", "weather forecast today"], ["weather news anchor"]
            ),
            make_route("news", ["latest news headlines", "news anchor today"]),
            make_route("greeting", ["hello there", "good morning"], threshold=0.9),
        ],
        [],
        ((0, 4),),
    )
    return table


def test_best_route_wins_with_ranked_candidates(table: RouteTable, embed: _Embed) -> None:
    router = Router(table, ScoringConfig(aggregation="max", default_threshold=0.5))
    decisions = router.decide(embed("pay my bill", "rain tomorrow", "latest headlines"), 3)
    assert [d.route for d in decisions] == ["billing", "weather", "news"]
    for decision in decisions:
        scores = [c.score for c in decision.candidates]
        assert scores == sorted(scores, reverse=True)
        assert decision.candidates[0].route == decision.route
        assert decision.score == decision.candidates[0].score
        assert decision.routes_version == ((0, 4),)
    assert decisions[0].score == pytest.approx(1.0)


def test_unrelated_query_is_no_match(table: RouteTable, embed: _Embed) -> None:
    (decision,) = Router(table).decide(embed("quantum chromodynamics lattice"), 2)
    assert decision.route is None


def test_route_threshold_applies_to_its_own_winner(table: RouteTable, embed: _Embed) -> None:
    router = Router(table, ScoringConfig(aggregation="max", default_threshold=0.3))
    (partial,) = router.decide(embed("hello friend"), 1)
    assert partial.candidates[0].route == "greeting"
    assert 0.3 <= partial.score < 0.9
    assert partial.route is None  # greeting demands 0.9
    (exact,) = router.decide(embed("hello there"), 1)
    assert exact.route == "greeting"


def test_fitted_thresholds_take_precedence(table: RouteTable, embed: _Embed) -> None:
    router = Router(table, ScoringConfig(aggregation="max")).with_thresholds(
        Thresholds(per_route={"greeting": 0.3}, default=0.99, margin=0.0)
    )
    first, second = router.decide(embed("hello friend", "pay my invoice"), 1)
    assert first.route == "greeting"  # fitted 0.3 beats the definition's 0.9
    assert second.route is None  # fitted default 0.99 applies to billing


def test_margin_rejects_a_close_runner_up(make_route: MakeRoute, embed: _Embed) -> None:
    table = RouteTable(DIM, FP)
    table.apply(
        [make_route("cancel_order", ["cancel my order"]), make_route("cancel_card", ["cancel my card"])],
        [],
        (),
    )
    query = embed("cancel my")
    config = ScoringConfig(aggregation="max", default_threshold=0.3)
    (close,) = Router(table, config).decide(query, 2)
    assert close.route is not None
    gap = close.candidates[0].score - close.candidates[1].score
    (rejected,) = Router(
        table, ScoringConfig(aggregation="max", default_threshold=0.3, margin=gap + 0.05)
    ).decide(query, 2)
    assert rejected.route is None
    assert rejected.candidates == close.candidates


def test_equal_scores_are_ranked_by_name(make_route: MakeRoute, embed: _Embed) -> None:
    table = RouteTable(DIM, FP)
    table.apply([make_route("zeta", ["same words"]), make_route("alpha", ["same words"])], [], ())
    (decision,) = Router(table, ScoringConfig(default_threshold=0.1)).decide(embed("same words"), 2)
    assert [c.route for c in decision.candidates] == ["alpha", "zeta"]
    assert decision.route == "alpha"


def test_negative_utterances_pull_a_route_down(table: RouteTable, embed: _Embed) -> None:
    query = embed("weather news anchor")
    without = Router(table, ScoringConfig(aggregation="max", negative_penalty=0.0)).decide(query, 4)[0]
    with_penalty = Router(table, ScoringConfig(aggregation="max", negative_penalty=1.0)).decide(query, 4)[0]
    before = {c.route: c.score for c in without.candidates}
    after = {c.route: c.score for c in with_penalty.candidates}
    assert after["weather"] < before["weather"]
    assert after["news"] == before["news"]
    assert with_penalty.candidates[0].route == "news"


def test_top_n_per_query(table: RouteTable, embed: _Embed) -> None:
    decisions = Router(table).decide(embed("pay my bill", "news today", "hello"), [0, 1, 3])
    assert [len(d.candidates) for d in decisions] == [0, 1, 3]
    assert decisions[0].route == "billing"
    with pytest.raises(ValueError, match="top_n"):
        Router(table).decide(embed("pay"), [1, 2])


def test_empty_table_and_empty_batch(embed: _Embed) -> None:
    router = Router(RouteTable(DIM, FP))
    (decision,) = router.decide(embed("anything"), 3)
    assert decision.route is None
    assert decision.candidates == ()
    assert router.decide(np.zeros((0, DIM), dtype=np.float32), 3) == []


def _hits(rows: list[list[tuple[int, float]]]) -> Hits:
    return Hits(
        np.array([[s for _, s in row] for row in rows], dtype=np.float32),
        np.array([[i for i, _ in row] for row in rows], dtype=np.int64),
    )


def test_aggregations_over_the_top_k_hits() -> None:
    hits = _hits([[(0, 0.9), (1, 0.8), (0, 0.7), (0, 0.5), (-1, -np.inf)]])
    counts = np.array([3, 4])
    results = {}
    for aggregation in ("max", "mean", "softmax"):
        rows, ids, scores = aggregate(hits, counts, ScoringConfig(top_k=2, aggregation=aggregation))
        assert rows.tolist() == [0, 0]
        results[aggregation] = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    assert results["max"] == pytest.approx({0: 0.9, 1: 0.8})
    # Route 1 has 4 utterances but one retrieved hit: the missing one counts at the row floor 0.5.
    assert results["mean"] == pytest.approx({0: 0.8, 1: 0.65})
    assert results["mean"][0] < results["softmax"][0] < results["max"][0]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 5), st.floats(-1, 1, width=32)), min_size=6, max_size=6),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 4),
    st.sampled_from(["max", "mean", "softmax"]),
)
def test_aggregate_scores_lie_within_the_route_hits(
    rows: list[list[tuple[int, float]]], top_k: int, aggregation: str
) -> None:
    hits = _hits([sorted(row, key=lambda hit: -hit[1]) for row in rows])
    counts = np.full(6, 10)
    out_rows, ids, scores = aggregate(hits, counts, ScoringConfig(top_k=top_k, aggregation=aggregation))  # type: ignore[arg-type]
    assert len(set(zip(out_rows.tolist(), ids.tolist(), strict=True))) == len(ids)
    for row, route, score in zip(out_rows, ids, scores, strict=True):
        sims = [s for i, s in rows[row] if i == route]
        floor = min(s for _, s in rows[row])
        assert floor - 1e-6 <= score <= max(sims) + 1e-6
