"""A replica opening on its store: routes made without reading their definitions serve as the
stored routes, and a store whose definitions are not sound stops it before it serves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from worker.config import load_settings
from worker.replication import RouteReplica
from worker.routing import Route, Router, RouteStore, RouteVectors, StoreError, l2_normalise

DIM = 16
FINGERPRINT = "stand-in@test:0"


class _Model:
    """What opening asks of an encoder pool: the model's identity (nothing is embedded)."""

    dim = DIM
    fingerprint = FINGERPRINT


def _route(name: str, axis: int, threshold: float | None) -> RouteVectors:
    """Utterances near axes ``axis`` and ``axis + 1``, a negative on the last axis."""
    utterances, negatives = np.zeros((2, DIM)), np.zeros((1, DIM))
    utterances[0, axis], utterances[1, axis + 1], negatives[0, DIM - 1] = 1.0, 1.0, 1.0
    route = Route(name, (f"{name} one", f"{name} two"), (f"not {name}",), threshold, {"team": name})
    return RouteVectors(route, l2_normalise(utterances + 0.1), l2_normalise(negatives), FINGERPRINT)


def _replica(tmp_path: Path, routes: list[RouteVectors]) -> RouteReplica:
    store_path = tmp_path / "routes.sqlite3"
    RouteStore(store_path).apply(routes, [], {0: len(routes)})
    settings = load_settings(
        kafka_bootstrap="localhost:1", topic_mutations="mutations", store_path=store_path
    )
    return RouteReplica(settings, _Model(), store_path=store_path)  # type: ignore[arg-type]


async def test_an_opened_replica_decides_with_the_stored_routes_thresholds(tmp_path: Path) -> None:
    routes = [_route("billing", 0, 0.99), _route("weather", 4, None)]
    replica = _replica(tmp_path, routes)
    await replica.open()
    table = replica.table
    for rv in routes:
        held = table.snapshot().route(rv.name)
        assert held is not None
        assert held.route == rv.route
        assert held.digest == rv.digest
    router = Router(table)
    # billing's threshold (0.99), read from its stored definition, turns down a query that
    # scores 0.9 with it; weather (the default threshold) takes one as close to it
    near_billing, near_weather = np.zeros((1, DIM)), np.zeros((1, DIM))
    near_billing[0, 0], near_billing[0, 2] = 0.9, np.sqrt(1 - 0.81)
    near_weather[0, 4], near_weather[0, 6] = 0.9, np.sqrt(1 - 0.81)
    assert router.threshold_for(table.snapshot(), "billing") == 0.99
    billing, weather = router.decide(np.vstack([near_billing, near_weather]).astype(np.float32), 2)
    assert billing.candidates[0].route == "billing"
    assert billing.route is None
    assert weather.candidates[0].route == "weather"
    assert weather.route == "weather"


async def test_a_replica_whose_stored_definitions_are_not_sound_does_not_open(tmp_path: Path) -> None:
    replica = _replica(tmp_path, [_route("billing", 0, 0.5), _route("weather", 4, None)])
    with sqlite3.connect(tmp_path / "routes.sqlite3") as conn:
        conn.execute("UPDATE routes SET definition = substr(definition, 1, 30) WHERE name = 'weather'")
    with pytest.raises(StoreError, match="'weather'"):
        await replica.open()
    with pytest.raises(RuntimeError, match="has not been called"):
        replica.table  # noqa: B018 - it never got a table to serve
