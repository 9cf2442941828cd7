"""Self-fit: a calibration chosen from the routes alone, and the router serving it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from worker.routing import Route, Router, RouteTable, RouteVectors, l2_normalise, self_fit
from worker.routing.head import HeadConfig
from worker.routing.route_calibration import ACCEPT_ALL
from worker.routing.self_fit import SelfFitConfig, cut, held_out_answers

DIM = 24
FP = "synthetic"
SMALL_HEAD = HeadConfig(hidden=32, epochs=8)


def _route(name: str, vectors: np.ndarray, texts: tuple[str, ...] | None = None) -> RouteVectors:
    texts = texts or tuple(f"{name} {j}" for j in range(len(vectors)))
    return RouteVectors(Route(name, texts), vectors, np.zeros((0, DIM), np.float32), FP)


def _world(seed: int = 0, routes: int = 10, per_route: int = 10, spread: float = 1.0) -> list[RouteVectors]:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(routes, DIM)))
    return [
        _route(f"r{i:02d}", l2_normalise(c + spread * rng.normal(size=(per_route, DIM)) / np.sqrt(DIM)))
        for i, c in enumerate(centres)
    ]


def _table(routes: list[RouteVectors]) -> RouteTable:
    table = RouteTable(DIM, FP)
    table.apply(routes, [], ())
    return table


def test_self_fit_covers_every_route_and_reports_its_estimate() -> None:
    routes = _world()
    calibration = self_fit(routes, config=SelfFitConfig(head=SMALL_HEAD))
    assert set(calibration.routes) == {rv.name for rv in routes}
    assert all(calibration.covers(rv) for rv in routes)
    assert calibration.head is not None
    assert calibration.head.names == tuple(sorted(rv.name for rv in routes))
    assert np.isfinite(calibration.default_threshold)
    estimate = calibration.estimate
    assert estimate is not None
    assert estimate.examples == sum(len(rv.route.utterances) for rv in routes)  # 5 folds: every one
    assert estimate.folds == 5
    assert estimate.refused is not None
    assert 0.0 < estimate.refused <= 0.05
    assert estimate.top1 is not None
    assert estimate.nearest_utterance is not None
    assert estimate.accuracy <= estimate.top1


def test_self_fit_is_deterministic() -> None:
    routes = _world(1)
    a = self_fit(routes, config=SelfFitConfig(head=SMALL_HEAD))
    b = self_fit(list(reversed(routes)), config=SelfFitConfig(head=SMALL_HEAD))
    assert a.head is not None
    assert b.head is not None
    assert a.head.weights.tobytes() == b.head.weights.tobytes()
    assert (a.default_threshold, a.fallback_threshold, a.head_weight) == (
        b.default_threshold,
        b.fallback_threshold,
        b.head_weight,
    )


def test_shipped_head_is_already_half_precision() -> None:
    calibration = self_fit(_world(2), config=SelfFitConfig(head=SMALL_HEAD))
    assert calibration.head is not None
    weights = calibration.head.weights
    assert np.array_equal(weights, weights.astype(np.float16).astype(np.float32))


def test_no_head_calibrates_nearest_utterance_scores() -> None:
    calibration = self_fit(_world(3), config=SelfFitConfig(head=None))
    assert calibration.head is None
    assert calibration.head_weight == 0.0
    assert calibration.default_threshold == calibration.fallback_threshold


def test_routes_of_one_utterance_accept_everything() -> None:
    rng = np.random.default_rng(4)
    routes = [_route(f"r{i}", l2_normalise(rng.normal(size=(1, DIM)))) for i in range(5)]
    calibration = self_fit(routes, config=SelfFitConfig(head=SMALL_HEAD))
    assert calibration.default_threshold == ACCEPT_ALL
    assert calibration.fallback_threshold == ACCEPT_ALL
    assert calibration.estimate is None


def test_large_tables_run_only_the_folds_they_need() -> None:
    routes = _world(5, routes=40, per_route=10)
    config = SelfFitConfig(head=None, held_out_target=100)
    answers = held_out_answers(sorted(routes, key=lambda rv: rv.name), Router(_table(routes)).config, config,
                               None, (0.0,))  # fmt: skip
    assert answers.folds == 2  # 80 utterances per fold
    assert answers.examples == 160


def test_cut_refuses_the_asked_share_but_keeps_half_the_gain_over_nearest_utterance() -> None:
    config = SelfFitConfig(no_match_rate=0.1, gain_kept=0.5)
    scores = np.linspace(0.0, 1.0, 100)
    correct = np.ones(100, dtype=np.bool_)
    assert cut(scores, correct, nearest=0.5, config=config) == pytest.approx(np.quantile(scores, 0.1))
    # refusing 10% would leave 0.90 right; nearest utterance gets 0.95 of 1.00, so at most 2.5% go
    threshold = cut(scores, correct, nearest=0.95, config=config)
    assert (scores >= threshold).mean() >= 0.975
    # no better than nearest utterance: nothing right may be refused
    assert cut(scores, correct, nearest=1.0, config=config) <= scores.min()
    assert cut(scores, correct, nearest=0.5, config=replace(config, no_match_rate=0.0)) == ACCEPT_ALL


def test_served_calibration_answers_a_new_route_at_once_with_the_fallback_threshold() -> None:
    routes = _world(6)
    table = _table(routes)
    calibration = self_fit(routes, config=SelfFitConfig(head=SMALL_HEAD))
    table.apply([], [], ((0, 1),), calibration=calibration)
    router = Router(table)
    rng = np.random.default_rng(7)
    centre = l2_normalise(rng.normal(size=(1, DIM)))[0]
    fresh = _route("fresh", l2_normalise(centre + 0.3 * rng.normal(size=(10, DIM)) / np.sqrt(DIM)))
    table.apply([fresh], [], ((0, 2),))
    snapshot = table.snapshot()
    assert snapshot.calibration is calibration  # kept across a mutation
    assert not calibration.covers(fresh)
    assert router.threshold_for(snapshot, "fresh") == calibration.fallback_threshold
    assert router.threshold_for(snapshot, "r00") == calibration.default_threshold
    queries = l2_normalise(centre + 0.3 * rng.normal(size=(20, DIM)) / np.sqrt(DIM))
    assert sum(d.route == "fresh" for d in router.decide(queries, 1)) >= 18


def test_a_route_threshold_still_wins_over_the_calibrated_default() -> None:
    routes = _world(8)
    calibration = self_fit(routes, config=SelfFitConfig(head=None))
    strict = Route(routes[0].name, routes[0].route.utterances, threshold=0.9)
    own = replace(routes[0], route=strict, digest="")
    table = _table([own, *routes[1:]])
    table.apply([], [], (), calibration=calibration)
    assert calibration.covers(own)  # a threshold is not part of what a calibration learned
    assert Router(table).threshold_for(table.snapshot(), own.name) == 0.9


def test_rebuilds_keep_the_calibration() -> None:
    routes = _world(9)
    table = _table(routes)
    calibration = self_fit(routes, config=SelfFitConfig(head=None))
    table.apply([], [], (), calibration=calibration)
    table.rebuild(block=True)
    assert table.snapshot().calibration is calibration
    table.apply([], [], (), calibration=None)
    assert table.snapshot().calibration is None


def test_config_rejects_impossible_settings() -> None:
    for bad in ({"folds": 1}, {"no_match_rate": 1.0}, {"gain_kept": 2.0}, {"head_weights": ()}):
        with pytest.raises(ValueError, match=r"must|needs"):
            SelfFitConfig(**bad)  # type: ignore[arg-type]
