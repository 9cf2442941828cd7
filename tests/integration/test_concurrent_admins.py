"""Two admins planning against the same log: at most one publishes, and only onto the log it was
planned against; the other refuses with nothing published (issue 13, item 8). On Apache Kafka the
check runs inside a transaction that fences the other admin; Tansu gets the check alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from replication_harness import create_mutation_topic, mutation_settings, replica_running

from worker.config import Settings
from worker.contracts import RouteDefinition
from worker.embedding import EncoderPool
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka
from worker.replication import LogMoved, PublishHooks, apply_routes, plan_routes, publish_plan, read_routes

pytestmark = pytest.mark.integration


def route(name: str, *words: str) -> RouteDefinition:
    return RouteDefinition(name=name, utterances=[f"{name} {w}" for w in words or ("one", "two")])


BASE = [route("billing"), route("weather"), route("greeting")]
#: admin A adds "refunds" and prunes; admin B adds "shipping" and prunes: each would delete the other's
A_FILE = [*BASE, route("refunds")]
B_FILE = [*BASE, route("shipping")]


@pytest.fixture
async def settings(kafka_broker: LocalKafka) -> Settings:
    made = mutation_settings(kafka_broker.bootstrap)
    await create_mutation_topic(made, 2)
    await apply_routes(made, BASE)
    return made


async def test_a_plan_is_not_published_onto_a_log_that_moved(settings: Settings) -> None:
    plan_a, state = await plan_routes(settings, A_FILE, prune=True)
    plan_b, _ = await plan_routes(settings, B_FILE, prune=True)
    assert plan_a.based_on == plan_b.based_on == state.end_offsets
    await publish_plan(settings, plan_a)
    with pytest.raises(LogMoved, match="moved since the plan was made") as refused:
        await publish_plan(settings, plan_b)
    assert refused.value.now is not None
    assert refused.value.now != refused.value.planned
    assert sorted((await read_routes(settings)).routes) == ["billing", "greeting", "refunds", "weather"]
    plan_b, _ = await plan_routes(settings, B_FILE, prune=True)  # planned again: it sees refunds
    assert [c.name for c in plan_b.removed] == ["refunds"]


async def test_an_admin_that_publishes_after_the_check_fences_the_first(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    plan_a, _ = await plan_routes(settings, A_FILE, prune=True)
    plan_b, _ = await plan_routes(settings, B_FILE, prune=True)

    async def b_publishes_now() -> None:  # A has checked the log and not sent yet
        await publish_plan(settings, plan_b)

    with pytest.raises(LogMoved, match="another admin began publishing"):
        await publish_plan(settings, plan_a, hooks=PublishHooks(after_check=b_publishes_now))
    state = await read_routes(settings)
    assert sorted(state.routes) == ["billing", "greeting", "shipping", "weather"]
    async with replica_running(settings, pool, tmp_path / "r.db") as replica:
        assert replica.table.route_names() == ["billing", "greeting", "shipping", "weather"]


async def test_records_of_a_fenced_admin_are_never_applied(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    plan_a, _ = await plan_routes(settings, A_FILE, prune=True)
    plan_b, _ = await plan_routes(settings, B_FILE, prune=True)
    refused_b: list[LogMoved] = []

    async def b_tries_now() -> None:  # A's records are in the log, its transaction still open
        try:
            await publish_plan(settings, plan_b)
        except LogMoved as error:
            refused_b.append(error)

    with pytest.raises(LogMoved):
        await publish_plan(settings, plan_a, hooks=PublishHooks(before_commit=b_tries_now))
    # B fenced A (aborting A's transaction), then found the log moved by A's aborted records: both
    # refused, and the log holds what it held before either began
    assert len(refused_b) == 1
    assert sorted((await read_routes(settings)).routes) == ["billing", "greeting", "weather"]
    async with replica_running(settings, pool, tmp_path / "r.db") as replica:
        assert replica.table.route_names() == ["billing", "greeting", "weather"]  # nothing aborted


async def test_without_transactions_the_log_is_checked_before_publishing(
    broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = mutation_settings(broker.bootstrap)
    await create_mutation_topic(settings, 2)
    await apply_routes(settings, BASE)
    plan_a, _ = await plan_routes(settings, A_FILE, prune=True)
    plan_b, _ = await plan_routes(settings, B_FILE, prune=True)
    await publish_plan(settings, plan_a)
    assert "take no transactions" in caplog.text
    with pytest.raises(LogMoved):
        await publish_plan(settings, plan_b)
    assert sorted((await read_routes(settings)).routes) == ["billing", "greeting", "refunds", "weather"]
