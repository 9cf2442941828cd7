"""The impact of a route change on a sample of queries (worker.routing.impact)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from worker.routing import Decision, Router, RouteTable, RouteVectors, ScoringConfig
from worker.routing.impact import Move, compare, route_impact

MakeRoute = Callable[..., RouteVectors]
DIM = 64
FP = "hashing-bow@test:0"


def _decision(route: str | None, score: float) -> Decision:
    return Decision(route, score, (), ())


def test_moves_count_changes_to_and_from_no_match_and_leave_unchanged_queries_out() -> None:
    before = [
        _decision("billing", 0.9),
        _decision("billing", 0.8),
        _decision("billing", 0.7),
        _decision(None, 0.3),
        _decision("news", 0.6),
        _decision("news", 0.6),
    ]
    after = [
        _decision("refunds", 0.95),
        _decision("refunds", 0.5),
        _decision(None, 0.4),
        _decision("refunds", 0.6),
        _decision("news", 0.7),
        _decision("news", 0.6),
    ]
    impact = compare(before, after, [f"q{i}" for i in range(6)], [f"text {i}" for i in range(6)])
    assert impact.queries == 6
    assert impact.changed == 4
    assert impact.share == pytest.approx(4 / 6)
    assert impact.moves == (
        Move("billing", "refunds", 2),
        Move(None, "refunds", 1),
        Move("billing", None, 1),
    )
    # the largest score change first: q1 (-0.3), q3 (+0.3, later in the sample), q2, q0
    assert [q.id for q in impact.examples] == ["q1", "q3", "q2", "q0"]
    assert impact.examples[0].before == "billing"
    assert impact.examples[0].after == "refunds"
    assert impact.examples[0].score_change == pytest.approx(-0.3)
    assert impact.before_counts == {"billing": 3, None: 1, "news": 2}
    assert impact.after_counts == {"refunds": 3, None: 1, "news": 2}


def test_the_gate_is_strictly_more_than_the_percentage() -> None:
    decisions = [_decision("a", 0.9)] * 3 + [_decision("b", 0.9)]
    moved = compare(decisions, [_decision("a", 0.9)] * 4, list("wxyz"), list("wxyz"))
    assert moved.share == pytest.approx(0.25)
    assert moved.exceeds(24.9)
    assert not moved.exceeds(25)
    assert not moved.exceeds(100)


def test_an_empty_sample_changes_nothing_and_passes_any_gate() -> None:
    impact = compare([], [], [], [])
    assert (impact.queries, impact.changed, impact.share) == (0, 0, 0.0)
    assert impact.moves == ()
    assert impact.examples == ()
    assert not impact.exceeds(0)


def test_examples_are_bounded_and_the_order_is_deterministic() -> None:
    before = [_decision("a", 0.5) for _ in range(30)]
    after = [_decision("b", 0.5 + (i % 3) / 10) for i in range(30)]
    ids = [str(i) for i in range(30)]
    impact = compare(before, after, ids, ids, examples=5)
    assert impact.changed == 30
    assert [q.id for q in impact.examples] == ["2", "5", "8", "11", "14"]
    assert compare(before, after, ids, ids, examples=5) == impact


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match="one length"):
        compare([_decision("a", 1.0)], [], ["q"], ["t"])


def test_splitting_a_route_moves_its_queries_between_the_new_routes(
    make_route: MakeRoute, encoder: object
) -> None:
    """Real routers over two tables: one broad route split into two narrower ones."""
    config = ScoringConfig(aggregation="max", default_threshold=0.3)
    weather = make_route("weather", ["will it rain tomorrow", "weather forecast today"])
    broad = make_route(
        "payments", ["pay my bill", "my invoice is wrong", "refund my payment", "money back please"]
    )
    before = RouteTable(DIM, FP)
    before.apply([weather, broad], [], ((0, 2),))
    after = RouteTable(DIM, FP)
    after.apply(
        [
            weather,
            make_route("billing", ["pay my bill", "my invoice is wrong"]),
            make_route("refunds", ["refund my payment", "money back please"]),
        ],
        [],
        ((0, 5),),
    )
    texts = ["pay my bill today", "refund my payment now", "will it rain tomorrow", "zebra xylophone"]
    vectors = encoder.embed_sync(texts)  # type: ignore[attr-defined]
    impact = route_impact(Router(before, config), Router(after, config), vectors, ["1", "2", "3", "4"], texts)
    assert impact.queries == 4
    assert set(impact.moves) == {Move("payments", "billing", 1), Move("payments", "refunds", 1)}
    assert impact.before_counts["weather"] == impact.after_counts["weather"] == 1
    assert {q.text for q in impact.examples} == {"pay my bill today", "refund my payment now"}
    assert route_impact(
        Router(before, config), Router(after, config), np.zeros((0, DIM), np.float32), [], []
    ) == compare([], [], [], [])
