"""A replica's events become metrics and readiness: a failing index rebuild holds /readyz until one
succeeds (issue 13, item 10)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.app.replica_telemetry import INDEX_REBUILD, ReplicaTelemetry
from worker.replication import ReplayReason
from worker.telemetry import Telemetry


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry(replica_id="test")
    made.health.routes_caught_up()
    made.health.partitions_assigned({("queries", 0)})
    yield made
    made.shutdown()


def test_a_failed_rebuild_holds_readiness_until_one_succeeds(telemetry: Telemetry) -> None:
    events = ReplicaTelemetry(telemetry, "route-mutations")
    assert telemetry.health.readiness()[0]
    events.index_rebuild(OSError(28, "No space left on device"))
    ready, reason = telemetry.health.readiness()
    assert not ready
    assert INDEX_REBUILD in reason
    assert "No space left on device" in reason
    assert "routeworker_index_rebuild_failures_total 1.0" in telemetry.metrics_text()
    events.index_rebuild(OSError(28, "No space left on device"))  # the retry failed too
    assert "routeworker_index_rebuild_failures_total 2.0" in telemetry.metrics_text()
    events.index_rebuild(None)
    assert telemetry.health.readiness()[0]


def test_replays_skips_waits_and_the_overlay_are_exported(telemetry: Telemetry) -> None:
    events = ReplicaTelemetry(telemetry, "route-mutations")
    events.full_replay(ReplayReason.TOMBSTONE_HORIZON, "away for two days")
    events.mutation_skipped("embedding_failed", 0, 41)
    events.apply_waited(1.5)
    events.overlay_rows(4096)
    events.unknown_fields(2)
    text = telemetry.metrics_text()
    assert 'routeworker_mutations_full_replays_total{reason="tombstone_horizon"} 1.0' in text
    assert 'routeworker_mutations_skipped_total{error_code="embedding_failed"} 1.0' in text
    assert "routeworker_mutations_apply_waits_total 1.0" in text
    assert "routeworker_index_overlay_rows 4096.0" in text
    assert 'routeworker_contracts_unknown_fields_total{topic="route-mutations"} 2.0' in text
