"""Produce step: send each batch's output records in order, see every one acknowledged, and recover
from failed sends by the error policy of :mod:`worker.pipeline.produce_policy`.

A batch's :meth:`Delivery.confirm` returns only when each of its records is acknowledged, so no
offset is committed past an unacknowledged output. Records are handed to the producer in
consumption order (the pipeline enqueues batch after batch) and stay in one window, oldest first,
until they and every record before them are acknowledged.

Per-key order, retries included:

- With an idempotent producer the client retries in order by itself (a record never overtakes an
  earlier one of its partition), so nothing reaches this step but sends refused up front, records
  too large, a broken sequence, and errors that stop the replica. A send refused up front (the
  client's buffer for its partition stayed full for ``request_timeout_ms``, as while a broker is
  down) has no sequence number at all: so once any send failed, records of later batches are not
  handed to the client either until recovery has sent the failed one again; they wait in the
  window and recovery sends them after it.
- Without one (a broker that refuses idempotence), a batch that expired unacknowledged may be
  followed by a later batch of its partition that went through. So recovery re-sends the failed
  record *and every later record of its key* (acknowledged ones too), in order: the failed record
  always goes before the later ones, and the last copy of each key's records is in order. The
  extra copies are at-least-once duplicates; consumers dedupe on ``query_id``.

Recovery runs in :meth:`Delivery.run` (a task of the pipeline) and holds the window: new records
wait while it waits for every send in flight to settle, applies the policy (dead-letter a record
too large, replace the producer after a broken sequence, stop on a fatal error or once the oldest
failed record is older than ``deadline_s``), waits the back-off, and re-sends one record at a time
(each alone, so a record too large is told from a batch too large). Failed sends are counted by
remedy and error class, re-sent records as retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from worker.errors import ErrorCode
from worker.pipeline.produce_policy import ProduceError, Remedy, describe, remedy_for
from worker.pipeline.producer_session import ProducerSession
from worker.pipeline.topic_limits import TopicLimits
from worker.pipeline.types import Outbound
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0

DeadLetterer = Callable[[Outbound, ErrorCode, str], Outbound | None]
"""The dead letter of an output record's query, or None when the record has no query (a dead letter)."""


def backoff_s(attempt: int) -> float:
    """0.1 s, 0.2 s, 0.4 s ... capped at 5 s."""
    return float(min(FIRST_BACKOFF_S * 2**attempt, MAX_BACKOFF_S))


@dataclass(eq=False)
class _Entry:
    """One output record in the window, with its latest send."""

    record: Outbound
    since: float  # when it was first handed over (the deadline counts from here)
    # resolved when it leaves the window: it and every record before it acknowledged (or the
    # error that stops the replica)
    released: asyncio.Future[None]
    attempt: asyncio.Future[RecordMetadata] | None = None  # the latest send; None: (re)send due
    refused: BaseException | None = None  # the latest send was refused up front with this
    alone: bool = False  # the latest send had nothing else in flight
    seq: int = -1  # when its latest copy was sent (a counter): copies land in this order
    suspect: bool = False  # refused as too large in a batch, not yet alone
    last_error: BaseException | None = None  # the latest failure judged, for the stop message
    code: ErrorCode | None = None  # set once the record was replaced by its query's dead letter

    @property
    def failed(self) -> bool:
        """Its latest send failed, or it is due to be sent (again)."""
        return self.attempt is None or (self.attempt.done() and _failure(self.attempt) is not None)

    @property
    def acknowledged(self) -> bool:
        return self.attempt is not None and self.attempt.done() and _failure(self.attempt) is None

    @property
    def error(self) -> BaseException | None:
        """Why its latest send failed (None: not failed, or never sent)."""
        if self.refused is not None:
            return self.refused
        if self.attempt is not None and self.attempt.done():
            return _failure(self.attempt)
        return None

    @property
    def key(self) -> tuple[str, bytes] | None:
        """What per-key order is about (None: a record without a key is ordered with nothing)."""
        return None if self.record.key is None else (self.record.topic, self.record.key)


@dataclass(frozen=True)
class Sending:
    """A batch's records as handed to :meth:`Delivery.enqueue`."""

    entries: tuple[_Entry, ...]


@dataclass
class DeliveryReport:
    """What became of a batch's records: the positions (in the batch) dead-lettered instead, by code."""

    dead_lettered: dict[int, ErrorCode] = field(default_factory=dict)


class Delivery:
    """Sends :class:`Outbound` records through the session's producer, in order, and recovers failures.

    :meth:`run` must run (as a task) for failed sends to be recovered; it raises
    :class:`ProduceError` when the replica must stop, and so does every :meth:`confirm` waiting then.
    """

    def __init__(
        self,
        session: ProducerSession,
        metrics: PipelineMetrics,
        *,
        dead_letter: DeadLetterer,
        deadline_s: float,
        limits: TopicLimits | None = None,
        backoff: Callable[[int], float] = backoff_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._dead_letter = dead_letter
        self.deadline_s = deadline_s
        self.limits = limits or TopicLimits()
        self._backoff = backoff
        self._clock = clock
        self._window: deque[_Entry] = deque()
        self._lock = asyncio.Lock()  # enqueueing and recovering exclude each other
        self._trouble = asyncio.Event()
        self._stopped = asyncio.Event()
        self._fatal: ProduceError | None = None
        self._sends = 0
        self._recovering = False  # the window keeps acknowledged records until recovery ends
        # a send failed and recovery has not yet sent it again: new records wait in the window
        # (recovery sends them, in order), or they would land before it
        self._held = False

    def __len__(self) -> int:
        """Records in the window (from the oldest unacknowledged one on)."""
        return len(self._window)

    # --- sending -----------------------------------------------------------------------------

    async def enqueue(self, records: Sequence[Outbound]) -> Sending:
        """Hand ``records`` to the producer in order (returns before they are acknowledged).

        A record that cannot fit its topic is replaced by its query's dead letter at once. A send
        refused up front leaves it and the records after it to recovery, so none overtakes it; so
        does any failed send not yet recovered (the records of later batches wait behind it too).
        """
        async with self._lock:
            self._raise_if_fatal()
            now = self._clock()
            loop = asyncio.get_running_loop()
            entries = tuple(_Entry(record, now, loop.create_future()) for record in records)
            for entry in entries:
                entry.released.add_done_callback(_retrieve)
            self._window.extend(entries)
            for entry in entries:
                if self._held:
                    break  # left due: recovery sends it after the failed ones
                if not await self._send(entry, alone=False):
                    self._hold()
            return Sending(entries)

    async def confirm(self, sending: Sending) -> DeliveryReport:
        """Wait until each record is acknowledged (or dead-lettered and that acknowledged), and
        every record before it: a record sent again for order is part of it.

        Raises :class:`ProduceError` when the replica must stop, or when a record stays
        unacknowledged longer than ``deadline_s`` (an idempotent producer retries without end).
        """
        for entry in sending.entries:
            left = entry.since + self.deadline_s - self._clock()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    await asyncio.shield(entry.released)
            except TimeoutError:
                raise self._stop(self._overdue(entry)) from None
        report = DeliveryReport()
        for i, entry in enumerate(sending.entries):
            if entry.code is not None:
                report.dead_lettered[i] = entry.code
        return report

    async def deliver(self, records: Sequence[Outbound]) -> DeliveryReport:
        """:meth:`enqueue` then :meth:`confirm`."""
        return await self.confirm(await self.enqueue(records))

    async def _send(self, entry: _Entry, *, alone: bool) -> bool:
        """Send ``entry`` (its dead letter, if it cannot fit); False if refused up front."""
        reason = self.limits.too_large(entry.record)
        if reason is not None and entry.code is None:
            self._metrics.produce_error(Remedy.DEAD_LETTER.value, "max.message.bytes")
            self._replace_by_dead_letter(entry, reason)
            reason = self.limits.too_large(entry.record)
        if reason is not None:
            raise self._stop(f"a dead letter for topic {entry.record.topic} cannot be sent: {reason}")
        record = entry.record
        entry.refused, entry.alone = None, alone
        self._sends += 1
        entry.seq = self._sends
        try:
            attempt = await self._session.producer.send(
                record.topic, record.value, key=record.key, headers=record.headers or None
            )
        except KafkaError as error:
            entry.attempt, entry.refused = None, error
            if remedy_for(error) is Remedy.DEAD_LETTER and entry.code is None:
                # refused by the client's own size check: nothing was sent, so it is alone
                self._metrics.produce_error(Remedy.DEAD_LETTER.value, type(error).__name__)
                self._replace_by_dead_letter(entry, describe(error))
                return await self._send(entry, alone=alone)
            return False
        entry.attempt = attempt
        attempt.add_done_callback(lambda settled: self._settled(entry, settled))
        return True

    def _settled(self, entry: _Entry, attempt: asyncio.Future[RecordMetadata]) -> None:
        if attempt is not entry.attempt:
            return  # an earlier send, since replaced
        if _failure(attempt) is not None:
            self._hold()
            return
        if not self._recovering:
            self._release()

    def _hold(self) -> None:
        """A send failed: hold new records back until recovery has sent it again."""
        self._held = True
        self._trouble.set()

    def _release(self) -> None:
        """Let go of the acknowledged records at the head of the window: their batches may finish."""
        while self._window and self._window[0].acknowledged:
            released = self._window.popleft().released
            if not released.done():
                released.set_result(None)

    def _replace_by_dead_letter(self, entry: _Entry, reason: str) -> None:
        dead = self._dead_letter(entry.record, ErrorCode.INTENT_TOO_LARGE, reason)
        if dead is None or entry.code is not None:
            raise self._stop(f"a dead letter for topic {entry.record.topic} cannot be sent: {reason}")
        logger.warning("a routed intent cannot be produced (%s): its query goes to the DLQ", reason)
        entry.record, entry.code = dead, ErrorCode.INTENT_TOO_LARGE

    # --- recovering --------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover failed sends until :meth:`stop`; raises :class:`ProduceError` to stop the replica."""
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            while True:
                trouble = asyncio.ensure_future(self._trouble.wait())
                try:
                    await asyncio.wait({trouble, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    trouble.cancel()
                if self._stopped.is_set():
                    return
                try:
                    await self._recover()
                except ProduceError as error:
                    raise self._stop(error) from None
                except KafkaError as error:  # a new producer could not be started
                    raise self._stop(f"the output producer cannot be replaced: {describe(error)}") from error
        finally:
            stopped.cancel()

    def stop(self) -> None:
        """End :meth:`run` (after the recovery under way, if any)."""
        self._stopped.set()

    async def _recover(self) -> None:
        async with self._lock:
            self._recovering = True
            try:
                round_ = 0
                while True:
                    self._trouble.clear()
                    await self._settle()
                    failed = [entry for entry in self._window if entry.failed]
                    if failed:
                        remedies = self._judge(failed)
                        if Remedy.RESET in remedies or (
                            Remedy.DEAD_LETTER in remedies and self._session.idempotent
                        ):
                            # the idempotent producer skipped a sequence the broker still expects
                            await self._session.reopen()
                        if Remedy.RETRY in remedies:
                            await asyncio.sleep(self._backoff(round_))
                        round_ += 1
                        await self._resend(self._rewound())
                        continue
                    late = self._out_of_order()
                    if not late:
                        self._held = False  # every record is sent: new ones go out at once
                        return
                    await self._resend(late)
            finally:
                self._recovering = False
                self._release()

    async def _settle(self) -> None:
        """Wait until no send is in flight (bounded by the oldest record's deadline)."""
        waiting = [e for e in self._window if e.attempt is not None and not e.attempt.done()]
        if not waiting:
            return
        oldest = min(waiting, key=lambda e: e.since)
        left = oldest.since + self.deadline_s - self._clock()
        pending = [e.attempt for e in waiting if e.attempt is not None]
        done, _ = await asyncio.wait(pending, timeout=max(left, 0.0))
        if len(done) < len(pending):
            raise self._stop(self._overdue(oldest))

    def _judge(self, failed: Iterable[_Entry]) -> set[Remedy]:
        """Apply the policy to each failed send; raise if the replica must stop."""
        remedies: set[Remedy] = set()
        # one warning per remedy and kind of error for the round, not one per record
        seen: Counter[tuple[Remedy, str]] = Counter()
        example: dict[tuple[Remedy, str], str] = {}
        now = self._clock()
        for entry in failed:
            error = entry.error
            if error is None:
                continue  # never sent: it waited behind one refused up front
            remedy = remedy_for(error)
            entry.last_error = error
            kind = (remedy, type(error).__name__)
            seen[kind] += 1
            example.setdefault(kind, describe(error))
            self._metrics.produce_error(remedy.value, type(error).__name__)
            if remedy is Remedy.STOP:
                raise self._stop(
                    f"an output record for topic {entry.record.topic} was refused: {describe(error)}",
                    refusal=error,
                )
            entry.suspect = False
            if remedy is Remedy.DEAD_LETTER and (entry.alone or entry.code is not None):
                self._replace_by_dead_letter(entry, describe(error))
            elif now - entry.since > self.deadline_s:
                raise self._stop(self._overdue(entry, error))
            elif remedy is Remedy.DEAD_LETTER:
                entry.suspect = True  # refused in a batch: sent alone to tell
            remedies.add(remedy)
            entry.attempt, entry.refused = None, None
        for kind, count in seen.items():
            logger.warning("%d output records failed (%s): %s", count, kind[0].value, example[kind])
        return remedies

    def _rewound(self) -> list[_Entry]:
        """Records to send again, in window order: each failed one, and every later one of its key
        (a record that may only have been too large in its batch is sent alone first instead: if it
        lands after all, :meth:`_out_of_order` finds the later ones)."""
        behind: set[tuple[str, bytes]] = set()
        again: list[_Entry] = []
        for entry in self._window:
            key = entry.key
            if entry.failed:
                again.append(entry)
                if key is not None and not entry.suspect:
                    behind.add(key)
            elif key is not None and key in behind:
                again.append(entry)
                entry.attempt = None  # its copy now lands before the failed one: it is due again
        return again

    def _out_of_order(self) -> list[_Entry]:
        """Acknowledged records whose latest copy was sent before that of an earlier record of
        their key: sent again, in order, their last copies are in order."""
        latest: dict[tuple[str, bytes], int] = {}
        late: list[_Entry] = []
        for entry in self._window:
            key = entry.key
            if key is None:
                continue
            if entry.seq < latest.get(key, -1):
                late.append(entry)
            latest[key] = max(latest.get(key, -1), entry.seq)
        return late

    async def _resend(self, entries: list[_Entry]) -> None:
        """Send each entry alone and wait for it; stop at the first that fails (the next round
        takes it from there)."""
        self._metrics.produce_retries(len(entries))
        if entries:
            logger.warning("re-sending %d output records in order", len(entries))
        for entry in entries:
            if not await self._send(entry, alone=True):
                return
            assert entry.attempt is not None
            left = entry.since + self.deadline_s - self._clock()
            done, _ = await asyncio.wait([entry.attempt], timeout=max(left, 0.0))
            if not done:
                raise self._stop(self._overdue(entry))
            if _failure(entry.attempt) is not None:
                return

    # --- stopping ----------------------------------------------------------------------------

    def _overdue(self, entry: _Entry, error: BaseException | None = None) -> str:
        self._metrics.produce_error(Remedy.STOP.value, "deadline")
        error = error or entry.last_error
        last = f" (last error: {describe(error)})" if error is not None else ""
        return (
            f"an output record for topic {entry.record.topic} is still unacknowledged after "
            f"{self._clock() - entry.since:.1f}s, beyond "
            f"ROUTEWORKER_PRODUCE_DEADLINE_S={self.deadline_s:g}{last}"
        )

    def _stop(self, error: ProduceError | str, refusal: BaseException | None = None) -> ProduceError:
        """Fail every waiting record with ``error`` (the first such error wins); returns it.

        ``refusal``: the broker's error behind it, if any (the stop line names a refused permission).
        """
        if self._fatal is None:
            self._fatal = error if isinstance(error, ProduceError) else ProduceError(error, refusal)
            logger.error("output cannot be delivered, the replica stops: %s", self._fatal)
        for entry in self._window:
            if not entry.released.done():
                entry.released.set_exception(self._fatal)
        self._trouble.set()
        return self._fatal

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal


def _retrieve(future: asyncio.Future[None]) -> None:
    # an entry's error is raised by the confirm waiting for it; one nobody waits for any more
    # (its batch was cancelled) must not be reported as never retrieved
    if not future.cancelled():
        future.exception()


def _failure(attempt: asyncio.Future[RecordMetadata]) -> BaseException | None:
    """A settled send's error (a cancelled send counts as failed), None if acknowledged."""
    if attempt.cancelled():
        return asyncio.CancelledError("the send was cancelled")
    return attempt.exception()
