"""The write-ahead overlay is bounded (writers wait, searches never do) and a failed background
rebuild is reported and retried until one succeeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import worker.routing.table as table_module
from worker.routing import IndexSettings, RouteTable, RouteVectors, l2_normalise

DIM = 64
FP = "hashing-bow@test:0"
RandomRoute = Callable[..., RouteVectors]


class FailingBuilds:
    """Stands in for the index build: fails while ``failing`` is set, else builds for real."""

    def __init__(self) -> None:
        self.failing = threading.Event()
        self.failing.set()
        self.attempts = 0
        self._real = table_module.build_laid_out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.failing.is_set():
            raise OSError(28, "No space left on device")
        return self._real(*args, **kwargs)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> FailingBuilds:
    failing = FailingBuilds()
    monkeypatch.setattr(table_module, "build_laid_out", failing)
    return failing


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (state of another thread) until it holds, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _table() -> RouteTable:
    settings = IndexSettings(
        overlay_rebuild_rows=6, overlay_max_rows=12, rebuild_retry_s=0.01, rebuild_retry_max_s=0.05
    )
    return RouteTable(DIM, FP, settings)


def test_a_failed_rebuild_is_reported_and_retried_until_it_succeeds(
    builds: FailingBuilds, random_route: RandomRoute
) -> None:
    rng = np.random.default_rng(0)
    table = _table()
    outcomes: list[BaseException | None] = []
    recovered = threading.Event()

    def report(error: BaseException | None) -> None:
        outcomes.append(error)
        if error is None:
            recovered.set()

    table.on_rebuild = report
    table.apply([random_route(f"r{i}", rng) for i in range(3)], (), ((0, 3),))  # 9 rows: rebuild
    _until(lambda: table.rebuild_failures >= 3)
    assert isinstance(table.last_rebuild_error, OSError)
    assert len(table) == 3  # still serving, from the overlay
    assert table.snapshot().overlay.rows == 9
    builds.failing.clear()
    assert recovered.wait(5)
    assert all(isinstance(e, OSError) for e in outcomes[:-1])
    assert outcomes[-1] is None
    assert table.last_rebuild_error is None
    assert table.snapshot().overlay.rows == 0
    assert table.snapshot().main.rows == 9
    table.close()


def test_a_full_overlay_makes_the_writer_wait_never_a_search(
    builds: FailingBuilds, random_route: RandomRoute
) -> None:
    rng = np.random.default_rng(1)
    table = _table()
    table.apply([random_route(f"r{i}", rng) for i in range(4)], (), ((0, 4),), rebuild=False)  # 12 rows
    assert not table.has_room()
    waited: list[bool] = []
    writer = threading.Thread(target=lambda: waited.append(table.wait_for_room()))
    writer.start()
    _until(lambda: builds.attempts >= 2)
    assert writer.is_alive()  # the writer waits for the failing rebuild ...
    queries = l2_normalise(rng.normal(size=(4, DIM)))
    hits = table.snapshot().search(queries, 3)  # ... while a search goes straight through
    assert (hits.route_ids >= 0).all()
    builds.failing.clear()
    writer.join(5)
    assert waited == [True]
    assert table.has_room()
    table.close()


def test_a_waiting_writer_is_released_by_a_stop(builds: FailingBuilds, random_route: RandomRoute) -> None:
    rng = np.random.default_rng(2)
    table = _table()
    table.apply([random_route(f"r{i}", rng) for i in range(4)], (), ((0, 4),), rebuild=False)
    stop = threading.Event()
    waited: list[bool] = []
    writer = threading.Thread(target=lambda: waited.append(table.wait_for_room(stop)))
    writer.start()
    stop.set()
    writer.join(5)
    assert waited == [False]
    table.close()
    assert not table.wait_for_room()  # a closed table releases writers at once
