"""When a replica may resume the mutation log from its stored offsets (worker.replication.resume)."""

from __future__ import annotations

import pytest

from worker.replication.resume import (
    KAFKA_DEFAULT_DELETE_RETENTION_MS,
    UNKNOWN_RETENTION,
    ReplayReason,
    TopicRetention,
    horizon_passed,
    judge_resume,
)

DAY_MS = 86_400_000
COMPACTED = TopicRetention(compacted=True, delete_retention_ms=DAY_MS)
NOW = 10 * DAY_MS


def judge(
    stored: dict[int, int],
    caught_up: int | None = NOW - 1000,
    start: dict[int, int] | None = None,
    end: dict[int, int] | None = None,
    retention: TopicRetention = COMPACTED,
    margin: int = 300_000,
) -> ReplayReason | None:
    verdict = judge_resume(
        stored, caught_up, start or {0: 0, 1: 0}, end or {0: 10, 1: 10}, retention, NOW, margin
    )
    assert verdict.detail
    return verdict.reason


def test_a_fresh_replica_and_a_recent_one_resume() -> None:
    assert judge({}) is None
    assert judge({}, caught_up=None) is None
    assert judge({0: 10, 1: 4}) is None
    assert judge({0: 3}) is None  # partition 1 never read: read from its start


def test_offsets_past_the_end_or_below_the_start_replay_everything() -> None:
    assert judge({0: 11}) is ReplayReason.AHEAD_OF_LOG
    assert judge({0: 10, 1: 3}, start={0: 0, 1: 4}) is ReplayReason.BELOW_LOG_START
    assert judge({0: 10, 1: 4}, start={0: 0, 1: 4}) is None  # at the start: nothing was missed


@pytest.mark.parametrize(
    ("away_ms", "margin_ms", "reason"),
    [
        (DAY_MS - 300_001, 300_000, None),
        (DAY_MS - 300_000, 300_000, ReplayReason.TOMBSTONE_HORIZON),
        (DAY_MS - 1, 0, None),
        (DAY_MS, 0, ReplayReason.TOMBSTONE_HORIZON),
        (30 * DAY_MS, 0, ReplayReason.TOMBSTONE_HORIZON),
    ],
)
def test_away_longer_than_the_tombstones_are_kept_replays_everything(
    away_ms: int, margin_ms: int, reason: ReplayReason | None
) -> None:
    assert judge({0: 5}, caught_up=NOW - away_ms, margin=margin_ms) is reason


def test_a_topic_that_never_compacts_never_loses_a_tombstone() -> None:
    deleting = TopicRetention(compacted=False, delete_retention_ms=1)
    assert judge({0: 5}, caught_up=0, retention=deleting) is None
    # ... but its log start moves, which is checked first
    assert judge({0: 5}, start={0: 6, 1: 0}, retention=deleting) is ReplayReason.BELOW_LOG_START


def test_without_a_caught_up_time_or_a_known_retention_nothing_is_trusted() -> None:
    assert judge({0: 5}, caught_up=None) is ReplayReason.NEVER_CAUGHT_UP
    assert judge({0: 5}, retention=UNKNOWN_RETENTION) is ReplayReason.RETENTION_UNKNOWN


def test_retention_from_topic_configs() -> None:
    kafka = {"cleanup.policy": "compact", "delete.retention.ms": "500"}
    assert TopicRetention.from_configs(kafka) == TopicRetention(True, 500)
    assert TopicRetention.from_configs({"cleanup.policy": "compact, delete"}).compacted
    assert not TopicRetention.from_configs({"cleanup.policy": "delete"}).compacted
    assert not TopicRetention.from_configs({}).compacted  # Kafka's default policy is delete
    # Tansu reports only what was set: Kafka's default tombstone retention is assumed
    assert TopicRetention.from_configs({"cleanup.policy": "compact"}).delete_retention_ms == (
        KAFKA_DEFAULT_DELETE_RETENTION_MS
    )


def test_while_tailing_the_horizon_counts_from_the_last_time_at_the_end() -> None:
    assert not horizon_passed(NOW - 1000, COMPACTED, NOW, 0)
    assert horizon_passed(NOW - DAY_MS, COMPACTED, NOW, 0)
    assert not horizon_passed(0, TopicRetention(False, 1), NOW, 0)
    # an unknown retention counts as Kafka's default, not as "always"
    assert not horizon_passed(NOW - 1000, UNKNOWN_RETENTION, NOW, 0)
    assert horizon_passed(NOW - KAFKA_DEFAULT_DELETE_RETENTION_MS, UNKNOWN_RETENTION, NOW, 0)
