"""The router: nearest utterances -> route scores -> a decision per query (or no match)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.routing.errors import DimensionMismatch
from worker.routing.head import RouteHead
from worker.routing.route_calibration import RouteCalibration
from worker.routing.scoring import RouteScores, ScoringConfig, Thresholds, combine_with_head, score_routes
from worker.routing.snapshot import TableSnapshot
from worker.routing.table import RouteTable
from worker.routing.types import Candidate, Decision, Vectors

logger = logging.getLogger(__name__)

# Scores are published rounded: exact and brute-force search may differ in the last float bits for
# the same vectors, and replicas holding a route in different places must still print equal answers.
_SCORE_DECIMALS = 6


class Router:
    """Decides, for a batch of query vectors, which route each query belongs to.

    It serves the calibration in the table's snapshot (shipped through the mutation log and
    swapped in with the routes), unless it is given one (``calibration``). A route the calibration
    covers scores ``(1 - w) * knn + w * head probability`` and must reach its calibrated threshold;
    any other route (added or changed since) scores its kNN similarity and must reach the
    calibration's fallback threshold, so a mutation is answered at once. Without any calibration a
    route uses the threshold in its definition, else ``config.default_threshold``.

    ``thresholds`` and ``head`` override the calibration; the fitting tools use them to try
    settings (``config.head_weight`` then weighs the head); ``calibrated=False`` ignores any. With
    explicit thresholds a route's threshold is, in order: the fitted per-route threshold, the
    threshold in its definition, the fitted default. ``serve_head=False`` ignores a calibrated head
    (kNN scores, fallback thresholds); ``head_weight`` overrides the calibrated weight.
    """

    def __init__(
        self,
        table: RouteTable,
        config: ScoringConfig | None = None,
        thresholds: Thresholds | None = None,
        head: RouteHead | None = None,
        *,
        calibration: RouteCalibration | None = None,
        calibrated: bool = True,
        serve_head: bool = True,
        head_weight: float | None = None,
    ) -> None:
        self.table = table
        self.config = config or ScoringConfig()
        self.thresholds = thresholds
        self.head = head
        self.calibration = calibration
        self.calibrated = calibrated
        self.serve_head = serve_head
        self.head_weight = head_weight

    def with_thresholds(self, thresholds: Thresholds | None) -> Router:
        """A router over the same table and head using ``thresholds`` (e.g. fresh from fitting)."""
        return Router(
            self.table,
            self.config,
            thresholds,
            self.head,
            calibration=self.calibration,
            calibrated=self.calibrated,
            serve_head=self.serve_head,
            head_weight=self.head_weight,
        )

    def calibration_for(self, snapshot: TableSnapshot) -> RouteCalibration | None:
        """The calibration decisions against ``snapshot`` are made with (None: uncalibrated)."""
        if not self.calibrated:
            return None
        return self.calibration if self.calibration is not None else snapshot.calibration

    def _served_head(self, snapshot: TableSnapshot) -> tuple[RouteHead | None, float]:
        if self.head is not None:
            return self.head, self.config.head_weight
        calibration = self.calibration_for(snapshot)
        if calibration is None or calibration.head is None or not self.serve_head:
            return None, 0.0
        weight = self.head_weight if self.head_weight is not None else calibration.head_weight
        return calibration.head, weight

    def threshold_for(self, snapshot: TableSnapshot, name: str) -> float:
        """The threshold the winner ``name`` must reach."""
        route = snapshot.route(name)
        fitted = self.thresholds
        if fitted is not None:
            if name in fitted.per_route:
                return float(fitted.per_route[name])
            if route is not None and route.route.threshold is not None:
                return float(route.route.threshold)
            return float(fitted.default)
        calibration = self.calibration_for(snapshot)
        if calibration is not None and route is not None:
            if self.head is None and calibration.head is not None and not self.serve_head:
                # its head is not served: every route is scored as one it does not cover
                return (
                    calibration.fallback_threshold if route.route.threshold is None else route.route.threshold
                )
            return calibration.threshold(route)
        if route is not None and route.route.threshold is not None:
            return float(route.route.threshold)
        return self.config.default_threshold

    def margin_for(self, snapshot: TableSnapshot) -> float:
        """How much the winner must beat the runner-up by."""
        if self.thresholds is not None:
            return float(self.thresholds.margin)
        calibration = self.calibration_for(snapshot)
        return calibration.margin if calibration is not None else self.config.margin

    @property
    def margin(self) -> float:
        """How much the winner must beat the runner-up by, against the current snapshot."""
        return self.margin_for(self.table.snapshot())

    def score(self, query_vectors: npt.ArrayLike) -> tuple[TableSnapshot, RouteScores]:
        """Ranked route scores of every query against one consistent table snapshot."""
        snapshot = self.table.snapshot()
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.table.dim:
            raise DimensionMismatch(
                f"query vectors of shape {queries.shape}, table dimension {self.table.dim}"
            )
        ranked = score_routes(queries, snapshot, self.config)
        head, weight = self._served_head(snapshot)  # read once: a swap must not mix two heads
        if head is not None and weight > 0:
            ranked = combine_with_head(ranked, queries, snapshot, head, weight)
        return snapshot, ranked

    def decide(self, query_vectors: Vectors, top_n: int | Sequence[int]) -> list[Decision]:
        """One decision per query row, with ``top_n`` candidates (one count for all, or per query).

        Synchronous and CPU-bound: call it from a worker thread, not the event loop.
        """
        snapshot, ranked = self.score(query_vectors)
        count = ranked.starts.shape[0] - 1
        wanted = [top_n] * count if isinstance(top_n, int) else list(top_n)
        if len(wanted) != count:
            raise ValueError(f"{len(wanted)} top_n values for {count} queries")
        margin = self.margin_for(snapshot)
        decisions = []
        for row in range(count):
            start, end = int(ranked.starts[row]), int(ranked.starts[row + 1])
            scores = ranked.scores[start:end]
            names = ranked.names[start:end]
            candidates = tuple(
                Candidate(names[i], round(float(scores[i]), _SCORE_DECIMALS))
                for i in range(min(max(wanted[row], 0), end - start))
            )
            route: str | None = None
            best = round(float(scores[0]), _SCORE_DECIMALS) if end > start else 0.0
            if end > start:
                runner_up = float(scores[1]) if end - start > 1 else -np.inf
                passes = float(scores[0]) >= self.threshold_for(snapshot, names[0])
                if passes and float(scores[0]) - runner_up >= margin:
                    route = names[0]
            decisions.append(Decision(route, best, candidates, snapshot.version))
        return decisions
