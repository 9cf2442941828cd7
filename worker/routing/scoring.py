"""Scoring routes from their nearest utterances, vectorised over a batch of queries.

A route's score is an aggregate of its ``top_k`` best utterance similarities. Utterances beyond the
retrieved hits are counted at the weakest retrieved similarity of that query (an upper bound), so a
route with many utterances is not rewarded for having only one close hit when the others were
never retrieved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from worker.routing.head import RouteHead
from worker.routing.snapshot import Hits, TableSnapshot
from worker.routing.types import Int64s, Vectors

Aggregation = Literal["max", "mean", "softmax"]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ScoringConfig:
    """How the router turns nearest utterances into route scores and decisions."""

    #: nearest utterances retrieved per query
    search_k: int = 32
    #: best utterances per route that make its score
    top_k: int = 5
    #: "mean" of the top_k measured best on clustered synthetic data with fitted thresholds
    #: (held-out accuracy: mean@5 0.777, mean@3 0.757, max 0.675, softmax(T=0.05)@5 0.666)
    aggregation: Aggregation = "mean"
    #: softmax temperature (only for ``aggregation="softmax"``); small is close to max, large to mean
    temperature: float = 0.1
    #: how hard a negative utterance that beats the route's score pulls it down
    negative_penalty: float = 1.0
    #: threshold of routes with none given or fitted
    default_threshold: float = 0.5
    #: the winner must beat the runner-up by this much
    margin: float = 0.0
    #: weight of the learned head's probability in a known route's score (0 = kNN only);
    #: ``fit_head_weight`` chooses it per deployment by cross-validation on labelled examples
    head_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.search_k < 1 or self.top_k < 1:
            raise ValueError("search_k and top_k must be at least 1")
        if self.aggregation not in ("max", "mean", "softmax"):
            raise ValueError(f"unknown aggregation {self.aggregation!r}")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0.0 <= self.head_weight <= 1.0:
            raise ValueError("head_weight must be within [0, 1]")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds: per route, for other routes, and the winner's margin over the runner-up."""

    per_route: Mapping[str, float] = field(default_factory=dict)
    default: float = 0.5
    margin: float = 0.0


@dataclass(frozen=True)
class RouteScores:
    """One score per (query row, route) pair found among the query's nearest utterances.

    Sorted by row, then score descending, then route name, so ``starts[i]:starts[i + 1]`` are the
    ranked routes of query ``i``.
    """

    rows: Int64s
    route_ids: Int64s
    names: tuple[str, ...]
    scores: Floats
    starts: Int64s


def aggregate(hits: Hits, counts: Int64s, config: ScoringConfig) -> tuple[Int64s, Int64s, Floats]:
    """Per (row, route) aggregate of the route's ``top_k`` hits: ``(rows, route_ids, scores)``."""
    sims, ids = hits.similarities, hits.route_ids
    n, width = ids.shape
    if n == 0 or width == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float64)
    # Group each row's hits by route (best first inside a group).
    order = np.lexsort((-sims, ids), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1).astype(np.float64)
    valid = ids >= 0
    starts = np.ones_like(valid)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    columns = np.broadcast_to(np.arange(width), (n, width))
    rank = columns - np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
    group = np.cumsum(starts.ravel()) - 1
    group_valid = valid.ravel()[starts.ravel()]
    group_rows = np.repeat(np.arange(n), width)[starts.ravel()]
    group_ids = ids.ravel()[starts.ravel()]
    k = config.top_k
    matrix = np.full((group_rows.shape[0], k), np.nan)
    kept = (valid & (rank < k)).ravel()
    matrix[group[kept], rank.ravel()[kept]] = sims.ravel()[kept]
    group_rows, group_ids, matrix = group_rows[group_valid], group_ids[group_valid], matrix[group_valid]
    # Utterances not retrieved count at the row's weakest retrieved similarity.
    floor = np.where(valid, sims, np.inf).min(axis=1)[group_rows]
    wanted = np.minimum(k, counts[group_ids])
    missing = np.isnan(matrix) & (np.arange(k) < wanted[:, None])
    matrix = np.where(missing, floor[:, None], matrix)
    return group_rows, group_ids, _combine(matrix, config)


def _combine(matrix: Floats, config: ScoringConfig) -> Floats:
    present = ~np.isnan(matrix)
    filled = np.where(present, matrix, 0.0)
    if config.aggregation == "max":
        return matrix[:, 0].copy()
    if config.aggregation == "mean":
        mean: Floats = filled.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        return mean
    # softmax-weighted mean: leans towards the best hits without ignoring the others
    logits = np.where(present, matrix / config.temperature, -np.inf)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weighted: Floats = (weights * filled).sum(axis=1) / weights.sum(axis=1)
    return weighted


def penalise_negatives(
    rows: Int64s, route_ids: Int64s, scores: Floats, queries: Vectors, snapshot: TableSnapshot, penalty: float
) -> Floats:
    """Pull down routes whose negative utterances match the query better than their positives."""
    if penalty == 0 or rows.size == 0:
        return scores
    adjusted = scores.copy()
    for route_id in np.unique(route_ids):
        negatives = snapshot.route_at(int(route_id)).negative_vectors
        if negatives.shape[0] == 0:
            continue
        where = np.flatnonzero(route_ids == route_id)
        best_negative = (queries[rows[where]] @ negatives.T).max(axis=1)
        excess = np.maximum(best_negative - scores[where], 0.0)
        adjusted[where] = scores[where] - penalty * excess
    return adjusted


def score_routes(queries: Vectors, snapshot: TableSnapshot, config: ScoringConfig) -> RouteScores:
    """Score and rank, per query, every route among its ``search_k`` nearest utterances."""
    hits = snapshot.search(queries, config.search_k)
    rows, route_ids, scores = aggregate(hits, snapshot.utterance_counts, config)
    scores = penalise_negatives(rows, route_ids, scores, queries, snapshot, config.negative_penalty)
    names = np.array([snapshot.route_at(int(i)).name for i in route_ids], dtype=object)
    return _ranked(rows, route_ids, names, scores, queries.shape[0])


def _ranked(
    rows: Int64s, route_ids: Int64s, names: npt.NDArray[np.object_], scores: Floats, n: int
) -> RouteScores:
    # Ties are broken by name: replicas agree even when equal utterances live in two routes.
    order = np.lexsort((names.astype(str), -scores, rows)) if rows.size else np.zeros(0, dtype=np.int64)
    rows = rows[order]
    starts = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    return RouteScores(rows, route_ids[order], tuple(names[order]), scores[order], starts)


def combine_with_head(
    ranked: RouteScores, queries: Vectors, snapshot: TableSnapshot, head: RouteHead, weight: float
) -> RouteScores:
    """Blend the head's probability into the kNN score of every route the head knows (same
    training digest).

    Routes the head never saw (added or changed since training) keep their kNN score; deleted
    routes are not in the snapshot, so they cannot appear.
    """
    columns = head_columns(ranked, snapshot, head)
    if not (columns >= 0).any():
        return ranked
    return blend_head(ranked, head.probabilities(queries), columns, weight)


def head_columns(ranked: RouteScores, snapshot: TableSnapshot, head: RouteHead) -> Int64s:
    """The head's column of each ranked (row, route) pair, -1 where the head does not know it."""
    if ranked.rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(ranked.route_ids, return_inverse=True)
    columns: Int64s = np.array([head.column(snapshot.route_at(int(i))) for i in unique], dtype=np.int64)
    return columns[inverse]


def blend_head(ranked: RouteScores, probabilities: Floats, columns: Int64s, weight: float) -> RouteScores:
    """``(1 - weight) * knn + weight * probability`` where ``columns >= 0``, re-ranked."""
    known = columns >= 0
    if not known.any() or weight == 0:
        return ranked
    scores = ranked.scores.copy()
    scores[known] = (1 - weight) * scores[known] + weight * probabilities[ranked.rows[known], columns[known]]
    names = np.array(ranked.names, dtype=object)
    return _ranked(ranked.rows, ranked.route_ids, names, scores, ranked.starts.shape[0] - 1)
