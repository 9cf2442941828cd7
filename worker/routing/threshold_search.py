"""The search behind threshold fitting: per-route cuts on scored examples, vectorised.

Thresholds never change which route ranks first, so each example is scored once; then, for every
candidate margin, each route's best threshold is a best-prefix search over its examples sorted by
score (one sort and one cumulative sum for all routes at once).

Examples may carry weights (``ScoredExamples.weight``): the fit then maximises the weighted
accuracy (:attr:`FitMetrics.objective`), which is how ``worker.routing.fitting`` places thresholds
for the share of "no match" the traffic is assumed to hold rather than the examples' own share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.routing.scoring import Floats

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
    #: what the fit maximises: accuracy with every example counted at its weight (None: unweighted,
    #: then equal to ``accuracy``)
    weighted_accuracy: float | None = None

    @property
    def objective(self) -> float:
        """The figure fits are chosen by: the weighted accuracy where examples are weighted."""
        return self.accuracy if self.weighted_accuracy is None else self.weighted_accuracy


@dataclass(frozen=True)
class ScoredExamples:
    """Labelled examples as the router ranked them (route codes index one list of route names)."""

    best: Labels  # best route's code, -1 when no route was found
    score: Floats
    gap: Floats  # best minus runner-up (inf without runner-up)
    label: Labels
    #: each example's weight in the fit's objective (None: every example counts 1)
    weight: Floats | None = None

    def take(self, rows: npt.NDArray[np.bool_]) -> ScoredExamples:
        """The examples selected by the mask ``rows``."""
        weight = self.weight[rows] if self.weight is not None else None
        return ScoredExamples(self.best[rows], self.score[rows], self.gap[rows], self.label[rows], weight)


@dataclass(frozen=True)
class Cut:
    """Thresholds per route code, the default they fall back to, and the margin."""

    thresholds: Floats
    default: float
    margin: float
    #: the router's own thresholds were kept: no candidate was better on the examples
    kept_current: bool = False


def search_cut(
    scored: ScoredExamples,
    current: Cut,
    routes: int,
    min_examples: int,
    margins: Sequence[float] | None,
) -> Cut:
    """The cut with the best accuracy on ``scored``; ``current`` (the router's) unless beaten."""
    finite_gaps = scored.gap[np.isfinite(scored.gap) & (scored.best >= 0)]
    if margins is None:
        quantiles = np.quantile(finite_gaps, np.linspace(0, 0.5, 26)) if finite_gaps.size else np.zeros(0)
        margins = [0.0, *np.unique(np.round(quantiles, 4)).tolist()]
    best: tuple[float, Cut] | None = None
    for margin in sorted(set(margins)):
        default = _fit_default(scored, margin, current.default)
        thresholds = _fit_per_route(scored, margin, default, routes, min_examples)
        accuracy = metrics(scored, predict(scored, thresholds, margin)).objective
        if best is None or accuracy > best[0]:
            best = (accuracy, Cut(thresholds, default, margin))
    assert best is not None
    if best[0] < metrics(scored, predict(scored, current.thresholds, current.margin)).objective:
        # A fit never makes the examples it was fitted on worse: keep what the router had.
        return Cut(current.thresholds, current.default, current.margin, kept_current=True)
    return best[1]


def predict(scored: ScoredExamples, thresholds: Floats, margin: float) -> Labels:
    """The route code each example is answered with under ``thresholds``, or -1 for no match."""
    found = scored.best >= 0
    accepted = found & (scored.score >= thresholds[np.maximum(scored.best, 0)]) & (scored.gap >= margin)
    predicted: Labels = np.where(accepted, scored.best, -1)
    return predicted


def metrics(scored: ScoredExamples, predicted: Labels) -> FitMetrics:
    """Accuracy figures of the answers ``predicted`` for ``scored``."""
    no_match = scored.label < 0
    answered_none = predicted < 0
    weighted = None
    if scored.weight is not None and scored.weight.size:
        weighted = float(scored.weight[predicted == scored.label].sum() / scored.weight.sum())
    return FitMetrics(
        examples=int(scored.label.size),
        no_match_examples=int(no_match.sum()),
        accuracy=_share(predicted == scored.label, np.ones_like(no_match)),
        in_scope_accuracy=_share(predicted == scored.label, ~no_match),
        no_match_recall=_share(answered_none, no_match),
        no_match_precision=_share(no_match, answered_none),
        weighted_accuracy=weighted,
    )


def _share(hit: npt.NDArray[np.bool_], among: npt.NDArray[np.bool_]) -> float:
    total = int(among.sum())
    return float((hit & among).sum() / total) if total else 0.0


def _gain(scored: ScoredExamples, margin: float) -> Floats:
    # Accepting example i (instead of answering "no match") gains +1 when its label is the best
    # route, -1 when it is "no match", 0 when it is another route (wrong either way).
    # Weighted examples gain (or lose) their weight.
    eligible = (scored.best >= 0) & (scored.gap >= margin)
    gain = (scored.label == scored.best).astype(np.float64) - (scored.label < 0)
    if scored.weight is not None:
        gain = gain * scored.weight
    return np.where(eligible, gain, 0.0)


def _fit_default(scored: ScoredExamples, margin: float, fallback: float) -> float:
    if not (scored.label < 0).any():
        # Without a single "no match" example nothing argues for rejecting: accept everything.
        return ACCEPT_ALL
    groups = np.zeros_like(scored.best)
    return float(best_cuts(scored.score, groups, _gain(scored, margin), 1, np.array([fallback]))[0])


def _fit_per_route(
    scored: ScoredExamples, margin: float, default: float, routes: int, min_examples: int
) -> Floats:
    found = scored.best >= 0
    thresholds = np.full(routes, default)
    fitted = best_cuts(
        scored.score[found], scored.best[found], _gain(scored, margin)[found], routes, thresholds
    )
    examples = np.bincount(scored.best[found], minlength=routes)
    return np.where(examples >= min_examples, fitted, default)


def best_cuts(score: Floats, group: Labels, gain: Floats, groups: int, prior: Floats) -> Floats:
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
