"""One accuracy run: a route set (full or k per intent), every router evaluated on the same vectors.

Routers (rows of the tables):

- nearest utterance: the route of the single most similar utterance, no threshold (the baseline);
- routeworker uncalibrated: ``ScoringConfig()`` and its 0.5 threshold, no head (what a table
  without any calibration serves);
- routeworker served defaults: the self-fit calibration (no labelled data) that `routeworker
  routes apply` publishes, served as a replica serves it;
- routeworker fitted: a calibration fitted on the fit split (head, head weight, thresholds, margin;
  "no match" examples weighted to ``NO_MATCH_SHARE`` of traffic; the shipped head also trained on
  the in-scope fit examples), what `routeworker fit --examples ... --publish` ships.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np
from datasets import Dataset, Split
from metrics import report

from worker.routing import Route, RouteCalibration, Router, RouteTable, RouteVectors, ScoringConfig, self_fit
from worker.routing.fit_calibration import fit_calibration
from worker.routing.head import HeadConfig, train_head
from worker.routing.route_calibration import half_precision
from worker.routing.self_fit import SelfFitConfig

NEAREST = "nearest utterance (no threshold)"
UNCALIBRATED = "routeworker uncalibrated (threshold 0.5, no head)"
SERVED = "routeworker served defaults (self-fit, no labels)"
FITTED = "routeworker fitted on the fit split (+ head)"
SR_DEFAULT = "semantic-router 1.1.1 (defaults)"
SR_FITTED = "semantic-router 1.1.1 (own fit on the fit split)"


def route_vectors(split: Split, vectors: np.ndarray, fingerprint: str) -> list[RouteVectors]:
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(split.labels):
        assert label is not None
        rows.setdefault(label, []).append(i)
    empty = np.zeros((0, vectors.shape[1]), np.float32)
    return [
        RouteVectors(Route(name, tuple(split.texts[i] for i in idx)), vectors[idx], empty, fingerprint)
        for name, idx in sorted(rows.items())
    ]


def build_table(split: Split, vectors: np.ndarray, fingerprint: str) -> RouteTable:
    return RouteTable.from_routes(
        route_vectors(split, vectors, fingerprint), (), vectors.shape[1], fingerprint
    )


def predict(router: Router, vectors: np.ndarray) -> list[str | None]:
    return [d.route for d in router.decide(vectors, 1)]


def nearest_utterance(routes: Split, route_vecs: np.ndarray, test_vecs: np.ndarray) -> list[str | None]:
    best = np.argmax(test_vecs @ route_vecs.T, axis=1)
    return [routes.labels[i] for i in best]


def calibration_figures(calibration: RouteCalibration, seconds: float) -> dict[str, object]:
    """What a calibration chose, and the estimate it chose it by (never test figures)."""
    return {
        "method": calibration.method,
        "head_weight": calibration.head_weight,
        "default_threshold": calibration.default_threshold,
        "fallback_threshold": calibration.fallback_threshold,
        "margin": calibration.margin,
        "per_route_thresholds": len(calibration.per_route),
        "estimate": asdict(calibration.estimate) if calibration.estimate is not None else None,
        "seconds": seconds,
    }


def evaluate_run(
    ds: Dataset,
    route_rows: Sequence[int],
    vec: dict[str, np.ndarray],
    fingerprint: str,
    *,
    fit_excluded_rows: Sequence[int] = (),
    served_from: dict[str, object] | None = None,
) -> dict[str, object]:
    """Every routeworker router on the routes ``ds.routes[route_rows]``, judged on ``ds.test``.

    ``fit_excluded_rows`` (rows into ``ds.routes``) are fit examples too: left out of the routes
    while fitting, so a fit example never matches itself; the served head is then retrained on all
    routes with the fitted settings. ``served_from`` (an earlier run of the same routes: its
    ``results`` and ``calibrations``) gives the served defaults' figures instead of self-fitting
    again.
    """
    routes = ds.routes.take(list(route_rows))
    route_vecs = vec["routes"][list(route_rows)]
    test, truth = vec["test"], ds.test.labels
    table = build_table(routes, route_vecs, fingerprint)
    results: dict[str, dict[str, float | int]] = {
        NEAREST: report(nearest_utterance(routes, route_vecs, test), truth),
        UNCALIBRATED: report(predict(Router(table, calibrated=False), test), truth),
    }
    choices: dict[str, object] = {}

    if served_from is not None:
        results[SERVED] = served_from["results"][SERVED]  # type: ignore[index]
        choices[SERVED] = {**served_from["calibrations"][SERVED], "reused": True}  # type: ignore[index]
    else:
        started = time.perf_counter()
        served = self_fit(list(table.snapshot().routes()), ScoringConfig(), SelfFitConfig())
        choices[SERVED] = calibration_figures(served, time.perf_counter() - started)
        results[SERVED] = report(predict(Router(table, calibration=served), test), truth)

    held = set(fit_excluded_rows)
    keep = [i for i in route_rows if i not in held]
    fitting_table = table if not held else build_table(ds.routes.take(keep), vec["routes"][keep], fingerprint)
    started = time.perf_counter()
    # with held-out rows the fit examples are route utterances of the served table already
    fitted, _ = fit_calibration(
        fitting_table, vec["fit"], ds.fit.labels, head=HeadConfig(), train_on_examples=not held
    )
    if held:
        # served as fitted, with the head trained on every route (as `fit` on the full file would)
        head = half_precision(train_head(table.snapshot().routes(), HeadConfig()))
        fitted = replace(fitted, routes=dict(head.digests), head=head)
    choices[FITTED] = calibration_figures(fitted, time.perf_counter() - started)
    results[FITTED] = report(predict(Router(table, calibration=fitted), test), truth)
    return {"results": results, "calibrations": choices, "routes": len(table), "utterances": len(routes)}


def sample_rows(labels: Sequence[str | None], pool: Sequence[int], k: int, seed: int) -> list[int]:
    """``k`` rows per label drawn from ``pool`` (all of a label's rows when it has fewer)."""
    by_label: dict[str, list[int]] = {}
    for i in pool:
        label = labels[i]
        assert label is not None
        by_label.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    for label in sorted(by_label):
        candidates = by_label[label]
        rows += [candidates[j] for j in sorted(rng.permutation(len(candidates))[:k])]
    return rows
