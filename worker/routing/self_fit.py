"""Self-fit: a calibration from the routes alone, by cross-validation over their own utterances.

No labelled data is needed. Each route's utterances are dealt into folds; for a fold, a table of
the other utterances and a head trained on them answer the held-out ones, whose right route is
known. From those answers:

- the head weight is the one with the best cross-validated top-1 accuracy (the smaller on ties);
- the default threshold refuses about ``no_match_rate`` of the held-out answers (the lowest
  scores): a query less typical of the routes than nearly all of their own utterances is "no
  match". It never spends more than ``gain_kept`` of the cross-validated gain over nearest
  utterance on refusals, so the served defaults stay above that baseline on in-scope queries;
- the fallback threshold (routes the calibration does not cover, scored by kNN alone) is found
  the same way on the kNN scores.

The held-out answers come from the folds' smaller tables and weaker heads, so the served
calibration (head trained on everything) refuses fewer in-scope queries than estimated. Large
tables run only as many folds as give ``held_out_target`` answers. Deterministic: folds are dealt
by position, the head is seeded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from worker.routing.head import HeadConfig, RouteHead, train_head
from worker.routing.index_settings import IndexSettings
from worker.routing.route_calibration import (
    ACCEPT_ALL,
    CalibrationEstimate,
    RouteCalibration,
    half_precision,
)
from worker.routing.scoring import Floats, RouteScores, ScoringConfig, blend_head, head_columns, score_routes
from worker.routing.table import RouteTable
from worker.routing.types import Bools, Int64s, Route, RouteVectors

logger = logging.getLogger(__name__)

#: exact search while self-fitting, whatever the size: the estimate should not depend on recall
_EXACT = IndexSettings(approximate_above=2**62)


@dataclass(frozen=True)
class SelfFitConfig:
    """How a calibration is chosen from the routes alone."""

    #: cross-validation folds over each route's utterances
    folds: int = 5
    #: large tables run only as many folds as hold out this many utterances (bounds the cost)
    held_out_target: int = 2_000
    #: share of the held-out answers the default threshold refuses: a false "no match" rate
    no_match_rate: float = 0.02
    #: refusals may spend at most this share of the cross-validated gain over nearest utterance
    gain_kept: float = 0.5
    head_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    #: the head's training settings; None calibrates kNN scores only (no head)
    head: HeadConfig | None = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError("self-fit needs at least 2 folds")
        if not (0.0 <= self.no_match_rate < 1.0 and 0.0 <= self.gain_kept <= 1.0):
            raise ValueError("no_match_rate must be within [0, 1), gain_kept within [0, 1]")
        if not self.head_weights or any(not 0.0 <= w <= 1.0 for w in self.head_weights):
            raise ValueError("head_weights must be non-empty and within [0, 1]")


@dataclass(frozen=True)
class HeldOutAnswers:
    """The cross-validated answers to held-out utterances, per head weight tried."""

    weights: tuple[float, ...]
    #: (weights, answers): whether the top route was the utterance's own
    correct: npt.NDArray[np.bool_]
    #: (weights, answers): the top route's score (-inf when no route was found)
    score: Floats
    #: (answers,): whether the single nearest utterance belongs to the right route
    nearest_correct: Bools
    folds: int

    @property
    def examples(self) -> int:
        return int(self.correct.shape[1])


def self_fit(
    routes: Sequence[RouteVectors],
    scoring: ScoringConfig | None = None,
    config: SelfFitConfig | None = None,
) -> RouteCalibration:
    """A calibration for ``routes`` chosen by cross-validation over their utterances."""
    scoring = scoring or ScoringConfig()
    config = config or SelfFitConfig()
    if not routes:
        raise ValueError("self-fit needs at least one route")
    started = time.perf_counter()
    ordered = sorted(routes, key=lambda rv: rv.name)
    fingerprint = ordered[0].fingerprint
    head_config = config.head if len(ordered) >= 2 else None
    weights = tuple(sorted(set(config.head_weights))) if head_config is not None else (0.0,)
    answers = held_out_answers(ordered, scoring, config, head_config, weights)
    head = half_precision(train_head(ordered, head_config)) if head_config is not None else None
    covered = {rv.name: rv.training_digest for rv in ordered}
    if answers.examples == 0:
        # every route has a single utterance: nothing can be held out, so nothing is refused
        calibration = RouteCalibration(
            fingerprint,
            covered,
            head,
            0.5 if head else 0.0,
            ACCEPT_ALL,
            ACCEPT_ALL,
            method=_method(config, 0),
        )
        logger.info("self-fit: no route has two utterances; accepting every score")
        return calibration
    accuracy = answers.correct.mean(axis=1)
    chosen = int(np.argmax(accuracy))  # the first best: the smallest weight among equals
    nearest = float(answers.nearest_correct.mean())
    default = cut(answers.score[chosen], answers.correct[chosen], nearest, config)
    fallback = cut(answers.score[0], answers.correct[0], nearest, config)
    served_weight = weights[chosen] if head is not None else 0.0
    kept = answers.score[chosen] >= default
    right = float((answers.correct[chosen] & kept).mean())
    estimate = CalibrationEstimate(
        held_out="route utterances",
        examples=answers.examples,
        accuracy=right,
        in_scope_accuracy=right,
        refused=float((~kept).mean()),
        top1=float(accuracy[chosen]),
        nearest_utterance=nearest,
        folds=answers.folds,
    )
    logger.info(
        "self-fit of %d routes in %.1fs: head weight %.2f, threshold %.4f (fallback %.4f); "
        "cross-validated top-1 %.4f, %.4f after refusing %.4f, nearest utterance %.4f",
        len(ordered),
        time.perf_counter() - started,
        served_weight,
        default,
        fallback,
        accuracy[chosen],
        right,
        estimate.refused,
        nearest,
    )
    return RouteCalibration(
        fingerprint=fingerprint,
        routes=covered,
        head=head,
        head_weight=served_weight,
        default_threshold=default,
        fallback_threshold=fallback,
        method=_method(config, answers.folds),
        estimate=estimate,
    )


def _method(config: SelfFitConfig, folds: int) -> str:
    return (
        f"self-fit: {folds} of {config.folds} folds over the route utterances, "
        f"no-match rate {config.no_match_rate:g}, gain kept {config.gain_kept:g}"
    )


def cut(scores: Floats, correct: npt.NDArray[np.bool_], nearest: float, config: SelfFitConfig) -> float:
    """The threshold refusing ``no_match_rate`` of the held-out answers, lowered until accepted right
    answers keep at least ``nearest + gain_kept * (accuracy - nearest)`` of all answers."""
    if scores.size == 0 or config.no_match_rate == 0:
        return ACCEPT_ALL
    finite = np.isfinite(scores)
    quantile = float(np.quantile(scores[finite], config.no_match_rate)) if finite.any() else ACCEPT_ALL
    accuracy = float(correct.mean())
    floor = nearest + config.gain_kept * (accuracy - nearest) if accuracy > nearest else accuracy
    needed = math.ceil(floor * scores.size - 1e-9)
    right = np.sort(scores[correct])[::-1]
    if needed <= 0:
        return quantile
    if needed > right.size:
        return ACCEPT_ALL
    return min(quantile, float(right[needed - 1]))


def held_out_answers(
    routes: Sequence[RouteVectors],
    scoring: ScoringConfig,
    config: SelfFitConfig,
    head_config: HeadConfig | None,
    weights: tuple[float, ...],
) -> HeldOutAnswers:
    """Answer every held-out utterance of the folds run (``routes`` in name order)."""
    folds = _deal(routes, config.folds)
    per_fold = np.bincount(np.concatenate([f[f >= 0] for f in folds] or [np.zeros(0, np.int64)]),
                           minlength=config.folds)  # fmt: skip
    run = _folds_to_run(per_fold, config.held_out_target)
    correct: list[npt.NDArray[np.bool_]] = []
    score: list[Floats] = []
    nearest: list[Bools] = []
    for fold in run:
        c, s, n = _answer_fold(routes, folds, fold, scoring, head_config, weights)
        correct.append(c)
        score.append(s)
        nearest.append(n)
    width = len(weights)
    return HeldOutAnswers(
        weights=weights,
        correct=np.concatenate(correct, axis=1) if correct else np.zeros((width, 0), np.bool_),
        score=np.concatenate(score, axis=1) if score else np.zeros((width, 0)),
        nearest_correct=np.concatenate(nearest) if nearest else np.zeros(0, np.bool_),
        folds=len(run),
    )


def _deal(routes: Sequence[RouteVectors], folds: int) -> list[Int64s]:
    """Each utterance's fold (-1: never held out). A route with one utterance keeps it; the others
    are dealt round-robin from a fold that shifts with the route, so folds are evenly filled."""
    dealt = []
    for index, rv in enumerate(routes):
        count = rv.utterance_vectors.shape[0]
        if count < 2:
            dealt.append(np.full(count, -1, dtype=np.int64))
        else:
            dealt.append((np.arange(count, dtype=np.int64) + index) % folds)
    return dealt


def _folds_to_run(per_fold: Int64s, target: int) -> list[int]:
    run: list[int] = []
    total = 0
    for fold, count in enumerate(per_fold.tolist()):
        if count == 0:
            continue
        run.append(fold)
        total += count
        if total >= target:
            break
    return run


def _answer_fold(
    routes: Sequence[RouteVectors],
    folds: list[Int64s],
    fold: int,
    scoring: ScoringConfig,
    head_config: HeadConfig | None,
    weights: tuple[float, ...],
) -> tuple[npt.NDArray[np.bool_], Floats, Bools]:
    kept: list[RouteVectors] = []
    queries: list[np.ndarray] = []
    labels: list[str] = []
    for rv, dealt in zip(routes, folds, strict=True):
        held = dealt == fold
        if not held.any():
            kept.append(rv)
            continue
        route = rv.route
        keep = np.flatnonzero(~held)
        smaller = Route(
            route.name,
            tuple(route.utterances[i] for i in keep),
            route.negative_utterances,
            route.threshold,
            route.metadata,
        )
        kept.append(RouteVectors(smaller, rv.utterance_vectors[keep], rv.negative_vectors, rv.fingerprint))
        queries.append(rv.utterance_vectors[held])
        labels += [rv.name] * int(held.sum())
    first = routes[0]
    table = RouteTable.from_routes(kept, (), first.dim, first.fingerprint, _EXACT)
    snapshot = table.snapshot()
    vectors = np.ascontiguousarray(np.concatenate(queries), dtype=np.float32)
    truth = np.array(labels, dtype=object)
    ranked = score_routes(vectors, snapshot, scoring)
    nearest_ids = snapshot.search(vectors, 1).route_ids[:, 0]
    nearest = np.array(
        [snapshot.route_at(int(i)).name if i >= 0 else None for i in nearest_ids], dtype=object
    )
    head: RouteHead | None = train_head(kept, head_config) if head_config is not None else None
    columns = head_columns(ranked, snapshot, head) if head is not None else None
    probabilities = head.probabilities(vectors) if head is not None else None
    correct = np.zeros((len(weights), truth.size), np.bool_)
    score = np.full((len(weights), truth.size), -np.inf)
    for i, weight in enumerate(weights):
        blended = ranked
        if head is not None and columns is not None and probabilities is not None:
            blended = blend_head(ranked, probabilities, columns, weight)
        top, best = _top(blended, truth.size)
        correct[i] = top == truth
        score[i] = best
    return correct, score, nearest == truth


def _top(ranked: RouteScores, rows: int) -> tuple[npt.NDArray[np.object_], Floats]:
    """Each row's best route name (None when no route was found) and its score."""
    starts, ends = ranked.starts[:-1], ranked.starts[1:]
    names = np.array((*ranked.names, None), dtype=object)
    found = ends > starts
    first = np.where(found, starts, len(ranked.names))
    best = np.where(found, np.r_[ranked.scores, -np.inf][first], -np.inf)
    return names[first], best
