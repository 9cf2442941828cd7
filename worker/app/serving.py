"""The router a worker serves with, and how the routing settings shape a calibration.

A worker never trains a head or fits thresholds itself: the calibration in service arrives through
the mutation log (made once by `routeworker routes apply` or `routeworker fit --publish`) and is
swapped into the route table with the routes, so replicas on different CPUs serve byte-identical
heads and thresholds. :class:`CalibrationWatch` only reports which one is in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from worker.config import Settings
from worker.routing import RouteCalibration, Router, RouteTable, ScoringConfig, SelfFitConfig
from worker.routing.head import HeadConfig
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)

#: how often the calibration in service is looked at (logging and the head gauge only)
WATCH_INTERVAL_S = 5.0


def scoring_config(settings: Settings) -> ScoringConfig:
    """The engine's scoring configuration with the operator's routing settings applied."""
    return replace(
        ScoringConfig(),
        search_k=settings.routing_search_k,
        top_k=settings.routing_top_k,
        default_threshold=settings.routing_default_threshold,
        margin=settings.routing_margin,
    )


def head_serves(settings: Settings, routes: int) -> bool:
    """Whether a calibration of ``routes`` routes trains a learned head under ``settings``."""
    return settings.routing_head and routes <= settings.routing_head_max_routes


def self_fit_config(settings: Settings, routes: int) -> SelfFitConfig:
    """How `routes apply` and `fit` without examples calibrate a table of ``routes`` routes."""
    head = HeadConfig() if head_serves(settings, routes) else None
    return SelfFitConfig(no_match_rate=settings.routing_no_match_rate, head=head)


def serving_router(settings: Settings, table: RouteTable) -> Router:
    """A router over ``table`` serving the calibration installed in it, shaped by ``settings``."""
    return Router(
        table,
        scoring_config(settings),
        serve_head=settings.routing_head,
        head_weight=settings.routing_head_weight,
    )


def describe(calibration: RouteCalibration | None, routes: int) -> str:
    """One line saying what serves a table of ``routes`` routes."""
    if calibration is None:
        return f"no calibration: {routes} routes on nearest utterances and the default threshold"
    head = f"head of {len(calibration.head.names)} routes" if calibration.head is not None else "no head"
    return (
        f"calibration {calibration.digest[:12]} ({calibration.method}): {head}, "
        f"weight {calibration.head_weight:.2f}, threshold {calibration.default_threshold:.4f}, "
        f"fallback {calibration.fallback_threshold:.4f}"
    )


class CalibrationWatch:
    """Logs each calibration that goes into service and keeps the head gauge current."""

    def __init__(self, router: Router, metrics: PipelineMetrics | None = None) -> None:
        self.router = router
        self._metrics = metrics
        self._seen: RouteCalibration | None = None
        self._first = True

    def check(self) -> bool:
        """Report the calibration in service if it changed since the last look; whether it did."""
        snapshot = self.router.table.snapshot()
        calibration = self.router.calibration_for(snapshot)
        if calibration is self._seen and not self._first:
            return False
        self._first = False
        self._seen = calibration
        covered = sum(1 for rv in snapshot.routes() if calibration is not None and calibration.covers(rv))
        logger.info(
            "%s; covers %d of %d routes", describe(calibration, len(snapshot)), covered, len(snapshot)
        )
        if self._metrics is not None:
            head = calibration.head if calibration is not None and self.router.serve_head else None
            self._metrics.head_routes(len(head.names) if head is not None else 0)
        return True

    async def run(self, stopping: asyncio.Event, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Look now and every ``interval_s`` until ``stopping`` is set."""
        while not stopping.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
