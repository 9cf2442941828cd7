"""Commit cadence of the exactly-once output: how long a transaction stays open.

Every commit costs a few round trips to the transaction coordinator, and the partition's next
records wait while it runs; a transaction that stays open longer groups more batches but holds its
records back from read_committed readers for longer. Transactions are committed together once the
oldest open one has been open ``interval_s``; 0 commits as soon as one is open, about one
transaction per batch.
"""

from __future__ import annotations

from collections.abc import Iterable


class CommitCadence:
    """When the next commit is due, from the times the open transactions were opened."""

    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self.interval_s = interval_s

    def wait_s(self, opened_at: Iterable[float | None], now: float) -> float | None:
        """Seconds until the commit is due (0: now), or None when no transaction is open."""
        oldest = min((t for t in opened_at if t is not None), default=None)
        if oldest is None:
            return None
        return max(oldest + self.interval_s - now, 0.0)
