"""A route replica's events as metrics and readiness (the composition root wires them)."""

from __future__ import annotations

import logging

from worker.replication import ReplayReason, ReplicaEvents
from worker.telemetry import Telemetry

logger = logging.getLogger(__name__)

#: the readiness hold of a failing index rebuild (``Health.hold_readiness`` source)
INDEX_REBUILD = "index-rebuild"


class ReplicaTelemetry(ReplicaEvents):
    """Counts full replays, skipped mutations, waits for the overlay and failed rebuilds; a failed
    rebuild holds readiness until one succeeds (the table serves meanwhile, from a growing overlay
    whose bound then stops live mutations)."""

    def __init__(self, telemetry: Telemetry, topic: str) -> None:
        self._metrics = telemetry.metrics
        self._health = telemetry.health
        self._topic = topic
        self._metrics.unknown_fields(topic, 0)  # exported from the start: rate() has a base

    def full_replay(self, reason: ReplayReason, detail: str) -> None:
        self._metrics.full_replay(reason.value)

    def mutation_skipped(self, code: str, partition: int, offset: int) -> None:
        self._metrics.mutation_skipped(code)

    def unknown_fields(self, fields: int) -> None:
        self._metrics.unknown_fields(self._topic, fields)

    def index_rebuild(self, error: BaseException | None) -> None:
        if error is None:
            self._health.release_readiness(INDEX_REBUILD)
            return
        self._metrics.rebuild_failed()
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        self._health.hold_readiness(INDEX_REBUILD, f"the route index rebuild failed ({reason}); retrying")

    def overlay_rows(self, rows: int) -> None:
        self._metrics.overlay_rows(rows)

    def apply_waited(self, seconds: float) -> None:
        self._metrics.apply_waited()
