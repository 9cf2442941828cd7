from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.routing import (
    Route,
    Router,
    RouteTable,
    RouteVectors,
    ScoringConfig,
    fit_thresholds,
    l2_normalise,
)
from worker.routing.fitting import _folds, cross_validate, fit_head_weight
from worker.routing.threshold_search import best_cuts

DIM = 48
FP = "synthetic"


def _world(
    seed: int, routes: int = 30, examples_seed: int = 100
) -> tuple[RouteTable, np.ndarray, list[str | None]]:
    """Clustered routes, labelled in-scope examples near them and out-of-scope ones elsewhere."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(routes, DIM)))
    names = [f"intent_{i:02d}" for i in range(routes)]

    def near(centre: np.ndarray, n: int, spread: float) -> np.ndarray:
        return l2_normalise(centre + spread * rng.normal(size=(n, DIM)) / np.sqrt(DIM))

    table = RouteTable(DIM, FP)
    table.apply(
        [
            RouteVectors(
                Route(name, tuple(f"{name} {j}" for j in range(8))),
                near(centres[i], 8, 0.8),
                np.zeros((0, DIM), dtype=np.float32),
                FP,
            )
            for i, name in enumerate(names)
        ],
        [],
        (),
    )
    rng = np.random.default_rng(examples_seed)
    labels: list[str | None] = []
    vectors = []
    for i, name in enumerate(names):
        vectors.append(near(centres[i], 10, 1.0))
        labels += [name] * 10
    vectors.append(l2_normalise(rng.normal(size=(150, DIM))))
    labels += [None] * 150
    return table, np.concatenate(vectors), labels


def _accuracy(router: Router, vectors: np.ndarray, labels: list[str | None]) -> float:
    decisions = router.decide(vectors, 1)
    return float(np.mean([d.route == label for d, label in zip(decisions, labels, strict=True)]))


def test_fitting_reaches_high_accuracy_and_router_agrees() -> None:
    table, vectors, labels = _world(0)
    router = Router(table, ScoringConfig(default_threshold=0.0))
    fitted = fit_thresholds(router, vectors, labels)
    assert fitted.before is not None
    assert fitted.after is not None
    assert fitted.before.accuracy == pytest.approx(_accuracy(router, vectors, labels))
    assert fitted.before.no_match_recall == 0.0
    assert fitted.after.accuracy >= 0.95
    assert fitted.after.no_match_recall >= 0.9
    # The fit's own bookkeeping predicts exactly what the router then does.
    assert fitted.after.accuracy == pytest.approx(_accuracy(router.with_thresholds(fitted), vectors, labels))
    # Held-out data from the same world keeps most of the gain.
    _, test_vectors, test_labels = _world(0, examples_seed=101)
    assert _accuracy(router.with_thresholds(fitted), test_vectors, test_labels) >= 0.9
    rows = fitted.table()
    assert len(rows) == 30
    assert all(isinstance(threshold, float) for _, threshold, _ in rows)


def test_fitting_without_no_match_examples_accepts_every_route() -> None:
    table, vectors, labels = _world(1)
    keep = [i for i, label in enumerate(labels) if label is not None]
    fitted = fit_thresholds(Router(table), vectors[keep], [labels[i] for i in keep])
    assert fitted.after is not None
    assert fitted.after.no_match_examples == 0
    assert fitted.after.accuracy == pytest.approx(fitted.after.in_scope_accuracy)
    assert fitted.after.accuracy >= 0.95


def test_labels_must_match_vectors() -> None:
    table, vectors, labels = _world(2, routes=3)
    with pytest.raises(ValueError, match="labels"):
        fit_thresholds(Router(table), vectors, labels[:-1])


def test_cross_validation_matches_fitting_on_the_other_folds() -> None:
    table, vectors, labels = _world(3)
    router = Router(table, ScoringConfig(default_threshold=0.0))
    estimate = cross_validate(router, vectors, labels, folds=4)
    codes = np.array([-1 if label is None else int(label.split("_")[1]) for label in labels], dtype=np.int64)
    fold = _folds(codes, 4)
    right = 0
    for k in range(4):
        train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fitted = fit_thresholds(router, vectors[train], [labels[i] for i in train], folds=0)
        assert fitted.cross_validated is None
        decisions = router.with_thresholds(fitted).decide(vectors[held], 1)
        right += sum(d.route == labels[i] for d, i in zip(decisions, held, strict=True))
    assert estimate.examples == len(labels)
    assert estimate.accuracy == pytest.approx(right / len(labels))
    assert fit_thresholds(router, vectors, labels, folds=4).cross_validated == estimate


def test_cross_validation_exposes_thresholds_that_memorise_noise() -> None:
    # Whether an example is "no match" is a coin flip unrelated to its score: per-route thresholds
    # still find cuts that fit these examples, but they do not carry over to held-out folds.
    table, vectors, labels = _world(4)
    rng = np.random.default_rng(9)
    keep = [i for i, label in enumerate(labels) if label is not None]
    noisy: list[str | None] = [labels[i] if rng.random() < 0.5 else None for i in keep]
    fitted = fit_thresholds(Router(table, ScoringConfig(default_threshold=0.0)), vectors[keep], noisy)
    assert fitted.after is not None
    assert fitted.cross_validated is not None
    assert fitted.cross_validated.accuracy < fitted.after.accuracy - 0.05


def test_folds_deal_every_label_evenly() -> None:
    labels = np.repeat(np.arange(-1, 7), [23, 5, 1, 2, 10, 11, 4, 3]).astype(np.int64)
    fold = _folds(labels, 5)
    assert np.array_equal(fold, _folds(labels, 5))  # deterministic
    assert set(fold.tolist()) == set(range(5))
    for label in np.unique(labels):
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    # each label starts at another fold, so the folds stay about equally large
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from([-1.0, 0.0, 1.0])), min_size=1, max_size=40))
def test_best_cut_is_optimal_for_one_route(examples: list[tuple[int, float]]) -> None:
    score = np.array([s / 20 for s, _ in examples])
    gain = np.array([g for _, g in examples])
    (threshold,) = best_cuts(score, np.zeros(len(examples), dtype=np.int64), gain, 1, np.array([0.5]))
    achieved = gain[score >= threshold].sum()
    best = max(0.0, *(gain[score >= t].sum() for t in score))
    assert achieved == best


def test_fit_calibration_ships_what_it_fitted() -> None:
    from worker.routing.fit_calibration import fit_calibration
    from worker.routing.head import HeadConfig

    rng = np.random.default_rng(11)
    dim = 16
    centres = l2_normalise(rng.normal(size=(6, dim)))
    routes = [
        RouteVectors(
            Route(f"r{i}", tuple(f"r{i} {j}" for j in range(8))),
            l2_normalise(c + 0.6 * rng.normal(size=(8, dim)) / np.sqrt(dim)),
            np.zeros((0, dim), np.float32),
            "synthetic",
        )
        for i, c in enumerate(centres)
    ]
    table = RouteTable(dim, "synthetic")
    table.apply(routes, [], ())
    examples = np.concatenate(
        [l2_normalise(c + 0.6 * rng.normal(size=(10, dim)) / np.sqrt(dim)) for c in centres]
    )
    far = l2_normalise(rng.normal(size=(20, dim)))
    labels: list[str | None] = [f"r{i}" for i in range(6) for _ in range(10)] + [None] * 20
    calibration, fitted = fit_calibration(
        table, np.concatenate([examples, far]), labels, head=HeadConfig(hidden=16, epochs=4)
    )
    assert calibration.head is not None
    assert all(calibration.covers(rv) for rv in routes)
    assert calibration.default_threshold == fitted.default
    assert dict(calibration.per_route) == dict(fitted.per_route)
    assert calibration.estimate is not None
    assert calibration.estimate.no_match_recall is not None
    assert np.isfinite(calibration.fallback_threshold)
    served = Router(table, calibration=calibration)
    assert served.threshold_for(table.snapshot(), "r0") == calibration.per_route.get("r0", fitted.default)


def test_one_threshold_replaces_per_route_ones_unless_those_cross_validate_better() -> None:
    from dataclasses import replace

    from worker.routing.fit_calibration import _per_route_or_one
    from worker.routing.threshold_search import FitMetrics

    table, vectors, labels = _world(0)
    router, fitted = fit_head_weight(Router(table), vectors, labels, weights=(0.0,))
    assert fitted.per_route  # the world gives each route its own threshold
    fitted_router = router.with_thresholds(fitted)  # as fit_head_weight returns it: thresholds attached
    perfect = FitMetrics(len(labels), 0, 1.0, 1.0, 0.0, 0.0)
    assert _per_route_or_one(
        fitted_router, vectors, labels, replace(fitted, cross_validated=perfect)
    ).per_route
    hopeless = replace(perfect, accuracy=0.0)
    one = _per_route_or_one(fitted_router, vectors, labels, replace(fitted, cross_validated=hopeless))
    assert one.per_route == {}  # not the router's attached per-route thresholds kept as "current"


def test_no_match_examples_are_weighted_up_to_the_stated_share_only() -> None:
    from worker.routing.fitting import example_weights

    labels = np.array([0] * 97 + [-1] * 3, dtype=np.int64)
    weights = example_weights(labels, 0.1)
    assert weights is not None
    no_match = labels < 0
    assert weights[~no_match].tolist() == [1.0] * 97
    assert weights[no_match].sum() / weights.sum() == pytest.approx(0.1)
    assert example_weights(labels, None) is None  # the examples' own share
    assert example_weights(labels, 0.02) is None  # they already hold more than the share
    assert example_weights(np.zeros(10, dtype=np.int64), 0.1) is None  # nothing argues for refusing
    assert example_weights(np.full(10, -1, dtype=np.int64), 0.1) is None


def test_a_stated_no_match_share_refuses_more_when_the_examples_hold_few() -> None:
    from worker.routing.fitting import example_weights
    from worker.routing.threshold_search import Cut, ScoredExamples, search_cut

    # 100 right answers spread over [0.4, 1.0] and 3 "no match" examples just above the weakest
    score = np.r_[np.linspace(0.4, 1.0, 100), [0.42, 0.43, 0.44]]
    label = np.r_[np.zeros(100, dtype=np.int64), [-1, -1, -1]]
    best = np.zeros(103, dtype=np.int64)
    current = Cut(np.array([-1.0]), -1.0, 0.0)

    def fitted_default(share: float | None) -> float:
        scored = ScoredExamples(best, score, np.full(103, np.inf), label, example_weights(label, share))
        return search_cut(scored, current, 1, 2**31, [0.0]).default

    # at the examples' own 3% refusing the 3 costs 7 right answers; standing for 30% it pays
    assert fitted_default(None) <= 0.42
    assert 0.44 < fitted_default(0.3) <= score[score > 0.44].min()


def test_the_shipped_head_also_learns_the_in_scope_examples() -> None:
    from worker.routing.fit_calibration import fit_calibration
    from worker.routing.head import HeadConfig

    table, vectors, labels = _world(5, routes=8)
    config = HeadConfig(hidden=16, epochs=4)
    taught, _ = fit_calibration(table, vectors, labels, head=config)
    untaught, _ = fit_calibration(table, vectors, labels, head=config, train_on_examples=False)
    assert taught.head is not None
    assert untaught.head is not None
    assert not np.array_equal(taught.head.weights, untaught.head.weights)
    assert "head also trained on 80 of them" in taught.method
    assert "head also" not in untaught.method
    # the weight and thresholds are chosen before the head sees the examples: the same either way
    assert taught.head_weight == untaught.head_weight
    assert taught.default_threshold == untaught.default_threshold
    again, _ = fit_calibration(table, vectors, labels, head=config)
    assert again.head is not None
    assert np.array_equal(again.head.weights, taught.head.weights)
