"""Health semantics (issue 13, item 9): what makes /livez and /readyz fail, on an injected clock."""

from __future__ import annotations

import pytest

from worker.telemetry.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
    return Health(stall_after_s=30, clock=clock)


def serving(health: Health) -> Health:
    health.routes_caught_up()
    health.rebalance_started()
    health.partitions_assigned({("queries", 0), ("queries", 1)})
    return health


def test_an_idle_replica_is_alive_however_long_it_idles(health: Health, clock: Clock) -> None:
    serving(health)
    health.fetched([(("queries", 0), 0)])
    clock.now += 3600
    assert health.liveness() == (True, "alive: nothing waiting")


def test_records_waiting_and_nothing_processed_for_too_long_fails_liveness(
    health: Health, clock: Clock
) -> None:
    serving(health)
    health.fetched([(("queries", 0), 120), (("queries", 1), 3)])
    clock.now += 29
    assert health.liveness()[0]
    clock.now += 2
    alive, reason = health.liveness()
    assert not alive
    assert (
        reason == "stalled: 123 records waiting, 0 batches in flight, no batch finished for 31 s (limit 30 s)"
    )
    health.processed()  # progress again: alive again
    assert health.liveness()[0]


def test_batches_in_flight_that_never_finish_fail_liveness(health: Health, clock: Clock) -> None:
    serving(health)
    health.in_flight(4)  # e.g. the producer stopped acknowledging: the window is full
    clock.now += 31
    assert not health.liveness()[0]
    health.processed()
    health.in_flight(0)
    clock.now += 300
    assert health.liveness()[0]


def test_the_stall_clock_starts_when_work_appears_not_at_the_last_batch(health: Health, clock: Clock) -> None:
    serving(health)
    health.processed()
    clock.now += 600  # idle for ten minutes
    health.fetched([(("queries", 0), 5)])
    clock.now += 10
    assert health.liveness()[0]


def test_a_rebalance_restarts_the_stall_clock_and_forgets_revoked_partitions(
    health: Health, clock: Clock
) -> None:
    serving(health)
    health.fetched([(("queries", 0), 50), (("queries", 1), 50)])
    clock.now += 25
    health.rebalance_started()
    health.partitions_assigned({("queries", 1)})
    clock.now += 25
    assert health.liveness() == (
        True,
        "alive: 50 records waiting, 0 batches in flight, last batch finished 25.0 s ago",
    )


def test_a_failure_fails_both_probes_for_good(health: Health) -> None:
    serving(health)
    health.fail("produce to routed-intents: TopicAuthorizationFailedError")
    health.fail("a later error does not hide the first")
    assert health.liveness() == (False, "failed: produce to routed-intents: TopicAuthorizationFailedError")
    assert health.readiness() == (False, "failed: produce to routed-intents: TopicAuthorizationFailedError")
    health.processed()
    assert not health.liveness()[0]


def test_ready_only_when_caught_up_assigned_and_not_rebalancing(health: Health) -> None:
    assert health.readiness() == (False, "starting")
    health.set_phase("catching up with the route-mutation log")
    assert health.readiness() == (False, "catching up with the route-mutation log")
    health.partitions_assigned({("queries", 0)})
    assert not health.is_ready()  # partitions, but the route table has not caught up
    health.routes_caught_up()
    assert health.readiness() == (True, "ready: route table caught up, 1 partition assigned")
    health.rebalance_started()
    assert health.readiness() == (False, "rebalancing")
    health.partitions_assigned(set())
    assert health.readiness() == (False, "no partitions of the queries topic assigned")
    health.rebalance_started()
    health.partitions_assigned({("queries", 0), ("queries", 1)})
    assert health.is_ready()
    health.stopping()
    assert health.readiness() == (False, "stopping")


def test_any_part_can_hold_readiness_with_a_reason(health: Health) -> None:
    serving(health)
    health.hold_readiness("index-rebuild", "rebuild failed: No space left on device; retrying")
    health.hold_readiness("cache", "warming")
    assert health.readiness() == (
        False,
        "cache: warming; index-rebuild: rebuild failed: No space left on device; retrying",
    )
    assert health.liveness()[0]  # not ready is not dead
    health.release_readiness("cache")
    health.release_readiness("index-rebuild")
    health.release_readiness("never-held")
    assert health.is_ready()


def test_stall_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Health(stall_after_s=0)
