from __future__ import annotations

import numpy as np
import pytest

from worker.routing import (
    Route,
    Router,
    RouteTable,
    RouteVectors,
    ScoringConfig,
    fit_thresholds,
    l2_normalise,
)
from worker.routing.fitting import fit_head_weight
from worker.routing.head import HeadConfig, RouteHead, train_head
from worker.routing.threshold_search import best_cuts

DIM = 32
FP = "synthetic"


def _near(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    return l2_normalise(centre + spread * rng.normal(size=(n, DIM)) / np.sqrt(DIM))


def _route(name: str, vectors: np.ndarray) -> RouteVectors:
    return RouteVectors(
        Route(name, tuple(f"{name} {j}" for j in range(len(vectors)))),
        vectors,
        np.zeros((0, DIM), np.float32),
        FP,
    )


def _world(seed: int = 0, routes: int = 12) -> tuple[RouteTable, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(routes, DIM)))
    names = [f"r{i:02d}" for i in range(routes)]
    table = RouteTable(DIM, FP)
    table.apply([_route(n, _near(rng, centres[i], 10, 0.9)) for i, n in enumerate(names)], [], ())
    return table, centres, rng.normal(size=(1, DIM)), names


def test_head_learns_a_separable_problem() -> None:
    table, centres, _, names = _world()
    head = train_head(table.snapshot().routes(), HeadConfig(epochs=20))
    rng = np.random.default_rng(7)
    queries = np.concatenate([_near(rng, c, 5, 0.9) for c in centres])
    truth = np.repeat(np.arange(len(names)), 5)
    predicted = head.probabilities(queries).argmax(axis=1)
    assert head.names == tuple(names)
    assert float(np.mean(predicted == truth)) >= 0.95
    router = Router(table, ScoringConfig(default_threshold=-1.0), head=head)
    routed = [d.route for d in router.decide(queries, 3)]
    assert float(np.mean([r == names[t] for r, t in zip(routed, truth, strict=True)])) >= 0.95


def test_linear_head_learns_a_separable_problem() -> None:
    table, centres, _, names = _world()
    config = HeadConfig(
        hidden=0, scale=16.0, epochs=20, learning_rate=0.005, label_smoothing=0.0, dropout=0.0
    )
    head = train_head(table.snapshot().routes(), config)
    assert head.hidden_weights is None
    assert head.weights.shape == (DIM, len(names))
    rng = np.random.default_rng(7)
    queries = np.concatenate([_near(rng, c, 5, 0.9) for c in centres])
    predicted = head.probabilities(queries).argmax(axis=1)
    assert float(np.mean(predicted == np.repeat(np.arange(len(names)), 5))) >= 0.95


def test_hidden_layer_shapes_and_probabilities() -> None:
    table, centres, _, names = _world()
    head = train_head(table.snapshot().routes(), HeadConfig(hidden=24, epochs=3))
    assert head.hidden_weights is not None
    assert head.hidden_bias is not None
    assert head.hidden_weights.shape == (DIM, 24)
    assert head.hidden_bias.shape == (24,)
    assert head.weights.shape == (24, len(names))
    probs = head.probabilities(centres)
    assert probs.shape == (len(names), len(names))
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_negative_utterances_push_their_route_down() -> None:
    rng = np.random.default_rng(11)
    centres = l2_normalise(rng.normal(size=(4, DIM)))
    between = l2_normalise((centres[0] + centres[1])[None, :])
    positives = [_near(rng, c, 10, 0.6) for c in centres]
    negatives = _near(rng, between[0], 10, 0.2)

    def head_for(with_negatives: bool) -> RouteHead:
        routes = [_route(f"r{i}", v) for i, v in enumerate(positives)]
        if with_negatives:
            r0 = routes[0]
            routes[0] = RouteVectors(
                Route(r0.name, r0.route.utterances, tuple(f"not r0 {j}" for j in range(10))),
                r0.utterance_vectors,
                negatives,
                FP,
            )
        return train_head(routes)

    pushed, plain = head_for(True).probabilities(between), head_for(False).probabilities(between)
    assert pushed[0, 0] < 0.5 * plain[0, 0]


def test_config_rejects_impossible_settings() -> None:
    for bad in ({"dropout": 1.0}, {"label_smoothing": -0.1}, {"hidden": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be"):
            HeadConfig(**bad)  # type: ignore[arg-type]


def test_training_is_deterministic() -> None:
    table, *_ = _world()
    a = train_head(table.snapshot().routes())
    b = train_head(reversed(list(table.snapshot().routes())))
    assert a.names == b.names
    assert np.array_equal(a.weights, b.weights)
    assert np.array_equal(a.bias, b.bias)


def test_route_added_after_training_wins_at_once() -> None:
    table, _, _, _ = _world()
    head = train_head(table.snapshot().routes())
    router = Router(table, ScoringConfig(default_threshold=-1.0), head=head)
    rng = np.random.default_rng(3)
    fresh = l2_normalise(rng.normal(size=(1, DIM)))
    table.apply([_route("fresh", _near(rng, fresh[0], 10, 0.5))], [], ((0, 1),))
    queries = _near(rng, fresh[0], 20, 0.5)
    assert all(d.route == "fresh" for d in router.decide(queries, 1))


def test_changed_route_is_not_scored_by_the_stale_head() -> None:
    table, _centres, _, names = _world()
    head = train_head(table.snapshot().routes())
    rng = np.random.default_rng(4)
    elsewhere = l2_normalise(rng.normal(size=(1, DIM)))
    # r00 gets new utterances far away: near its old centre it must lose, near its new one it must win.
    moved_vectors = _near(rng, elsewhere[0], 10, 0.5)
    rewritten = Route(names[0], tuple(f"{names[0]} rewritten {j}" for j in range(10)))
    table.apply([RouteVectors(rewritten, moved_vectors, np.zeros((0, DIM), np.float32), FP)], [], ((0, 1),))
    snapshot = table.snapshot()
    moved = snapshot.route(names[0])
    assert moved is not None
    assert head.column(moved) == -1
    router = Router(table, ScoringConfig(default_threshold=-1.0), head=head)
    assert all(d.route == names[0] for d in router.decide(_near(rng, elsewhere[0], 10, 0.5), 1))


def test_deleted_route_is_never_returned() -> None:
    table, centres, _, names = _world()
    head = train_head(table.snapshot().routes())
    table.apply([], [names[0]], ((0, 1),))
    router = Router(table, ScoringConfig(default_threshold=-1.0), head=head)
    rng = np.random.default_rng(5)
    decisions = router.decide(_near(rng, centres[0], 30, 0.3), 5)
    assert all(d.route != names[0] for d in decisions)
    assert all(c.route != names[0] for d in decisions for c in d.candidates)


def test_a_threshold_or_metadata_edit_keeps_the_head_for_the_route() -> None:
    table, *_ = _world()
    head = train_head(table.snapshot().routes())
    before = table.snapshot().route("r00")
    assert before is not None
    edited = Route("r00", before.route.utterances, threshold=0.3, metadata={"team": "billing"})
    table.apply([RouteVectors(edited, before.utterance_vectors, before.negative_vectors, FP)], [], ((0, 1),))
    after = table.snapshot().route("r00")
    assert after is not None
    assert after.digest != before.digest  # the table changed
    assert head.column(after) == head.column(before) >= 0  # the head still knows the route


def _labelled(seed: int, routes: int = 12) -> tuple[RouteTable, np.ndarray, list[str | None]]:
    table, centres, _, names = _world(seed, routes)
    rng = np.random.default_rng(seed + 100)
    vectors = np.concatenate([_near(rng, c, 8, 1.4) for c in centres])
    labels: list[str | None] = [n for n in names for _ in range(8)]
    return table, vectors, labels


def test_fitting_never_lowers_fit_accuracy() -> None:
    for seed in range(4):
        table, vectors, labels = _labelled(seed)
        head = train_head(table.snapshot().routes())
        for router in (Router(table), Router(table, ScoringConfig(default_threshold=-1.0), head=head)):
            fitted = fit_thresholds(router, vectors, labels)
            assert fitted.before is not None
            assert fitted.after is not None
            assert fitted.after.accuracy >= fitted.before.accuracy
        fitted_router, fitted = fit_head_weight(Router(table, head=head), vectors, labels)
        assert fitted.after is not None
        assert fitted.before is not None
        assert fitted.after.accuracy >= fitted.before.accuracy
        assert fitted_router.head is head


def test_without_no_match_examples_the_fit_accepts_everything() -> None:
    table, vectors, labels = _labelled(0)
    fitted = fit_thresholds(Router(table), vectors, labels)
    assert fitted.default == float("-inf")
    assert all(t == float("-inf") for t in fitted.per_route.values())
    assert fitted.after is not None
    assert fitted.after.no_match_recall == 0.0


def test_plateau_takes_the_most_permissive_cut() -> None:
    # Scores best first: right (+1), wrong route (0), wrong route (0), then "no match" (-1).
    score = np.array([0.9, 0.8, 0.7, 0.6])
    gain = np.array([1.0, 0.0, 0.0, -1.0])
    cut = best_cuts(score, np.zeros(4, np.int64), gain, 1, np.array([0.95]))
    # Anything in (0.6, 0.7] keeps the gain; the cut accepts the whole plateau, rejects the -1.
    assert 0.6 < cut[0] <= 0.7


def test_head_weight_is_chosen_by_cross_validated_accuracy() -> None:
    chosen = set()
    for seed in (0, 2):
        table, centres, _, names = _world(seed)
        rng = np.random.default_rng(seed + 100)
        in_scope = [_near(rng, c, 8, 0.9) for c in centres]
        vectors = np.concatenate([*in_scope, l2_normalise(rng.normal(size=(40, DIM)))])
        labels: list[str | None] = [n for n in names for _ in range(8)] + [None] * 40
        head = train_head(table.snapshot().routes())
        weights = (0.0, 0.25, 0.5, 0.75)
        router, fitted = fit_head_weight(Router(table, head=head), vectors, labels, weights)
        tried = fitted.head_weights
        assert [choice.head_weight for choice in tried] == list(weights)
        best = max(choice.cross_validated.accuracy for choice in tried)
        first_best = next(choice for choice in tried if choice.cross_validated.accuracy == best)
        assert router.config.head_weight == first_best.head_weight  # the smallest of equally good
        assert fitted.cross_validated == first_best.cross_validated
        assert router.thresholds is fitted
        chosen.add(router.config.head_weight)
    assert chosen != {0.0}  # the worlds do make a head weight win


def test_large_tables_train_on_route_groups_covering_every_example_once_per_epoch() -> None:
    from worker.routing.head_batches import epoch_batches, neighbours

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(40), [3 + (i % 25) for i in range(40)])  # 3 to 27 examples per route
    x = l2_normalise(rng.normal(size=(y.size, DIM)))
    nearest = neighbours(x, y, np.ones(y.size, np.bool_), 40, 5)
    assert nearest.shape == (40, 5)
    assert not (nearest == np.arange(40)[:, None]).any()  # a route is not its own competitor
    batches = list(epoch_batches(y, 40, 32, np.random.default_rng(1), nearest))
    rows = np.concatenate([b.rows for b in batches])
    assert np.array_equal(np.sort(rows), np.arange(y.size))  # every example, once
    for batch in batches:
        assert batch.columns is not None
        assert set(y[batch.rows]) <= set(batch.columns.tolist())  # its routes are in its softmax
        assert np.bincount(y[batch.rows]).max() <= 10  # no route floods a batch
    again = list(epoch_batches(y, 40, 32, np.random.default_rng(1), nearest))
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(batches, again, strict=True))


def test_a_sampled_softmax_still_learns_and_is_deterministic() -> None:
    table, centres, _, names = _world(routes=30)
    config = HeadConfig(epochs=20, softmax_routes=8)
    head = train_head(table.snapshot().routes(), config)
    again = train_head(table.snapshot().routes(), config)
    assert np.array_equal(head.weights, again.weights)
    rng = np.random.default_rng(7)
    queries = np.concatenate([_near(rng, c, 5, 0.9) for c in centres])
    truth = np.repeat(np.arange(len(names)), 5)
    assert float(np.mean(head.probabilities(queries).argmax(axis=1) == truth)) >= 0.9


def test_labelled_examples_train_like_utterances_of_their_route() -> None:
    table, _, _, _ = _world(3, routes=4)
    routes = list(table.snapshot().routes())
    rng = np.random.default_rng(9)
    config = HeadConfig(hidden=0, epochs=30)
    far = l2_normalise(rng.normal(size=(6, DIM)))  # a region no route's utterances are in
    labels: list[str | None] = ["r02"] * 6
    taught = train_head(routes, config, (far, labels))
    plain = train_head(routes, config)
    assert (taught.probabilities(far).argmax(axis=1) == taught.columns["r02"]).all()
    assert taught.probabilities(far)[:, 2].mean() > plain.probabilities(far)[:, 2].mean()
    # "no match" rows and routes the head does not learn are left out, not trained
    ignored = train_head(routes, config, (far, [None, "elsewhere", None, None, None, None]))
    assert np.array_equal(ignored.weights, plain.weights)
