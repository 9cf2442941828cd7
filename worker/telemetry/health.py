"""Liveness and readiness of a replica: the facts the pipeline and the application report, and the
two answers :class:`worker.health.server.HealthServer` serves from them.

``/livez`` (:meth:`Health.liveness`) fails when

- a fatal error stopped the replica (:meth:`Health.fail`), or
- the pipeline stopped making progress: records are waiting (consumer lag > 0) or batches are in
  flight, and no batch has finished for ``stall_after_s`` seconds (``ROUTEWORKER_LIVENESS_STALL_S``).
  An idle replica with nothing to do is alive however long it idles.

A blocked event loop is caught by the probe itself: the server answers on the worker's own loop, so
it cannot answer at all and the probe times out.

``/readyz`` (:meth:`Health.readiness`) is 200 only when the route table has caught up with the
mutation log, the replica holds at least one partition of the queries topic, no rebalance is in
progress, nothing holds readiness back (:meth:`Health.hold_readiness`), and it is neither stopping nor
failed. Every answer carries its reason.

The state is written from the event loop and from worker threads and read by the server and the
metrics collector, so every method takes one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable

Clock = Callable[[], float]

DEFAULT_STALL_AFTER_S = 60.0


class Health:
    """What a replica reports about itself; thread-safe.

    Any part of the replica may use the two calls meant for faults:

    - :meth:`fail` — the replica is broken and is stopping (a non-retriable error): ``/livez`` and
      ``/readyz`` both fail from now on, with ``reason``.
    - :meth:`hold_readiness` / :meth:`release_readiness` — the replica runs but should not count as
      ready while ``source`` says so (an index rebuild that failed and is being retried, say).
      Each source holds at most one reason; releasing a source that holds nothing is a no-op.
    """

    def __init__(
        self, *, stall_after_s: float = DEFAULT_STALL_AFTER_S, clock: Clock = time.monotonic
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: str | None = None
        self._phase = "starting"
        self._caught_up = False
        self._stopping = False
        self._rebalancing = False
        self._assigned: frozenset[Hashable] = frozenset()
        self._held: dict[str, str] = {}
        self._lag: dict[Hashable, int] = {}
        self._in_flight = 0
        self._last_progress = clock()

    # --- what the application reports -------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        """What the replica is doing before it routes (``"loading the embedding model"``...)."""
        with self._lock:
            self._phase = phase

    def routes_caught_up(self) -> None:
        """The route table has applied the mutation log up to its end offsets taken at start."""
        with self._lock:
            self._caught_up = True

    def stopping(self) -> None:
        """A graceful stop began: not ready any more."""
        with self._lock:
            self._stopping = True

    # --- what the pipeline reports ------------------------------------------------------------

    def rebalance_started(self) -> None:
        """The consumer group is rebalancing: partitions are about to be revoked and reassigned."""
        with self._lock:
            self._rebalancing = True

    def partitions_assigned(self, partitions: Iterable[Hashable]) -> None:
        """The rebalance ended with ``partitions`` (the whole new assignment, maybe empty)."""
        with self._lock:
            self._assigned = frozenset(partitions)
            self._rebalancing = False
            self._lag = {tp: lag for tp, lag in self._lag.items() if tp in self._assigned}
            # the group was busy rebalancing, not stalled: the stall clock starts again now
            self._last_progress = self._clock()

    def fetched(self, lag: Iterable[tuple[Hashable, int]]) -> None:
        """Consumer lag per partition seen with a fetched batch (high watermark - next offset)."""
        with self._lock:
            was_idle = self._idle()
            self._lag.update((tp, max(n, 0)) for tp, n in lag)
            if was_idle:
                self._last_progress = self._clock()  # work appeared: the stall clock starts now

    def in_flight(self, batches: int) -> None:
        """Batches consumed and not yet acknowledged."""
        with self._lock:
            was_idle = self._idle()
            self._in_flight = max(batches, 0)
            if was_idle:
                self._last_progress = self._clock()

    def processed(self) -> None:
        """A batch was finished: every output record acknowledged."""
        with self._lock:
            self._last_progress = self._clock()

    # --- faults (any part of the replica) -----------------------------------------------------

    def fail(self, reason: str) -> None:
        """Mark the replica broken: a fault it cannot survive stops it. Liveness fails for good."""
        with self._lock:
            if self._failed is None:
                self._failed = reason

    def hold_readiness(self, source: str, reason: str) -> None:
        """Keep the replica not ready while ``source`` holds it, e.g.
        ``hold_readiness("index-rebuild", "rebuild failed: disk full; retrying in 30 s")``."""
        with self._lock:
            self._held[source] = reason

    def release_readiness(self, source: str) -> None:
        """``source`` no longer holds readiness back."""
        with self._lock:
            self._held.pop(source, None)

    # --- answers ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Whether the process should be left running, and why."""
        with self._lock:
            if self._failed is not None:
                return False, f"failed: {self._failed}"
            if self._idle():
                return True, "alive: nothing waiting"
            quiet = self._clock() - self._last_progress
            work = f"{sum(self._lag.values())} records waiting, {self._in_flight} batches in flight"
            if quiet > self.stall_after_s:
                return False, (
                    f"stalled: {work}, no batch finished for {quiet:.0f} s (limit {self.stall_after_s:g} s)"
                )
            return True, f"alive: {work}, last batch finished {quiet:.1f} s ago"

    def readiness(self) -> tuple[bool, str]:
        """Whether the replica routes queries now, and why (or why not)."""
        with self._lock:
            if self._failed is not None:
                return False, f"failed: {self._failed}"
            if self._stopping:
                return False, "stopping"
            if not self._caught_up:
                return False, self._phase
            if self._held:
                return False, "; ".join(
                    f"{source}: {reason}" for source, reason in sorted(self._held.items())
                )
            if self._rebalancing:
                return False, "rebalancing"
            if not self._assigned:
                return False, "no partitions of the queries topic assigned"
            held = len(self._assigned)
            return True, f"ready: route table caught up, {held} partition{'' if held == 1 else 's'} assigned"

    def is_ready(self) -> bool:
        """``readiness()[0]`` (the readiness gauge reads this)."""
        return self.readiness()[0]

    # --- inside the lock ----------------------------------------------------------------------

    def _idle(self) -> bool:
        return self._in_flight == 0 and not any(self._lag.values())
