"""Fixtures of the pipeline unit tests: settings, a small route table, telemetry read in memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pipeline_fakes import DIM, FINGERPRINT, HashingEncoder

from worker.config import Settings, load_settings
from worker.routing import Route, Router, RouteTable, RouteVectors
from worker.telemetry import Telemetry

ROUTES = {
    "weather": ("what is the weather today", "will it rain tomorrow", "weather forecast"),
    "banking": ("transfer money to my account", "check my bank balance", "send money"),
    "music": ("play some jazz music", "put on a song", "play music"),
}


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        replica_id="replica-test",
        batch_size=4,
        batch_wait_ms=0,
        max_in_flight_batches=3,
        commit_interval_ms=50,
        shutdown_timeout_s=5,
        top_n=2,
    )


@pytest.fixture
def encoder() -> HashingEncoder:
    return HashingEncoder()


@pytest.fixture
def table(encoder: HashingEncoder) -> RouteTable:
    routes = []
    for name, utterances in ROUTES.items():
        route = Route(name, utterances, threshold=0.5)
        routes.append(
            RouteVectors(
                route, encoder.embed_sync(utterances), np.zeros((0, DIM), dtype=np.float32), FINGERPRINT
            )
        )
    return RouteTable.from_routes(routes, ((0, 3),), DIM, FINGERPRINT)


@pytest.fixture
def router(table: RouteTable) -> Router:
    return Router(table)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    made = Telemetry(replica_id="replica-test", span_processors=[SimpleSpanProcessor(spans)])
    yield made
    made.shutdown()
