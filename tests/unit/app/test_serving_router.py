"""The worker's router: scoring settings applied, the learned head trained, swapped and retrained."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from worker.app.serving import HeadKeeper, scoring_config, serving_router
from worker.config import Settings
from worker.routing import Route, RouteTable, RouteVectors, ScoringConfig, l2_normalise

DIM = 16
FP = "synthetic"


def _settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def _route(name: str, centre: np.ndarray, rng: np.random.Generator) -> RouteVectors:
    vectors = l2_normalise(centre + 0.3 * rng.normal(size=(6, DIM)) / np.sqrt(DIM))
    return RouteVectors(Route(name, tuple(f"{name} {i}" for i in range(6))), vectors, np.zeros((0, DIM)), FP)


def _table(routes: int, seed: int = 0) -> RouteTable:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(routes, DIM)))
    table = RouteTable(DIM, FP)
    table.apply([_route(f"r{i:02d}", centres[i], rng) for i in range(routes)], [], ())
    return table


def _trained(keeper: HeadKeeper) -> None:
    """Wait for the training the keeper started last: its head is in service on return."""
    keeper.trainer.wait(30)


def test_settings_reach_the_scoring_config() -> None:
    config = scoring_config(
        _settings(routing_search_k=48, routing_top_k=3, routing_default_threshold=0.61, routing_margin=0.04)
    )
    assert (config.search_k, config.top_k, config.default_threshold, config.margin) == (48, 3, 0.61, 0.04)
    assert config.head_weight == ScoringConfig().head_weight
    assert scoring_config(_settings(routing_head_weight=0.7)).head_weight == 0.7
    assert scoring_config(_settings(routing_head=False, routing_head_weight=0.7)).head_weight == 0.0


def test_keeper_trains_swaps_in_and_retrains_after_a_change() -> None:
    table = _table(8)
    router = serving_router(_settings(), table)
    keeper = HeadKeeper(router, _settings())
    assert router.head is None
    assert keeper.check()
    _trained(keeper)
    first = router.head
    assert first is not None
    assert set(first.names) == set(table.route_names())
    assert not keeper.check(), "an unchanged table is not trained again"

    rng = np.random.default_rng(5)
    added = _route("added", l2_normalise(rng.normal(size=(1, DIM)))[0], rng)
    table.apply([added], [], ())
    # before the next head: the new route is answered through the nearest utterances at once
    assert router.decide(added.utterance_vectors[:1], 1)[0].candidates[0].route == "added"
    assert keeper.check()
    _trained(keeper)
    assert router.head is not first
    assert router.head is not None
    assert "added" in router.head.names
    assert keeper.trained == 2


def test_keeper_turns_the_head_off_above_the_size_limit() -> None:
    table = _table(6)
    router = serving_router(_settings(), table)
    keeper = HeadKeeper(router, _settings(routing_head_max_routes=6))
    keeper.check()
    _trained(keeper)
    assert router.head is not None
    rng = np.random.default_rng(9)
    table.apply([_route("seventh", l2_normalise(rng.normal(size=(1, DIM)))[0], rng)], [], ())
    assert not keeper.check()
    assert router.head is None, "a head of the smaller table is withdrawn"


@pytest.mark.asyncio
async def test_keeper_loop_stops_when_asked() -> None:
    table = _table(4)
    router = serving_router(_settings(routing_head_retrain_s=0.05), table)
    keeper = HeadKeeper(router, _settings(routing_head_retrain_s=0.05))
    stopping = asyncio.Event()
    loop = asyncio.create_task(keeper.run(stopping))
    await asyncio.sleep(0)  # one turn of the loop: the keeper's first check starts a training
    await asyncio.to_thread(_trained, keeper)
    assert router.head is not None
    stopping.set()
    await asyncio.wait_for(loop, 5)
