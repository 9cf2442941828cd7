"""Why the router decided what it did: derived afterwards from the table snapshot and the decision.

Nothing here changes a decision. For the query's best routes it recomputes, against the snapshot
and head the decision was made with, the nearest-utterance score, the head's probability and its
share of the blended score, the route's nearest utterances with their similarities, and which rule
accepted the winner or rejected it (its threshold, or the margin over the runner-up).

Synchronous numpy and Faiss work like :meth:`Router.decide`: run it on the search thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from worker.routing.head import RouteHead
from worker.routing.router import Router
from worker.routing.scoring import score_routes
from worker.routing.snapshot import TableSnapshot
from worker.routing.types import Decision, TableVersion, Vectors

Rule = Literal["matched", "below_threshold", "within_margin", "no_candidates"]

#: routes explained per query, and nearest utterances shown per route
ROUTES = 3
UTTERANCES = 3


@dataclass(frozen=True, slots=True)
class NearUtterance:
    """One of a route's utterances and its similarity (inner product) with the query."""

    utterance: str
    similarity: float


@dataclass(frozen=True, slots=True)
class RouteReason:
    """How one candidate route got its score."""

    route: str
    score: float
    knn_score: float
    threshold: float
    #: None when no head serves or the head was not trained on this route's current definition
    head_probability: float | None
    #: the head's part of ``score``: ``head_weight * head_probability / score`` (None without head)
    head_share: float | None
    nearest: tuple[NearUtterance, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a query got its answer. ``rule`` names what decided; for a no match, what rejected."""

    rule: Rule
    threshold: float | None
    margin: float
    #: winner's score minus the runner-up's (None with fewer than two candidates)
    gap_to_runner_up: float | None
    head_weight: float
    routes: tuple[RouteReason, ...]
    #: the table state explained (equal to the decision's unless a mutation came in between)
    routes_version: TableVersion


def explain(
    router: Router,
    snapshot: TableSnapshot,
    head: RouteHead | None,
    vectors: Vectors,
    decisions: Sequence[Decision],
    *,
    routes: int = ROUTES,
    utterances: int = UTTERANCES,
) -> list[Explanation]:
    """One explanation per row of ``vectors`` and its decision, from ``snapshot`` and ``head``."""
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    knn = score_routes(queries, snapshot, router.config)
    weight = router.config.head_weight if head is not None else 0.0
    probabilities = head.probabilities(queries) if head is not None and weight > 0 else None
    out = []
    for row, decision in enumerate(decisions):
        start, end = int(knn.starts[row]), int(knn.starts[row + 1])
        knn_scores = {knn.names[i]: float(knn.scores[i]) for i in range(start, end)}
        reasons = []
        for candidate in decision.candidates[:routes]:
            vectors_of = snapshot.route(candidate.route)
            if vectors_of is None:
                continue  # deleted since the decision: nothing left to explain it with
            probability: float | None = None
            if probabilities is not None and head is not None:
                column = head.column(vectors_of)
                probability = float(probabilities[row, column]) if column >= 0 else None
            share = None
            if probability is not None and candidate.score > 0:
                share = _round(weight * probability / candidate.score)
            similarities = vectors_of.utterance_vectors @ queries[row]
            best = np.argsort(-similarities, kind="stable")[:utterances]
            reasons.append(
                RouteReason(
                    route=candidate.route,
                    score=candidate.score,
                    knn_score=_round(knn_scores.get(candidate.route, float("nan"))),
                    threshold=_round(router.threshold_for(snapshot, candidate.route)),
                    head_probability=None if probability is None else _round(probability),
                    head_share=share,
                    nearest=tuple(
                        NearUtterance(vectors_of.route.utterances[i], _round(float(similarities[i])))
                        for i in best
                    ),
                )
            )
        out.append(_judged(router, snapshot, decision, reasons, weight))
    return out


def _judged(
    router: Router, snapshot: TableSnapshot, decision: Decision, reasons: list[RouteReason], weight: float
) -> Explanation:
    margin = router.margin
    candidates = decision.candidates
    if not candidates:
        return Explanation("no_candidates", None, margin, None, weight, (), snapshot.version)
    threshold = router.threshold_for(snapshot, candidates[0].route)
    gap = _round(candidates[0].score - candidates[1].score) if len(candidates) > 1 else None
    if decision.route is not None:
        rule: Rule = "matched"
    elif candidates[0].score < threshold:
        rule = "below_threshold"
    else:
        rule = "within_margin"
    return Explanation(rule, _round(threshold), margin, gap, weight, tuple(reasons), snapshot.version)


def _round(value: float) -> float:
    # as the router publishes scores: replicas print equal explanations
    return round(value, 6)
