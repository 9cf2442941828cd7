"""The router a worker serves with: scoring from the settings, and a learned head kept up to date.

The head is trained in a background thread on the live table's snapshot whenever the table has
changed since the last training (checked every ``routing_head_retrain_s``) and swapped into the
router by reference. Routes added or edited after a training are answered through the
nearest-utterance path until the next head knows them, so a mutation is never hidden by a stale
head. Training is deterministic: replicas with equal tables train equal heads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from worker.config import Settings
from worker.routing import HeadTrainer, RouteHead, Router, RouteTable, ScoringConfig
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)


def scoring_config(settings: Settings) -> ScoringConfig:
    """The engine's scoring configuration with the operator's routing settings applied."""
    config = replace(
        ScoringConfig(),
        search_k=settings.routing_search_k,
        top_k=settings.routing_top_k,
        default_threshold=settings.routing_default_threshold,
        margin=settings.routing_margin,
    )
    if not settings.routing_head:
        return replace(config, head_weight=0.0)
    if settings.routing_head_weight is not None:
        return replace(config, head_weight=settings.routing_head_weight)
    return config


def head_serves(settings: Settings, routes: int) -> bool:
    """Whether a learned head serves a table of ``routes`` routes under ``settings``."""
    return settings.routing_head and routes <= settings.routing_head_max_routes


def serving_router(settings: Settings, table: RouteTable) -> Router:
    """A router over ``table`` configured by ``settings`` (its head arrives later, if enabled)."""
    return Router(table, scoring_config(settings))


class HeadKeeper:
    """Retrains the router's head when its table changes; at most one training at a time."""

    def __init__(self, router: Router, settings: Settings, metrics: PipelineMetrics | None = None) -> None:
        self.router = router
        self._metrics = metrics
        self.settings = settings
        self.interval_s = settings.routing_head_retrain_s
        self.trained = 0
        self._too_large_logged = False
        self.trainer = HeadTrainer(self._swap_in, niceness=settings.background_nice)

    def _swap_in(self, head: RouteHead) -> None:
        self.router.head = head  # one reference assignment: searches see the old or the new head
        self.trained += 1
        if self._metrics is not None:
            self._metrics.head_routes(len(head.names))
        logger.info(
            "route head %d in service: %d routes (%.2fs)", self.trained, len(head.names), head.train_seconds
        )

    def check(self) -> bool:
        """Start training if the table changed since the last head; whether training started."""
        table = self.router.table
        if not head_serves(self.settings, len(table)):
            if self.router.head is not None:
                self.router.head = None  # a head of an old, smaller table would mislead
                if self._metrics is not None:
                    self._metrics.head_routes(0)
            if not self._too_large_logged:
                logger.info(
                    "route head off: %d routes exceed routing_head_max_routes=%d (nearest-utterance only)",
                    len(table),
                    self.settings.routing_head_max_routes,
                )
                self._too_large_logged = True
            return False
        self._too_large_logged = False
        return self.trainer.maybe_train(table)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check now and every ``interval_s`` until ``stopping`` is set."""
        while not stopping.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval_s)
        # a training still running finishes in its daemon thread; its head is simply not used
