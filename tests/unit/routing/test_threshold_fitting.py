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
from worker.routing.fitting import _best_cuts

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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from([-1.0, 0.0, 1.0])), min_size=1, max_size=40))
def test_best_cut_is_optimal_for_one_route(examples: list[tuple[int, float]]) -> None:
    score = np.array([s / 20 for s, _ in examples])
    gain = np.array([g for _, g in examples])
    (threshold,) = _best_cuts(score, np.zeros(len(examples), dtype=np.int64), gain, 1, np.array([0.5]))
    achieved = gain[score >= threshold].sum()
    best = max(0.0, *(gain[score >= t].sum() for t in score))
    assert achieved == best
