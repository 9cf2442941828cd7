"""Shared fixtures: private brokers (Tansu, Apache Kafka) and redis-server per test session, the model.

Each starts on a free port when a test first asks for it, is waited for, and is stopped at the end
of the session even when tests fail; the child processes also die with the test process if it is
killed. Both broker fixtures offer the same small interface (worker.local.capabilities.BrokerService:
``name``, ``bootstrap``, ``capabilities``), so one test body can run against either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.config import DEFAULT_MODEL, Settings, load_settings
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.embedding.model import ModelSpec, resolve_model
from worker.embedding.prepare import prepare
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka
from worker.local.redis import LocalRedis


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """Tansu: in memory, starts in milliseconds; no compaction, transactions or librdkafka clients."""
    with LocalBroker() as running:
        yield running


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    """A 64-dimension hashing encoder pool (no model), one per test module: what the replication and
    mutation-log tests embed with. A module that needs another dimension defines its own."""
    with hashing_pool(64) as made:
        yield made


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalKafka]:
    """Apache Kafka 4.4.0, one KRaft combined node: the reference broker (a few seconds to start).

    Shared by the session: a test that must restart, kill or reconfigure a broker starts its own
    LocalKafka instead.
    """
    with LocalKafka() as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as running:
        yield running


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings(model_name=DEFAULT_MODEL)


@pytest.fixture(scope="session")
def model_spec(base_settings: Settings) -> ModelSpec:
    """The real all-MiniLM-L6-v2 export (prepared by `make test`; prepared here if missing)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    prepare(base_settings.cache_dir)
    return resolve_model(base_settings)


@pytest.fixture
def tmp_store(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"
