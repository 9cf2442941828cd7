"""Whether a replica may resume the mutation log from its stored offsets, or must replay all of it.

Resuming reads only the records after the stored offsets; it is correct exactly when every record
the replica has not applied is still in the log. Two things remove records a resume would need:

- **Retention and DeleteRecords** move a partition's log start offset. A stored offset below it
  means records were deleted unread (a consumer would silently reset to the earliest offset).
- **Compaction** removes a record only when a later record has the same key, which the replica
  then reads, so an unread definition is never lost. The exception is a tombstone: the cleaner
  drops it once ``delete.retention.ms`` has passed since the cleaning that first saw it, with no
  later record left to tell of the delete. That cleaning happened after the tombstone was
  appended, so an unread tombstone is still in the log while

      now - (when it was appended) < delete.retention.ms

  The replica does not know when records it has not read were appended, but it knows a time
  before all of them: the last moment its stored offsets were at the log's end (``caught_up_at``;
  every record after them was appended later). Hence the resume rule used here, which is
  **sufficient**:

      log start <= stored offset <= log end              on every partition, and
      now - caught_up_at < delete.retention.ms - margin  if the topic is compacted

  The margin covers clock skew between replica and brokers and the replication delay between a
  record's append on the leader and the high watermark that told the replica it had caught up.

It is not **necessary**: past the horizon a replica may have missed nothing (no delete happened,
or the cleaner had not run). Kafka tells a client nothing about which tombstones it removed, so the
only way to know is to read the log again, which is what a full replay does; it re-embeds nothing
whose utterances are unchanged, so its cost is reading and decoding the log.

Pure: :func:`judge_resume` decides from numbers; the replica gathers them (offsets from the broker,
the topic's configuration from the admin client, ``caught_up_at`` from its store).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

#: Kafka's default ``log.cleaner.delete.retention.ms`` (24 h): assumed when a broker does not say
KAFKA_DEFAULT_DELETE_RETENTION_MS = 86_400_000


class ReplayReason(StrEnum):
    """Why a replica replays the whole log instead of resuming (a metric label: stable)."""

    AHEAD_OF_LOG = "ahead_of_log"
    BELOW_LOG_START = "below_log_start"
    TOMBSTONE_HORIZON = "tombstone_horizon"
    NEVER_CAUGHT_UP = "never_caught_up"
    RETENTION_UNKNOWN = "retention_unknown"


@dataclass(frozen=True, slots=True)
class TopicRetention:
    """What the mutation topic's configuration says about removing records.

    ``delete_retention_ms`` is None when it could not be read (no DescribeConfigs permission, say).
    """

    compacted: bool
    delete_retention_ms: int | None

    @classmethod
    def from_configs(cls, configs: Mapping[str, str]) -> TopicRetention:
        """From a topic's configuration entries (a broker that leaves out ``delete.retention.ms``,
        as Tansu does, is taken to use Kafka's default)."""
        policy = {part.strip() for part in configs.get("cleanup.policy", "delete").split(",")}
        retention = configs.get("delete.retention.ms")
        return cls(
            compacted="compact" in policy,
            delete_retention_ms=int(retention) if retention else KAFKA_DEFAULT_DELETE_RETENTION_MS,
        )


UNKNOWN_RETENTION = TopicRetention(compacted=True, delete_retention_ms=None)


@dataclass(frozen=True, slots=True)
class ResumeVerdict:
    """The decision: resume (``reason`` None) or replay everything, with what was seen."""

    reason: ReplayReason | None
    detail: str

    @property
    def trusted(self) -> bool:
        """Whether the stored offsets may be resumed from."""
        return self.reason is None


def judge_resume(
    stored: Mapping[int, int],
    caught_up_at_ms: int | None,
    log_start: Mapping[int, int],
    log_end: Mapping[int, int],
    retention: TopicRetention,
    now_ms: int,
    margin_ms: int,
) -> ResumeVerdict:
    """Decide whether a replica holding offsets ``stored`` (partition -> next offset) may resume.

    A replica without stored offsets replays from the start anyway: that is trusted (nothing to
    distrust). Partitions the replica never read (added to the topic later) are read from their
    start and do not count against it.
    """
    if not stored:
        return ResumeVerdict(None, "no stored offsets: the whole log is read")
    ahead = {p: o for p, o in stored.items() if o > log_end.get(p, -1)}
    if ahead:
        ends = {p: log_end.get(p) for p in ahead}
        return ResumeVerdict(
            ReplayReason.AHEAD_OF_LOG, f"stored offsets {ahead} are past the log's end {ends}"
        )
    below = {p: o for p, o in stored.items() if o < log_start.get(p, 0)}
    if below:
        starts = {p: log_start.get(p) for p in below}
        return ResumeVerdict(
            ReplayReason.BELOW_LOG_START,
            f"stored offsets {below} are below the log start {starts}: records were deleted unread",
        )
    if not retention.compacted:
        return ResumeVerdict(None, "the topic is not compacted: tombstones are never removed")
    if retention.delete_retention_ms is None:
        return ResumeVerdict(
            ReplayReason.RETENTION_UNKNOWN,
            "the topic's delete.retention.ms could not be read: tombstones may have been removed unread",
        )
    if caught_up_at_ms is None:
        return ResumeVerdict(
            ReplayReason.NEVER_CAUGHT_UP,
            "the store has no record of when it last reached the log's end",
        )
    age_ms = now_ms - caught_up_at_ms
    horizon_ms = retention.delete_retention_ms - margin_ms
    if age_ms >= horizon_ms:
        return ResumeVerdict(
            ReplayReason.TOMBSTONE_HORIZON,
            f"last at the log's end {age_ms / 1000:.0f} s ago; tombstones are kept "
            f"{retention.delete_retention_ms / 1000:.0f} s (delete.retention.ms, less a margin of "
            f"{margin_ms / 1000:.0f} s): deletes may have been compacted away unread",
        )
    return ResumeVerdict(
        None,
        f"last at the log's end {age_ms / 1000:.0f} s ago, within the tombstone horizon of "
        f"{horizon_ms / 1000:.0f} s",
    )


def horizon_passed(caught_up_at_ms: int, retention: TopicRetention, now_ms: int, margin_ms: int) -> bool:
    """While tailing: whether the replica has been away from the log's end for so long (a frozen
    process, a lost network) that a tombstone it has not read yet may have been removed.

    An unknown ``delete.retention.ms`` counts as Kafka's default here: the replica replayed the
    whole log when it started for that reason, and replaying on every poll would help nobody.
    """
    if not retention.compacted:
        return False
    retention_ms = retention.delete_retention_ms or KAFKA_DEFAULT_DELETE_RETENTION_MS
    return now_ms - caught_up_at_ms >= retention_ms - margin_ms
