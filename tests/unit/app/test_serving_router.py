"""The worker's router: routing settings applied, the calibration in the table served and reported."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest

from worker.app.serving import CalibrationWatch, scoring_config, self_fit_config, serving_router
from worker.config import Settings
from worker.routing import Route, RouteTable, RouteVectors, l2_normalise, self_fit
from worker.routing.head import HeadConfig
from worker.routing.self_fit import SelfFitConfig

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


def _calibrate(table: RouteTable, head_weight: float | None = None) -> None:
    config = SelfFitConfig(head=HeadConfig(hidden=16, epochs=4))
    calibration = self_fit(list(table.snapshot().routes()), config=config)
    if head_weight is not None:
        calibration = replace(calibration, head_weight=head_weight)
    table.apply([], [], table.version, calibration=calibration)


def test_settings_reach_the_scoring_config() -> None:
    config = scoring_config(
        _settings(routing_search_k=48, routing_top_k=3, routing_default_threshold=0.61, routing_margin=0.04)
    )
    assert (config.search_k, config.top_k, config.default_threshold, config.margin) == (48, 3, 0.61, 0.04)


def test_self_fit_config_follows_the_head_settings() -> None:
    assert self_fit_config(_settings(), 10).head is not None
    assert self_fit_config(_settings(routing_head=False), 10).head is None
    assert self_fit_config(_settings(routing_head_max_routes=6), 10).head is None
    assert self_fit_config(_settings(routing_no_match_rate=0.05), 10).no_match_rate == 0.05


def test_the_served_router_uses_the_calibration_installed_in_the_table() -> None:
    table = _table(8)
    router = serving_router(_settings(), table)
    assert router.calibration_for(table.snapshot()) is None
    _calibrate(table)
    calibration = router.calibration_for(table.snapshot())
    assert calibration is not None
    assert calibration.head is not None
    route = table.snapshot().route("r00")
    assert route is not None
    assert router.threshold_for(table.snapshot(), "r00") == calibration.default_threshold
    without_head = serving_router(_settings(routing_head=False), table)
    assert without_head.threshold_for(table.snapshot(), "r00") == calibration.fallback_threshold


def test_head_weight_setting_overrides_the_calibrated_weight() -> None:
    table = _table(8)
    _calibrate(table, head_weight=0.5)
    queries = l2_normalise(np.random.default_rng(3).normal(size=(20, DIM)))
    calibrated = serving_router(_settings(), table).score(queries)[1].scores
    knn_only = serving_router(_settings(routing_head_weight=0.0), table).score(queries)[1].scores
    no_head = serving_router(_settings(routing_head=False), table).score(queries)[1].scores
    np.testing.assert_array_equal(knn_only, no_head)
    assert not np.array_equal(calibrated, knn_only)


def test_watch_reports_each_calibration_once(caplog: pytest.LogCaptureFixture) -> None:
    table = _table(8)
    watch = CalibrationWatch(serving_router(_settings(), table))
    with caplog.at_level(logging.INFO, logger="worker.app.serving"):
        assert watch.check()  # the first look always reports
        assert not watch.check()
        _calibrate(table)
        assert watch.check()
        assert not watch.check()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("no calibration")
    assert "covers 8 of 8 routes" in messages[1]


async def test_watch_runs_until_stopped() -> None:
    table = _table(4)
    watch = CalibrationWatch(serving_router(_settings(), table))
    stopping = asyncio.Event()
    task = asyncio.create_task(watch.run(stopping, interval_s=0.01))
    stopping.set()
    await asyncio.wait_for(task, 5)
