"""Searches racing mutations and rebuilds must always see each route entirely before or after."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from worker.routing import IndexSettings, Route, Router, RouteTable, RouteVectors, ScoringConfig, l2_normalise

DIM = 64
FP = "hashing-bow@test:0"
GENERATIONS = 4


def _probe(name: str, vectors: np.ndarray, generation: int) -> RouteVectors:
    route = Route(
        name,
        tuple(f"{name} g{generation} u{i}" for i in range(len(vectors))),
        metadata={"generation": generation},
    )
    return RouteVectors(route, vectors, np.zeros((0, DIM), dtype=np.float32), FP)


@pytest.mark.parametrize(
    "settings",
    [
        IndexSettings(overlay_rebuild_rows=12),
        # approximate main indexes, built by a child process and swapped in from a mapped file
        IndexSettings(overlay_rebuild_rows=12, approximate_above=0, list_rows=16),
    ],
    ids=["flat", "ivf"],
)
def test_answers_match_the_version_that_decided(
    random_route: Callable[..., RouteVectors], settings: IndexSettings
) -> None:
    rng = np.random.default_rng(42)
    background = [random_route(f"r{i:02d}", rng, 3) for i in range(60)]
    # Each probe route cycles through GENERATIONS sets of utterance vectors (or is deleted).
    sets = {
        name: [l2_normalise(rng.normal(size=(3, DIM))) for _ in range(GENERATIONS)] for name in ("x", "y")
    }
    table = RouteTable(DIM, FP, settings)
    start = [_probe(name, sets[name][0], 0) for name in sets]
    table.apply([*background, *start], [], ((0, 1),))
    table.rebuild(block=True)
    expected: dict[tuple[tuple[int, int], ...], int | None] = {((0, 1),): 0}
    router = Router(table, ScoringConfig(aggregation="max", top_k=1, default_threshold=0.999))
    # Query row g*2 + j is utterance 0 of probe j's generation g.
    queries = np.stack([sets[name][g][0] for g in range(GENERATIONS) for name in sets])
    stop = threading.Event()
    failures: list[str] = []
    decided: list[int] = []

    def search() -> None:
        while not stop.is_set():
            for decision_row, decision in enumerate(router.decide(queries, 3)):
                generation, name = divmod(decision_row, 2)
                state = expected[decision.routes_version]
                probe = ("x", "y")[name]
                if state == generation and decision.route != probe:
                    failures.append(f"{probe} g{generation} missing at {decision.routes_version}: {decision}")
                if state != generation and decision.route is not None:
                    failures.append(f"{probe} g{generation} stale at {decision.routes_version}: {decision}")
            decided.append(1)

    searchers = [threading.Thread(target=search) for _ in range(3)]
    for searcher in searchers:
        searcher.start()
    try:
        step = 1
        # Keep mutating until the searchers have decided many batches in between.
        while (step < 200 or len(decided) < 60) and step < 20_000:
            step += 1
            version = ((0, step),)
            if step % 7 == 0:
                expected[version] = None
                table.apply([], ["x", "y"], version)
            else:
                generation = step % GENERATIONS
                expected[version] = generation
                table.apply([_probe(name, sets[name][generation], generation) for name in sets], [], version)
            if step % 25 == 0:
                table.rebuild(block=step % 50 == 0)
            if failures:
                break
    finally:
        stop.set()
        for searcher in searchers:
            searcher.join()
    table.wait_for_rebuild()
    assert table.last_rebuild_error is None
    assert not failures, failures[:5]
    assert len(decided) >= 60
