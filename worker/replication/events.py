"""What a route replica reports as it goes: the application turns these into metrics and health.

:class:`ReplicaEvents` does nothing; the composition root (``worker.app``) passes a subclass that
records metrics and holds readiness, a test or the fault suite one that collects what happened.
Methods are called from the event loop and from the replica's worker threads: keep them quick and
thread-safe.
"""

from __future__ import annotations

from worker.replication.resume import ReplayReason


class ReplicaEvents:
    """Hooks of a :class:`~worker.replication.RouteReplica`; each one a no-op here."""

    def full_replay(self, reason: ReplayReason, detail: str) -> None:
        """The replica replays the whole log instead of resuming (its table keeps serving meanwhile)."""

    def full_replay_done(self, reason: ReplayReason, routes: int, seconds: float) -> None:
        """A full replay ended and its table replaced the previous one in one step."""

    def mutation_skipped(self, code: str, partition: int, offset: int) -> None:
        """A record could not be applied (``code``: an :class:`~worker.errors.ErrorCode` value)."""

    def unknown_fields(self, fields: int) -> None:
        """Records with fields this version does not know were applied; ``fields`` were ignored."""

    def index_rebuild(self, error: BaseException | None) -> None:
        """A background index rebuild ended: None, or the error it failed with (it is retried)."""

    def overlay_rows(self, rows: int) -> None:
        """The write-ahead overlay now holds ``rows`` vectors."""

    def apply_waited(self, seconds: float) -> None:
        """A live batch waited ``seconds`` for room in the bounded overlay."""
