"""Liveness and readiness of a replica, in the shape :class:`worker.health.HealthServer` reads.

Liveness only turns false after a fatal error: a blocked event loop is caught by the probe itself
(the server runs on the worker's loop, so it cannot answer). Readiness is true while the replica
routes queries: its route table caught up with the mutation log and the pipeline is consuming.
"""

from __future__ import annotations

import threading


class Health:
    """Thread-safe state set by the worker and read by the health server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: str | None = None
        self._ready = False
        self._state = "starting"

    def set_state(self, state: str, *, ready: bool) -> None:
        """Record what the replica is doing now and whether it routes queries."""
        with self._lock:
            self._state = state
            self._ready = ready

    def fail(self, reason: str) -> None:
        """Mark the replica dead: a fatal error stopped it."""
        with self._lock:
            self._failed = reason
            self._ready = False

    def liveness(self) -> bool:
        """Whether the process should be left running."""
        with self._lock:
            return self._failed is None

    def readiness(self) -> tuple[bool, str]:
        """Whether the replica routes queries, and what it is doing."""
        with self._lock:
            if self._failed is not None:
                return False, f"failed: {self._failed}"
            return self._ready, self._state
