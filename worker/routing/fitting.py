"""Fitting decision thresholds and the margin from labelled examples, vectorised.

Thresholds never change which route ranks first, so each example is scored once; then, for every
candidate margin, each route's best threshold is a best-prefix search over its examples sorted by
score (one sort and one cumulative sum for all routes at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from worker.routing.router import Router
from worker.routing.scoring import Floats, Thresholds

logger = logging.getLogger(__name__)

Labels = npt.NDArray[np.int64]  # route codes, -1 for "no match"

#: the threshold that accepts every score (fitted when no example says "no match")
ACCEPT_ALL = float("-inf")


@dataclass(frozen=True)
class FitMetrics:
    """How well a set of thresholds decides the labelled examples."""

    examples: int
    no_match_examples: int
    accuracy: float
    #: among examples labelled with a route, the share routed to it
    in_scope_accuracy: float
    #: among "no match" examples, the share answered with no match
    no_match_recall: float
    #: among "no match" answers, the share that were labelled "no match"
    no_match_precision: float


@dataclass(frozen=True)
class FittedThresholds(Thresholds):
    """Thresholds chosen on labelled examples, with the metrics before (router as given) and after."""

    examples_per_route: tuple[tuple[str, int], ...] = ()
    before: FitMetrics | None = None
    after: FitMetrics | None = None

    def table(self) -> list[tuple[str, float, int]]:
        """``(route, threshold, examples)`` rows for display; routes without one use ``default``."""
        counts = dict(self.examples_per_route)
        return [(name, self.per_route.get(name, self.default), counts[name]) for name in sorted(counts)]


@dataclass(frozen=True)
class _Scored:
    best: Labels  # best route's code, -1 when no route was found
    score: Floats
    gap: Floats  # best minus runner-up (inf without runner-up)
    label: Labels


def fit_thresholds(
    router: Router,
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    *,
    min_examples: int = 3,
    margins: Sequence[float] | None = None,
) -> FittedThresholds:
    """Choose per-route thresholds, a default threshold and a margin maximising accuracy.

    ``labels[i]`` is the route example ``i`` belongs to, or None for "no match". Routes with fewer
    than ``min_examples`` examples ranked first get the default threshold. ``margins`` are the
    candidate margins (by default 0 and quantiles of the observed runner-up gaps). Among equally
    good cuts the most permissive wins; without "no match" examples everything is accepted; when no
    candidate beats the router's current thresholds on these examples, those are kept.
    """
    snapshot, ranked = router.score(vectors)
    names = sorted(set(snapshot.route_names()) | {label for label in labels if label is not None})
    code = {name: i for i, name in enumerate(names)}
    label_codes = np.array([-1 if label is None else code[label] for label in labels], dtype=np.int64)
    starts, ends = ranked.starts[:-1], ranked.starts[1:]
    if label_codes.shape[0] != starts.shape[0]:
        raise ValueError(f"{label_codes.shape[0]} labels for {starts.shape[0]} vectors")
    has = ends > starts
    first = np.minimum(starts, max(len(ranked.names) - 1, 0))
    route_codes = np.array([code[name] for name in ranked.names], dtype=np.int64)
    best = np.where(has, route_codes[first] if route_codes.size else -1, -1)
    score = np.where(has, ranked.scores[first] if ranked.scores.size else 0.0, -np.inf)
    second = np.minimum(starts + 1, max(len(ranked.names) - 1, 0))
    runner_up = np.where(ends - starts > 1, ranked.scores[second] if ranked.scores.size else 0.0, -np.inf)
    scored = _Scored(best, score, score - runner_up, label_codes)

    current = router.thresholds
    current_default = current.default if current is not None else router.config.default_threshold
    before_thresholds = np.array([router.threshold_for(snapshot, name) for name in names])
    before = _metrics(scored, before_thresholds, router.margin)

    finite_gaps = scored.gap[np.isfinite(scored.gap) & (best >= 0)]
    if margins is None:
        quantiles = np.quantile(finite_gaps, np.linspace(0, 0.5, 26)) if finite_gaps.size else np.zeros(0)
        margins = [0.0, *np.unique(np.round(quantiles, 4)).tolist()]
    best_fit: tuple[float, float, Floats, float] | None = None
    for margin in sorted(set(margins)):
        default = _fit_default(scored, margin, current_default)
        thresholds = _fit_per_route(scored, margin, default, len(names), min_examples)
        accuracy = _metrics(scored, thresholds, margin).accuracy
        if best_fit is None or accuracy > best_fit[0]:
            best_fit = (accuracy, margin, thresholds, default)
    assert best_fit is not None
    _, margin, thresholds, default = best_fit
    examples = np.bincount(best[best >= 0], minlength=len(names))
    per_route = {name: float(thresholds[i]) for i, name in enumerate(names) if examples[i] >= min_examples}
    if best_fit[0] < before.accuracy:
        # A fit never makes the examples it was fitted on worse: keep what the router had.
        margin, default, thresholds = router.margin, current_default, before_thresholds
        per_route = dict(current.per_route) if current is not None else {}
    after = _metrics(scored, thresholds, margin)
    logger.info(
        "fitted thresholds on %d examples: accuracy %.4f -> %.4f (margin %.4f, default %.4f)",
        after.examples,
        before.accuracy,
        after.accuracy,
        margin,
        default,
    )
    return FittedThresholds(
        per_route=per_route,
        default=default,
        margin=margin,
        examples_per_route=tuple((name, int(examples[i])) for i, name in enumerate(names)),
        before=before,
        after=after,
    )


def _gain(scored: _Scored, margin: float) -> Floats:
    # Accepting example i (instead of answering "no match") gains +1 when its label is the best
    # route, -1 when it is "no match", 0 when it is another route (wrong either way).
    eligible = (scored.best >= 0) & (scored.gap >= margin)
    gain = (scored.label == scored.best).astype(np.float64) - (scored.label < 0)
    return np.where(eligible, gain, 0.0)


def _fit_default(scored: _Scored, margin: float, fallback: float) -> float:
    if not (scored.label < 0).any():
        # Without a single "no match" example nothing argues for rejecting: accept everything.
        return ACCEPT_ALL
    groups = np.zeros_like(scored.best)
    return float(_best_cuts(scored.score, groups, _gain(scored, margin), 1, np.array([fallback]))[0])


def _fit_per_route(scored: _Scored, margin: float, default: float, routes: int, min_examples: int) -> Floats:
    found = scored.best >= 0
    thresholds = np.full(routes, default)
    fitted = _best_cuts(
        scored.score[found], scored.best[found], _gain(scored, margin)[found], routes, thresholds
    )
    examples = np.bincount(scored.best[found], minlength=routes)
    return np.where(examples >= min_examples, fitted, default)


def _best_cuts(score: Floats, group: Labels, gain: Floats, groups: int, prior: Floats) -> Floats:
    """Per group, the threshold whose accepted set (score >= threshold) has the largest total gain;
    among equal gains, the largest accepted set.

    Any threshold between the last accepted and the first rejected score is as good on these
    examples; the prior (the default threshold) is taken when it lies in that interval, else the
    midpoint, which keeps rarely seen routes close to the default.
    """
    result = prior.astype(np.float64).copy()
    if score.size == 0:
        return result
    order = np.lexsort((-score, group))
    score, group, gain = score[order], group[order], gain[order]
    totals = np.cumsum(gain)
    begins = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    offsets = np.repeat(np.r_[0.0, totals[begins[1:] - 1]], np.diff(np.r_[begins, score.size]))
    within = totals - offsets  # gain of accepting this example and every better one in its group
    # Ties in score must be accepted together: only cut after the last of equal scores.
    cuttable = np.r_[(score[1:] != score[:-1]) | (group[1:] != group[:-1]), True]
    candidate = np.where(cuttable, within, -np.inf)
    best_gain = np.maximum.reduceat(candidate, begins)
    ids = group[begins]
    for i, begin in enumerate(begins):
        end = begins[i + 1] if i + 1 < begins.size else score.size
        if best_gain[i] <= 0:
            hi, lo = np.inf, score[begin]  # accept nothing
        else:
            # The most permissive of equally good cuts: a plateau of wrong-route examples (gain 0)
            # costs nothing on these examples, while rejecting it would reject unseen right ones.
            ties = np.flatnonzero(candidate[begin:end] == best_gain[i])
            cut = begin + int(ties[-1])
            hi = score[cut]
            lo = score[cut + 1] if cut + 1 < end else -np.inf
        prior_value = result[ids[i]]
        if lo < prior_value <= hi:
            continue
        if np.isfinite(hi) and np.isfinite(lo):
            result[ids[i]] = (hi + lo) / 2
        elif np.isfinite(hi):
            result[ids[i]] = min(prior_value, hi)
        else:
            result[ids[i]] = max(prior_value, np.nextafter(lo, np.inf))
    return result


def _metrics(scored: _Scored, thresholds: Floats, margin: float) -> FitMetrics:
    found = scored.best >= 0
    accepted = found & (scored.score >= thresholds[np.maximum(scored.best, 0)]) & (scored.gap >= margin)
    predicted = np.where(accepted, scored.best, -1)
    no_match = scored.label < 0
    answered_none = predicted < 0
    return FitMetrics(
        examples=int(scored.label.size),
        no_match_examples=int(no_match.sum()),
        accuracy=_share(predicted == scored.label, np.ones_like(no_match)),
        in_scope_accuracy=_share(predicted == scored.label, ~no_match),
        no_match_recall=_share(answered_none, no_match),
        no_match_precision=_share(no_match, answered_none),
    )


def _share(hit: npt.NDArray[np.bool_], among: npt.NDArray[np.bool_]) -> float:
    total = int(among.sum())
    return float((hit & among).sum() / total) if total else 0.0


def fit_head_weight(
    router: Router,
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
) -> tuple[Router, FittedThresholds]:
    """Choose ``config.head_weight`` and thresholds together: the best fitted accuracy on the
    examples wins, the smaller weight on ties (closer to plain kNN). Returns the fitted router."""
    best: tuple[float, Router, FittedThresholds] | None = None
    for weight in sorted(set(weights)):
        config = replace(router.config, head_weight=float(weight))
        candidate = Router(router.table, config, router.thresholds, router.head)
        fitted = fit_thresholds(candidate, vectors, labels)
        accuracy = fitted.after.accuracy if fitted.after is not None else 0.0
        if best is None or accuracy > best[0]:
            best = (accuracy, candidate, fitted)
    assert best is not None
    logger.info("fitted head weight %.2f (accuracy %.4f)", best[1].config.head_weight, best[0])
    return best[1].with_thresholds(best[2]), best[2]
