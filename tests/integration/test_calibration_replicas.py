"""Same answers on every CPU: replicas whose numerics differ serve one calibration, byte for byte.

Two route replicas read one mutation log on a real broker. The second one's model output is
perturbed by about 1e-7 (what another CPU's ONNX kernels do to the last bits), so it embeds the
routes and the probes slightly differently. The calibration (head, weight, thresholds) is made once
by the publisher and shipped: both replicas must hold byte-identical heads and thresholds and give
the same answer to every probe. The same self-fit run on each replica's own vectors does not give
byte-identical heads, which is why replicas never derive one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from replication_harness import create_mutation_topic, mutation_settings, replica_running

from worker.app.serving import serving_router
from worker.config import Settings
from worker.contracts import RouteDefinition
from worker.embedding import EncoderPool, ModelSpec, encoder_pool
from worker.embedding.session import fastembed_session
from worker.local.broker import LocalBroker
from worker.replication import (
    RouteReplica,
    calibrate_plan,
    load_route_file,
    plan_routes,
    planned_routes,
    publish_plan,
)
from worker.routing import RouteCalibration, RouteVectors, self_fit
from worker.routing.head import HeadConfig
from worker.routing.self_fit import SelfFitConfig

pytestmark = pytest.mark.integration

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes.yaml"
#: a smaller head than the default keeps the test quick; the shipping path is the same
CONFIG = SelfFitConfig(head=HeadConfig(hidden=128, epochs=12))
PROBES = [
    "where is my parcel", "I want my money back", "cancel it please", "the mug arrived broken",
    "I was charged two times", "I can't log in", "what time do you open", "talk to a human",
    "change my delivery address", "do you have this in blue", "is there a discount code",
    "my gift card does not work", "what's the weather like", "tell me a joke", "recommend a movie",
    "how tall is the eiffel tower", "update my email address", "the package never came",
    "the invoice is wrong", "I'd like to send this back",
]  # fmt: skip


class PerturbedSession:
    """The real model, with a deterministic perturbation of about 1e-7 per component added."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def embed(self, documents: Iterable[str], batch_size: int = 32) -> Iterator[np.ndarray]:
        texts = list(documents)
        for text, vector in zip(texts, self.inner.embed(texts, batch_size=batch_size), strict=True):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            noise = np.random.default_rng(seed).uniform(-1e-7, 1e-7, size=len(vector))
            yield (np.asarray(vector, dtype=np.float64) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def pools(model_spec: ModelSpec, base_settings: Settings) -> Iterator[tuple[EncoderPool, EncoderPool]]:
    settings = base_settings.model_copy(update={"model_path": model_spec.path})
    exact = encoder_pool(settings)
    perturbed = encoder_pool(
        settings, session_factory=lambda: PerturbedSession(fastembed_session(model_spec, None))
    )
    try:
        yield exact, perturbed
    finally:
        exact.close()
        perturbed.close()


@pytest.fixture
async def settings(broker: LocalBroker) -> Settings:
    made = mutation_settings(broker.bootstrap)
    await create_mutation_topic(made, partitions=2)
    return made


def _calibrate(vectors: list[RouteVectors]) -> RouteCalibration:
    return self_fit(vectors, config=CONFIG)


def _head_bytes(calibration: RouteCalibration | None) -> bytes:
    assert calibration is not None
    assert calibration.head is not None
    head = calibration.head
    parts = [head.weights, head.bias, head.hidden_weights, head.hidden_bias]
    return b"".join(p.tobytes() for p in parts if p is not None)


def _thresholds(calibration: RouteCalibration | None) -> tuple[object, ...]:
    assert calibration is not None
    return (
        calibration.head_weight,
        calibration.default_threshold,
        calibration.fallback_threshold,
        calibration.margin,
        dict(calibration.per_route),
        dict(calibration.routes),
    )


async def _answers(replica: RouteReplica, settings: Settings, probes: list[str]) -> list[tuple[Any, ...]]:
    vectors = await replica.encoder.embed(probes)
    decisions = serving_router(settings, replica.table).decide(vectors, 3)
    return [(d.route, tuple(c.route for c in d.candidates), d.score) for d in decisions]


def _agree(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert [(route, names) for route, names, _ in a] == [(route, names) for route, names, _ in b]
    # scores may differ in the last bits of the probes' vectors, never by more
    assert np.allclose([s for *_, s in a], [s for *_, s in b], atol=1e-5)


async def test_replicas_with_different_numerics_serve_one_calibration(
    settings: Settings, pools: tuple[EncoderPool, EncoderPool], tmp_path: Path
) -> None:
    exact, perturbed = pools
    definitions = load_route_file(ROUTES)
    plan, state = await plan_routes(settings, definitions)
    calibration, record = await calibrate_plan(planned_routes(state, plan), exact, _calibrate)
    # routes go without vectors: each replica embeds them itself, with its own numerics
    receipt = await publish_plan(settings, plan, calibration=record)

    async with (
        replica_running(settings, exact, tmp_path / "a.db") as a,
        replica_running(settings, perturbed, tmp_path / "b.db") as b,
    ):
        await a.wait_for_position(receipt.positions)
        await b.wait_for_position(receipt.positions)
        served_a, served_b = a.table.snapshot().calibration, b.table.snapshot().calibration
        route_a, route_b = a.table.snapshot().route("order_status"), b.table.snapshot().route("order_status")
        assert route_a is not None
        assert route_b is not None
        assert not np.array_equal(route_a.utterance_vectors, route_b.utterance_vectors), "no perturbation"
        assert _head_bytes(served_a) == _head_bytes(served_b) == _head_bytes(calibration)
        assert _thresholds(served_a) == _thresholds(served_b) == _thresholds(calibration)
        assert served_a is not None
        assert all(served_a.covers(rv) for rv in a.table.snapshot().routes())
        assert all(served_a.covers(rv) for rv in b.table.snapshot().routes())  # text-based coverage
        answers = await _answers(a, settings, PROBES)
        _agree(answers, await _answers(b, settings, PROBES))
        assert any(route is None for route, *_ in answers), "the probes include out-of-scope queries"
        assert sum(route is not None for route, *_ in answers) >= len(PROBES) // 2

        # Deriving on each replica would not agree: the same self-fit on b's own vectors trains
        # other weights from the last-bit differences.
        local_b = _calibrate(list(b.table.snapshot().routes()))
        assert _head_bytes(local_b) != _head_bytes(served_b)

        # A route edited after the calibration: both answer it through nearest utterances with
        # the shipped fallback threshold until a new calibration covers it.
        edited = RouteDefinition(
            name="store_locations",
            utterances=["when do you open", "opening hours on sunday", "are you open late tonight"],
        )
        others = [d for d in definitions if d.name != "store_locations"]
        changed, _ = await plan_routes(settings, [*others, edited])
        assert [c.name for c in changed.changes] == ["store_locations"]
        moved = await publish_plan(settings, changed)
        await a.wait_for_position(moved.positions)
        await b.wait_for_position(moved.positions)
        for replica in (a, b):
            snapshot = replica.table.snapshot()
            route = snapshot.route("store_locations")
            assert route is not None
            assert snapshot.calibration is not None
            assert not snapshot.calibration.covers(route)
            assert serving_router(settings, replica.table).threshold_for(snapshot, "store_locations") == (
                calibration.fallback_threshold
            )
        _agree(await _answers(a, settings, PROBES), await _answers(b, settings, PROBES))

    # Restarted from its store (no replay of the calibration record), b serves the same bytes.
    async with replica_running(settings, perturbed, tmp_path / "b.db") as b_again:
        assert _head_bytes(b_again.table.snapshot().calibration) == _head_bytes(calibration)
        assert b_again.stats.calibrations == 1  # decoded once, from the store
