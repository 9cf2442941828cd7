"""Fitting decision thresholds, the margin and the head weight from labelled examples.

Thresholds are searched on the examples as the router ranks them (``threshold_search``). Settings
that change the ranking, such as the head weight, are chosen by cross-validation over the
examples: thresholds fitted on all folds but one are judged on the fold left out, so a setting is
not rewarded for thresholds that merely memorise the examples they were fitted on.

"No match" examples are weighted to stand for at least ``no_match_share`` of the traffic
(:data:`NO_MATCH_SHARE` by default). People who label examples write a few "no match" ones next to
many per route, so the examples' own share is rarely the traffic's; fitted to it, a threshold is
placed where refusing one more query gains nothing on the examples, and on traffic with more "no
match" it accepts far too much (CLINC150: the fit split holds 3% out-of-scope, its test 18%, and
accuracy on the fit split is flat between thresholds whose out-of-scope recall differs by 25
points). Examples without any "no match" are never weighted: nothing argues for refusing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from worker.routing.router import Router
from worker.routing.scoring import RouteScores, Thresholds
from worker.routing.threshold_search import (
    ACCEPT_ALL,
    Cut,
    FitMetrics,
    Labels,
    ScoredExamples,
    metrics,
    predict,
    search_cut,
)

__all__ = [
    "ACCEPT_ALL",
    "NO_MATCH_SHARE",
    "FitMetrics",
    "FittedThresholds",
    "WeightChoice",
    "cross_validate",
    "example_weights",
    "fit_head_weight",
    "fit_thresholds",
]

logger = logging.getLogger(__name__)

#: folds of the cross-validation; examples are assigned per label by a fixed-seed shuffle
FOLDS = 5
#: ``min_examples`` that gives every route the default threshold (no per-route thresholds)
ONE_THRESHOLD = 2**31
#: the least share of the traffic "no match" examples stand for when fitting (their own share when
#: larger); None fits to the examples' own share
NO_MATCH_SHARE: float | None = 0.1


@dataclass(frozen=True)
class WeightChoice:
    """A head weight :func:`fit_head_weight` tried, with the cross-validated metrics it reached."""

    head_weight: float
    cross_validated: FitMetrics


@dataclass(frozen=True)
class FittedThresholds(Thresholds):
    """Thresholds chosen on labelled examples, with the metrics before (router as given) and after."""

    examples_per_route: tuple[tuple[str, int], ...] = ()
    before: FitMetrics | None = None
    #: on the examples the thresholds were fitted on (optimistic)
    after: FitMetrics | None = None
    #: fitted the same way on all folds but one, judged on the fold left out (honest estimate)
    cross_validated: FitMetrics | None = None
    #: every head weight compared by :func:`fit_head_weight` (empty when it did not choose one)
    head_weights: tuple[WeightChoice, ...] = ()

    def table(self) -> list[tuple[str, float, int]]:
        """``(route, threshold, examples)`` rows for display; routes without one use ``default``."""
        counts = dict(self.examples_per_route)
        return [(name, self.per_route.get(name, self.default), counts[name]) for name in sorted(counts)]


@dataclass(frozen=True)
class _Prepared:
    """Examples scored by one router, with its current thresholds as a cut over the same codes."""

    names: list[str]
    scored: ScoredExamples
    current: Cut


def fit_thresholds(
    router: Router,
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    *,
    min_examples: int = 3,
    margins: Sequence[float] | None = None,
    folds: int = FOLDS,
    no_match_share: float | None = NO_MATCH_SHARE,
) -> FittedThresholds:
    """Choose per-route thresholds, a default threshold and a margin maximising accuracy (with "no
    match" examples weighted to ``no_match_share`` of the traffic, see the module's docstring).

    ``labels[i]`` is the route example ``i`` belongs to, or None for "no match". Routes with fewer
    than ``min_examples`` examples ranked first get the default threshold. ``margins`` are the
    candidate margins (by default 0 and quantiles of the observed runner-up gaps). Among equally
    good cuts the most permissive wins; without "no match" examples everything is accepted; when no
    candidate beats the router's current thresholds on these examples, those are kept.
    ``folds`` > 1 also reports the cross-validated metrics of this procedure.
    """
    prepared = _prepare(router, vectors, labels, no_match_share)
    return _fit(router, prepared, min_examples, margins, folds)


def cross_validate(
    router: Router,
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    *,
    min_examples: int = 3,
    margins: Sequence[float] | None = None,
    folds: int = FOLDS,
    no_match_share: float | None = NO_MATCH_SHARE,
) -> FitMetrics:
    """Metrics of :func:`fit_thresholds` on examples it did not see: each fold is decided by
    thresholds fitted on the others."""
    return _cross_validate(_prepare(router, vectors, labels, no_match_share), min_examples, margins, folds)


def fit_head_weight(
    router: Router,
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    *,
    min_examples: int = 3,
    folds: int = FOLDS,
    no_match_share: float | None = NO_MATCH_SHARE,
) -> tuple[Router, FittedThresholds]:
    """Choose ``config.head_weight`` by cross-validated accuracy (weighted as in
    :func:`fit_thresholds`; the smaller weight on ties, closer to plain kNN), then fit thresholds
    with it on all examples. Returns the fitted router; the
    returned thresholds list every weight tried in ``head_weights``."""
    choices: list[WeightChoice] = []
    best: tuple[float, Router, _Prepared] | None = None
    for weight in sorted(set(weights)):
        candidate = Router(
            router.table,
            replace(router.config, head_weight=float(weight)),
            router.thresholds,
            router.head,
            calibrated=router.calibrated,
        )
        prepared = _prepare(candidate, vectors, labels, no_match_share)
        estimate = _cross_validate(prepared, min_examples, None, folds)
        choices.append(WeightChoice(float(weight), estimate))
        if best is None or estimate.objective > best[0]:
            best = (estimate.objective, candidate, prepared)
    assert best is not None
    _, chosen, prepared = best
    fitted = replace(_fit(chosen, prepared, min_examples, None, folds), head_weights=tuple(choices))
    logger.info("fitted head weight %.2f (cross-validated accuracy %.4f)", chosen.config.head_weight, best[0])
    return chosen.with_thresholds(fitted), fitted


def example_weights(labels: Labels, no_match_share: float | None) -> npt.NDArray[np.float64] | None:
    """Weights that make "no match" examples (label -1) stand for ``no_match_share`` of all, with
    in-scope examples at weight 1; None when nothing is reweighted (no share given, no "no match"
    or no in-scope example, or the examples already hold at least that share)."""
    no_match = labels < 0
    observed = float(no_match.mean()) if labels.size else 0.0
    if no_match_share is None or observed in (0.0, 1.0) or observed >= no_match_share:
        return None
    ratio = (no_match_share / observed) / ((1.0 - no_match_share) / (1.0 - observed))
    return np.where(no_match, ratio, 1.0)


def _prepare(
    router: Router, vectors: npt.ArrayLike, labels: Sequence[str | None], no_match_share: float | None
) -> _Prepared:
    snapshot, ranked = router.score(vectors)
    names = sorted(set(snapshot.route_names()) | {label for label in labels if label is not None})
    code = {name: i for i, name in enumerate(names)}
    label_codes = np.array([-1 if label is None else code[label] for label in labels], dtype=np.int64)
    if label_codes.shape[0] != ranked.starts.shape[0] - 1:
        raise ValueError(f"{label_codes.shape[0]} labels for {ranked.starts.shape[0] - 1} vectors")
    current = router.thresholds
    calibration = router.calibration_for(snapshot)
    if current is not None:
        current_default = current.default
    elif calibration is not None:
        current_default = calibration.default_threshold
    else:
        current_default = router.config.default_threshold
    thresholds = np.array([router.threshold_for(snapshot, name) for name in names])
    return _Prepared(
        names,
        _scored(ranked, code, label_codes, example_weights(label_codes, no_match_share)),
        Cut(thresholds, current_default, router.margin_for(snapshot)),
    )


def _scored(
    ranked: RouteScores, code: dict[str, int], label_codes: Labels, weight: npt.NDArray[np.float64] | None
) -> ScoredExamples:
    starts, ends = ranked.starts[:-1], ranked.starts[1:]
    has = ends > starts
    last = max(len(ranked.names) - 1, 0)
    first, second = np.minimum(starts, last), np.minimum(starts + 1, last)
    route_codes = np.array([code[name] for name in ranked.names], dtype=np.int64)
    best = np.where(has, route_codes[first] if route_codes.size else -1, -1)
    score = np.where(has, ranked.scores[first] if ranked.scores.size else 0.0, -np.inf)
    runner_up = np.where(ends - starts > 1, ranked.scores[second] if ranked.scores.size else 0.0, -np.inf)
    return ScoredExamples(best, score, score - runner_up, label_codes, weight)


def _fit(
    router: Router, prepared: _Prepared, min_examples: int, margins: Sequence[float] | None, folds: int
) -> FittedThresholds:
    scored, names = prepared.scored, prepared.names
    cut = search_cut(scored, prepared.current, len(names), min_examples, margins)
    examples = np.bincount(scored.best[scored.best >= 0], minlength=len(names))
    if cut.kept_current:
        per_route = dict(router.thresholds.per_route) if router.thresholds is not None else {}
    else:
        per_route = {
            name: float(cut.thresholds[i]) for i, name in enumerate(names) if examples[i] >= min_examples
        }
    before = metrics(scored, predict(scored, prepared.current.thresholds, prepared.current.margin))
    after = metrics(scored, predict(scored, cut.thresholds, cut.margin))
    estimate = _cross_validate(prepared, min_examples, margins, folds) if folds > 1 else None
    logger.info(
        "fitted thresholds on %d examples: accuracy %.4f -> %.4f (margin %.4f, default %.4f)",
        after.examples,
        before.accuracy,
        after.accuracy,
        cut.margin,
        cut.default,
    )
    return FittedThresholds(
        per_route=per_route,
        default=cut.default,
        margin=cut.margin,
        examples_per_route=tuple((name, int(examples[i])) for i, name in enumerate(names)),
        before=before,
        after=after,
        cross_validated=estimate,
    )


def _cross_validate(
    prepared: _Prepared, min_examples: int, margins: Sequence[float] | None, folds: int
) -> FitMetrics:
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    scored = prepared.scored
    fold = _folds(scored.label, folds)
    predicted = np.full(scored.label.shape, -1, dtype=np.int64)
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        cut = search_cut(scored.take(~held), prepared.current, len(prepared.names), min_examples, margins)
        predicted[held] = predict(scored.take(held), cut.thresholds, cut.margin)
    return metrics(scored, predicted)


def _folds(labels: Labels, folds: int) -> npt.NDArray[np.int64]:
    """A fold per example: every label's examples dealt round-robin in a fixed-seed shuffled order."""
    order = np.random.default_rng(0).permutation(labels.size)
    shuffled = labels[order]
    by_label = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[by_label]
    begins = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    sizes = np.diff(np.r_[begins, labels.size])
    rank = np.arange(labels.size) - np.repeat(begins, sizes)
    # Each label starts at another fold, so labels with few examples do not all land in fold 0.
    fold = np.empty(labels.size, dtype=np.int64)
    fold[order[by_label]] = (rank + np.repeat(np.arange(begins.size), sizes)) % max(folds, 1)
    return fold
