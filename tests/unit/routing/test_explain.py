"""Explanations: derived from the snapshot and the decision, never changing it."""

from __future__ import annotations

from typing import Any

import pytest

from worker.routing import HeadConfig, Router, RouteTable, ScoringConfig, Thresholds, train_head
from worker.routing.explain import Explanation, explain
from worker.routing.types import Decision, Encoder


@pytest.fixture
def table(make_route: Any, encoder: Encoder) -> RouteTable:
    routes = [
        make_route("weather", ["what is the weather today", "will it rain tomorrow", "weather forecast"]),
        make_route("banking", ["transfer money to my account", "check my bank balance", "send money"]),
        make_route("music", ["play some jazz music", "put on a song", "play music"], threshold=0.6),
    ]
    return RouteTable.from_routes(routes, ((0, 3),), encoder.dim, encoder.fingerprint)


def explained(router: Router, encoder: Encoder, text: str) -> tuple[Decision, Explanation]:
    vectors = encoder.embed_sync([text])
    (decision,) = router.decide(vectors, 3)
    snapshot = router.table.snapshot()
    (why,) = explain(router, snapshot, router.head, vectors, [decision])
    return decision, why


def test_a_match_names_its_rule_threshold_and_nearest_utterances(table: RouteTable, encoder: Encoder) -> None:
    router = Router(table, ScoringConfig(top_k=1, head_weight=0.0))
    decision, why = explained(router, encoder, "play some jazz music")
    assert decision.route == "music"
    assert why.rule == "matched"
    assert why.threshold == 0.6  # the route's own threshold
    assert why.head_weight == 0.0
    best = why.routes[0]
    assert (best.route, best.score) == ("music", decision.score)
    assert best.nearest[0].utterance == "play some jazz music"
    assert best.nearest[0].similarity == pytest.approx(1.0)
    assert [n.similarity for n in best.nearest] == sorted((n.similarity for n in best.nearest), reverse=True)
    assert best.knn_score == pytest.approx(decision.score)
    assert (best.head_probability, best.head_share) == (None, None)
    assert why.gap_to_runner_up == pytest.approx(decision.candidates[0].score - decision.candidates[1].score)
    assert why.routes_version == decision.routes_version


def test_no_match_says_which_rule_rejected_the_best_route(table: RouteTable, encoder: Encoder) -> None:
    strict = Router(table, ScoringConfig(top_k=1, head_weight=0.0), Thresholds(default=0.99))
    decision, why = explained(strict, encoder, "weather today please")
    assert decision.route is None
    assert why.rule == "below_threshold"
    assert why.threshold == 0.99
    assert why.routes[0].score < 0.99

    picky = Router(table, ScoringConfig(top_k=1, head_weight=0.0), Thresholds(default=0.0, margin=1.5))
    decision, why = explained(picky, encoder, "weather today please")
    assert decision.route is None
    assert why.rule == "within_margin"
    assert why.margin == 1.5


def test_nothing_retrieved_has_no_candidates(encoder: Encoder) -> None:
    empty = RouteTable(encoder.dim, encoder.fingerprint)
    decision, why = explained(Router(empty), encoder, "anything")
    assert decision.route is None
    assert (why.rule, why.routes, why.threshold) == ("no_candidates", (), None)


def test_the_heads_share_of_a_blended_score(table: RouteTable, encoder: Encoder) -> None:
    router = Router(table, ScoringConfig(top_k=1, head_weight=0.4))
    router.head = train_head(table.snapshot().routes(), HeadConfig(hidden=16, epochs=5))
    _, why = explained(router, encoder, "check my bank balance")
    best = why.routes[0]
    assert best.head_probability is not None
    assert best.head_share is not None
    assert why.head_weight == 0.4
    # the blend the router ranked by, recomposed from its parts
    assert 0.6 * best.knn_score + 0.4 * best.head_probability == pytest.approx(best.score, abs=1e-5)
    assert best.head_share == pytest.approx(0.4 * best.head_probability / best.score, abs=1e-5)


def test_explaining_changes_no_decision(table: RouteTable, encoder: Encoder) -> None:
    router = Router(table, ScoringConfig(head_weight=0.0))
    vectors = encoder.embed_sync(["send money", "rain tomorrow", "a song"])
    before = router.decide(vectors, 2)
    explain(router, table.snapshot(), None, vectors, before)
    assert router.decide(vectors, 2) == before
