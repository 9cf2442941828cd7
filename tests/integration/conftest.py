"""Fixtures of the integration tests that need a serving replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pipeline_harness import (
    RunningWorker,
    Topics,
    WorkerProcess,
    create_topics,
    publish_routes,
    route_definitions,
    wait_ready,
)

from worker.local.kafka import LocalKafka
from worker.local.process import free_port


@pytest.fixture(scope="module")
async def asked_worker(
    kafka_broker: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningWorker]:
    """One `routeworker run` (real model, local cache) serving fresh topics, ready before tests start."""
    topics = Topics.fresh()
    await create_topics(kafka_broker.bootstrap, topics)
    await publish_routes(kafka_broker.bootstrap, topics.mutations, route_definitions())
    tmp = tmp_path_factory.mktemp("route-client")
    port = free_port()
    # the nearest utterance alone decides: answers must not change when a learned head comes into
    # service, and three utterances per route are too few for a mean over five
    env = topics.env(
        kafka_broker.bootstrap,
        tmp / "store.sqlite3",
        replica_id="asked-worker",
        health_port=port,
        routing_head=False,
        routing_top_k=1,
        # Apache Kafka refuses group sessions shorter than group.min.session.timeout.ms (6 s)
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=500,
    )
    process = WorkerProcess(env, tmp / "worker.log")
    try:
        await wait_ready(port, process)
        yield RunningWorker(topics, kafka_broker.bootstrap, port, process)
    finally:
        process.close()
