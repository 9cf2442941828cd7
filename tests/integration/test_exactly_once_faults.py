"""Exactly once under faults, on Apache Kafka: workers killed with SIGKILL at random points, one
joining and one leaving, malformed queries mixed in; a read_committed reader then sees every query
answered exactly once. The same scenario at least once shows its duplicates, so the count can fail.

The short scenario runs in `make test`; the full one (5,000 queries, five kills, both modes) is
marked slow and runs in `make eos`, which writes its outcome to benchmarks/results.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from eos_faults import Plan, run_scenario

from worker.embedding.model import ModelSpec
from worker.local.kafka import LocalKafka

pytestmark = pytest.mark.integration

RESULTS_ENV = "ROUTEWORKER_EOS_RESULTS"


async def test_killed_workers_answer_every_query_exactly_once(
    kafka_broker: LocalKafka, model_spec: ModelSpec, tmp_path: Path
) -> None:
    plan = Plan(queries=800, seconds=10, kills=2, partitions=4, seed=3)
    outcome, logs = await run_scenario(kafka_broker.bootstrap, "exactly_once", plan, tmp_path)
    assert outcome.kills == 2, logs
    assert (outcome.lost, outcome.duplicated, outcome.unexpected) == (0, 0, 0), (outcome, logs)
    assert outcome.answered == outcome.sent_valid + outcome.sent_malformed


@pytest.mark.slow
async def test_five_thousand_queries_exactly_once_and_at_least_once_side_by_side(
    kafka_broker: LocalKafka, model_spec: ModelSpec, tmp_path: Path
) -> None:
    plan = Plan(queries=5000, seconds=30, kills=5, partitions=4, seed=14)
    exactly, exactly_logs = await run_scenario(kafka_broker.bootstrap, "exactly_once", plan, tmp_path / "eos")
    least, least_logs = await run_scenario(kafka_broker.bootstrap, "at_least_once", plan, tmp_path / "alo")
    destination = os.environ.get(RESULTS_ENV)
    if destination:
        document = {"plan": asdict(plan), "exactly_once": exactly.as_dict(), "at_least_once": least.as_dict()}
        text = json.dumps(document, indent=2) + "\n"
        await asyncio.to_thread(Path(destination).write_text, text)
    print(f"\nexactly_once: {exactly}\nat_least_once: {least}")
    for outcome, logs in ((exactly, exactly_logs), (least, least_logs)):
        assert outcome.kills >= 5, logs
        assert (outcome.joins, outcome.leaves) == (1, 1), logs
        assert outcome.lost == 0, (outcome, logs)
        assert outcome.unexpected == 0, (outcome, logs)
    assert exactly.duplicated == 0, (exactly, exactly_logs)
    # at least once, SIGKILL loses the commits of work already produced: the same count sees it
    assert least.duplicated > 0, least
