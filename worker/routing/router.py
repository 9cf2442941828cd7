"""The router: nearest utterances -> route scores -> a decision per query (or no match)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.routing.errors import DimensionMismatch
from worker.routing.head import RouteHead
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

    A route's threshold is, in order: the fitted per-route threshold, the threshold in the route's
    definition, the fitted default, ``config.default_threshold``. Fitting is the operator's
    calibration of the deployed model, so it takes precedence over a hand-written value.

    With a ``head``, routes it was trained on (same digest) score ``(1 - w) * knn + w * head
    probability`` (``w = config.head_weight``); other routes keep their kNN score, so a mutation
    after training is visible at once. ``router.head`` may be swapped by reference at any time.
    """

    def __init__(
        self,
        table: RouteTable,
        config: ScoringConfig | None = None,
        thresholds: Thresholds | None = None,
        head: RouteHead | None = None,
    ) -> None:
        self.table = table
        self.config = config or ScoringConfig()
        self.thresholds = thresholds
        self.head = head

    def with_thresholds(self, thresholds: Thresholds | None) -> Router:
        """A router over the same table and head using ``thresholds`` (e.g. fresh from fitting)."""
        return Router(self.table, self.config, thresholds, self.head)

    def threshold_for(self, snapshot: TableSnapshot, name: str) -> float:
        """The threshold the winner ``name`` must reach."""
        fitted = self.thresholds
        if fitted is not None and name in fitted.per_route:
            return float(fitted.per_route[name])
        route = snapshot.route(name)
        if route is not None and route.route.threshold is not None:
            return float(route.route.threshold)
        return float(fitted.default) if fitted is not None else self.config.default_threshold

    @property
    def margin(self) -> float:
        """How much the winner must beat the runner-up by."""
        return float(self.thresholds.margin) if self.thresholds is not None else self.config.margin

    def score(self, query_vectors: npt.ArrayLike) -> tuple[TableSnapshot, RouteScores]:
        """Ranked route scores of every query against one consistent table snapshot."""
        snapshot = self.table.snapshot()
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.table.dim:
            raise DimensionMismatch(
                f"query vectors of shape {queries.shape}, table dimension {self.table.dim}"
            )
        ranked = score_routes(queries, snapshot, self.config)
        head = self.head  # read once: a concurrent swap must not mix two heads in one batch
        if head is not None and self.config.head_weight > 0:
            ranked = combine_with_head(ranked, queries, snapshot, head, self.config.head_weight)
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
        margin = self.margin
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
