"""The query pipeline of one replica: consume -> process -> produce -> commit.

Batches are processed concurrently (embedding of one overlaps the search and produce of another)
within a window of ``max_in_flight_batches``; their output is handed to the producer in
consumption order. At least once (the default), offsets advance only past batches whose every
output is acknowledged (:class:`OffsetTracker`). Exactly once, each batch's outputs go into the
transactions of its input partitions, which commit them with the partitions' offsets
(:class:`ExactlyOnceOutput`). All tasks live in one :class:`asyncio.TaskGroup`: a crash in any of
them stops the pipeline with that error instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from worker.cache import AsyncEncoder
from worker.config import Settings
from worker.errors import ErrorCode
from worker.pipeline.backpressure import EMBED_PLACES, EmbedGate, EmbedPass, FlowControl
from worker.pipeline.batcher import Batcher
from worker.pipeline.clients import output_producer, query_consumer, raw_fetch, transactional_producer
from worker.pipeline.commit import Committer
from worker.pipeline.errors import ShutdownTimeout
from worker.pipeline.exactly_once import ExactlyOnceOutput, Stamp
from worker.pipeline.exactly_once import ProducerFactory as TransactionalProducers
from worker.pipeline.kafka import OutputProducer, ProducerFactory, QueryConsumer, TransactionalProducer
from worker.pipeline.offsets import InFlightBatch, OffsetTracker
from worker.pipeline.process import BatchProcessor, ProcessedBatch
from worker.pipeline.produce import Delivery, DeliveryReport
from worker.pipeline.produce_policy import Remedy
from worker.pipeline.producer_session import ProducerSession
from worker.pipeline.raw_fetch import RawFetch
from worker.pipeline.rebalance import DrainOnRevoke
from worker.pipeline.topic_limits import TopicLimits, read_topic_limits
from worker.pipeline.types import InputRecord, Outbound, TopicPartition, next_offsets
from worker.pipeline.undecodable import UndecodableBatch, UndecodableBatches
from worker.routing import Router
from worker.telemetry import Telemetry

logger = logging.getLogger(__name__)


class QueryPipeline:
    """Routes the queries topic into routed intents and dead letters until :meth:`stop`.

    ``consumer`` and ``producers`` default to aiokafka clients built from ``settings``; tests pass
    stand-ins (anything that satisfies :class:`QueryConsumer` and :class:`ProducerFactory`),
    ``raw`` the undecoded fetches that find a batch the consumer cannot decode, and in
    exactly-once mode ``transactional_producers`` (a transactional id -> an unstarted producer).
    ``topic_limits`` (the output topics' ``max.message.bytes``) is read from the broker at start
    unless given (stand-ins get the defaults). ``remember_decisions`` sizes the memo of decisions
    of repeated texts (:class:`worker.pipeline.decisions.DecisionMemo`; 0 = off).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: AsyncEncoder,
        router: Router,
        telemetry: Telemetry,
        consumer: QueryConsumer | None = None,
        producers: ProducerFactory | None = None,
        topic_limits: TopicLimits | None = None,
        transactional_producers: TransactionalProducers | None = None,
        raw: RawFetch | None = None,
        remember_decisions: int = 0,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        metrics = telemetry.metrics
        self._consumer = consumer if consumer is not None else query_consumer(settings)
        if topic_limits is None and (producers is not None or transactional_producers is not None):
            topic_limits = TopicLimits()
        self._topic_limits = topic_limits
        self.tracker = OffsetTracker()
        self._undecodable = UndecodableBatches(
            self._consumer, raw if raw is not None else raw_fetch(settings), self._on_undecodable
        )
        self.exactly_once: ExactlyOnceOutput | None = None
        self._batcher = Batcher(
            self._consumer, settings.batch_size, settings.batch_wait_ms / 1000, undecodable=self._undecodable
        )
        if settings.processing_guarantee == "exactly_once":
            self.exactly_once = ExactlyOnceOutput(
                self._consumer,
                transactional_producers or self._transactional_producer,
                settings.group_id,
                interval_s=settings.transaction_interval_ms / 1000,
                on_rewind=self._batcher.discard_pending,
                metrics=metrics,
                start_timeout_s=settings.kafka_request_timeout_ms / 1000,
                commit_timeout_s=settings.kafka_request_timeout_ms / 1000,
            )
            self._batcher.admits = self.exactly_once.admits
        self._flow = FlowControl(self._consumer, self.tracker, settings.max_in_flight_batches, metrics)
        self.embed_gate = EmbedGate(EMBED_PLACES)
        self.committer = Committer(self._consumer, self.tracker, settings.commit_interval_ms / 1000, metrics)
        self.processor = BatchProcessor(
            settings, encoder, router, telemetry.tracer, metrics, remember_decisions=remember_decisions
        )
        # exactly once, the partitions' transactional producers replace the output producer: the
        # session is then never opened
        self._session = ProducerSession(producers or self._output_producer, settings.kafka_idempotence)
        self.delivery = Delivery(
            self._session,
            metrics,
            dead_letter=self.processor.dead_letter_of,
            deadline_s=settings.produce_deadline_s,
            limits=topic_limits,
        )
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._last_sent: asyncio.Event | None = None
        self._rebalance_started: float | None = None

    def _output_producer(self, *, idempotent: bool) -> OutputProducer:
        return output_producer(
            self.settings, idempotent=idempotent, max_batch_bytes=self.delivery.limits.batch_bytes()
        )

    @property
    def idempotent(self) -> bool:
        """Whether the output producer is idempotent (known once :meth:`run` has started it)."""
        return self._session.idempotent

    def _transactional_producer(self, transactional_id: str) -> TransactionalProducer:
        return transactional_producer(self.settings, transactional_id)

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no new batches; in-flight work finishes and is committed."""
        self._stopping.set()
        self.telemetry.health.stopping()
        self.tracker.poke()

    async def run(self) -> None:
        """Consume until :meth:`stop`; returns after the final commit, raises on a fatal error.

        The Kafka clients are closed on the way out whatever happened, so create the pipeline
        only when it is going to run.
        """
        try:
            if self._topic_limits is None:
                self._topic_limits = await read_topic_limits(
                    self.settings, [self.settings.topic_intents, self.settings.topic_dlq]
                )
                self.delivery.limits = self._topic_limits
            if self.exactly_once is None:
                await self._session.open()
            listener = DrainOnRevoke(self._on_revoked, self._on_assigned, self._on_listener_error)
            self._consumer.subscribe([self.settings.topic_queries], listener=listener)
            await self._consumer.start()
            await self._run_tasks()
        finally:
            await self._consumer.stop()  # leaves the group; the final commit is already done
            if self.exactly_once is None:
                await self._session.close(self.settings.shutdown_timeout_s)
            await self._undecodable.close()
            await asyncio.to_thread(self.processor.close)

    async def _run_tasks(self) -> None:
        clean = False
        try:
            async with asyncio.TaskGroup() as tasks:
                if self.exactly_once is not None:
                    tasks.create_task(self.exactly_once.run(), name="transaction-committer")
                else:
                    tasks.create_task(self.committer.run(), name="offset-committer")
                    tasks.create_task(self._recover_deliveries(), name="produce-recovery")
                try:
                    await self._consume(tasks)
                    await self._drain()
                finally:
                    self.committer.stop()
                    if self.exactly_once is not None:
                        self.exactly_once.stop()
                    else:
                        self.delivery.stop()
            clean = True
        finally:
            await self._final_commit(clean)

    async def _recover_deliveries(self) -> None:
        try:
            await self.delivery.run()
        except Exception as error:
            self._failing(error)
            raise

    def _failing(self, error: BaseException) -> None:
        """A fatal error: /livez fails at once, while the pipeline is still closing."""
        self.telemetry.health.fail(f"{type(error).__name__}: {error}")

    async def _final_commit(self, clean: bool) -> None:
        if self.exactly_once is not None:
            # on an error, abort: the partitions' next owners consume that input again
            await self.exactly_once.close(commit=clean)
            return
        # Finished work is acknowledged, so committing it is safe even when stopping on an error.
        try:
            await self.committer.commit_all("shutdown", self.settings.shutdown_timeout_s)
        except (KafkaError, TimeoutError):
            if clean:
                raise
            logger.exception("final offset commit failed while stopping on an error")

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _drain(self) -> None:
        pending = len(self.tracker)
        if pending:
            logger.info("stopping: finishing %d in-flight batches", pending)
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await self.tracker.wait_until(lambda: not len(self.tracker) or self._fatal is not None)
        except TimeoutError:
            raise ShutdownTimeout(
                f"{len(self.tracker)} batches still in flight after {self.settings.shutdown_timeout_s}s"
            ) from None
        self._raise_if_fatal()

    # --- consuming ---------------------------------------------------------------------------

    async def _consume(self, tasks: asyncio.TaskGroup) -> None:
        while not self._stopping.is_set():
            self._raise_if_fatal()
            await self._flow.wait_for_room(self._stopping.is_set)
            if self._stopping.is_set():
                break
            place = await self.embed_gate.enter()
            if self._stopping.is_set():  # asked while waiting for the encoder
                place.leave()
                break
            try:
                records = await self._batcher.next_batch()
            except BaseException:
                place.leave()
                raise
            self._raise_if_fatal()
            if not records:
                place.leave()
                continue
            self._record_lag(records)
            offsets = next_offsets(records)
            # the transactions of the partitions, as they are now: a rewind or revocation later
            # makes this batch's outputs void
            stamp = self.exactly_once.stamp(offsets) if self.exactly_once is not None else {}
            batch = self.tracker.start(offsets)
            self.telemetry.health.in_flight(len(self.tracker))
            previous, sent = self._last_sent, asyncio.Event()
            self._last_sent = sent
            tasks.create_task(
                self._handle(batch, records, stamp, place, previous, sent), name=f"batch-{batch.seq}"
            )
        self.telemetry.health.stopping()

    def _on_undecodable(self, batch: UndecodableBatch) -> None:
        self.telemetry.metrics.undecodable_batch(batch.topic, batch.partition)

    def _record_lag(self, records: list[InputRecord]) -> None:
        last: dict[TopicPartition, int] = {}
        for record in records:
            last[record.topic_partition] = record.offset
        lag: dict[TopicPartition, int] = {}
        for tp, offset in last.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                lag[tp] = highwater - offset - 1
                self.telemetry.metrics.consumer_lag(tp.topic, tp.partition, lag[tp])
        self.telemetry.health.fetched(lag.items())

    async def _handle(
        self,
        batch: InFlightBatch,
        records: list[InputRecord],
        stamp: Stamp,
        place: EmbedPass,
        previous: asyncio.Event | None,
        sent: asyncio.Event,
    ) -> None:
        tracer = self.telemetry.tracer
        processed: ProcessedBatch | None = None
        try:
            with tracer.start_as_current_span(
                "routeworker.batch", attributes={"routeworker.batch.size": len(records)}
            ):
                processed = await self.processor.process(records, place.leave)
                outbounds = processed.outbounds
                if previous is not None:
                    await previous.wait()  # keeps output in consumption order, per key included
                with tracer.start_as_current_span(
                    "routeworker.produce", attributes={"records": len(outbounds)}
                ):
                    report = await self._produce(records, stamp, outbounds, sent)
        except Exception as error:
            self._failing(error)
            raise
        finally:
            place.leave()
            sent.set()
            if processed is not None:
                processed.trace.end()
        self.tracker.finish(batch)
        self.telemetry.health.processed()
        self.telemetry.health.in_flight(len(self.tracker))
        if report is not None:
            self._account(processed, report)

    async def _produce(
        self, records: list[InputRecord], stamp: Stamp, outbounds: list[Outbound], sent: asyncio.Event
    ) -> DeliveryReport | None:
        """Hand the outputs over (``sent`` once they are, in order), then wait for them; None when
        they were dropped (exactly once: their transaction was rewound or revoked meanwhile)."""
        if self.exactly_once is not None:
            report = DeliveryReport()
            outbounds = self._fitting(outbounds, report)
            # done once handed over: the commit checks every acknowledgement of its transaction
            taken = await self.exactly_once.enqueue(stamp, outbounds, next_offsets(records))
            sent.set()
            return report if taken else None
        sending = await self.delivery.enqueue(outbounds)
        sent.set()
        return await self.delivery.confirm(sending)

    def _fitting(self, outbounds: list[Outbound], report: DeliveryReport) -> list[Outbound]:
        """Exactly once, an intent too large for its topic (as far as the limits read at start
        tell) is replaced by its query's dead letter before it joins a transaction: a refused
        record would abort the transaction, and the same input would be refused again for ever.
        (At least once, :class:`Delivery` does this as it sends.)"""
        limits = self.delivery.limits
        fitting: list[Outbound] = []
        for i, record in enumerate(outbounds):
            reason = limits.too_large(record)
            dead = None
            if reason is not None:
                dead = self.processor.dead_letter_of(record, ErrorCode.INTENT_TOO_LARGE, reason)
            if dead is None or limits.too_large(dead) is not None:
                fitting.append(record)  # fits, or a dead letter that cannot: the commit fails loudly
                continue
            logger.warning("a routed intent cannot be produced (%s): its query goes to the DLQ", reason)
            self.telemetry.metrics.produce_error(Remedy.DEAD_LETTER.value, "max.message.bytes")
            report.dead_lettered[i] = ErrorCode.INTENT_TOO_LARGE
            fitting.append(dead)
        return fitting

    def _account(self, processed: ProcessedBatch, report: DeliveryReport) -> None:
        metrics = self.telemetry.metrics
        # intents come first in the outbounds: those positions dead-lettered at produce time
        replaced = {i for i in report.dead_lettered if i < len(processed.intents)}
        matched = [m for i, m in enumerate(processed.matched) if i not in replaced]
        metrics.decisions(sum(matched), len(matched) - sum(matched))
        for code in [*processed.dead_codes, *(code.value for code in report.dead_lettered.values())]:
            metrics.dead_lettered(code)
        now_ms = time.time() * 1000
        metrics.end_to_end_ms(
            now_ms - ts for i, ts in enumerate(processed.routed_timestamps_ms) if i not in replaced
        )

    # --- rebalancing -------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # called at the start of every rebalance, with nothing revoked on joining; fetching for
        # the revoked partitions stops at once: no record of theirs starts a batch from here on
        self.telemetry.health.rebalance_started()
        self._rebalance_started = time.monotonic()
        self._batcher.revoke(revoked)
        if self.exactly_once is not None:
            self.exactly_once.withdraw(revoked)
        if not revoked:
            return
        self._flow.forget(revoked)
        self._consumer.pause(*revoked)
        holding = self.tracker.holding(revoked)
        logger.info("%d partitions revoked: finishing %d in-flight batches", len(revoked), holding)
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await self.tracker.wait_until(
                    lambda: not self.tracker.holding(revoked) or self._fatal is not None
                )
            finished = self._fatal is None
        except TimeoutError:
            finished = False
            logger.error(
                "in-flight work did not finish before partitions were given up: their next owner "
                "processes it again"
            )
        if self.exactly_once is not None:
            # every batch done: commit the partitions' transactions; else abort them
            await self.exactly_once.revoke(revoked, finished=finished)
            return
        await self.committer.commit("revoke")
        late = self.tracker.forget(revoked)
        if late:
            logger.warning(
                "%d in-flight batches finish after the revocation: they commit no revoked partition", late
            )
        if self._rebalance_started is not None:
            took = time.monotonic() - self._rebalance_started
            logger.info("revoked partitions finished and committed in %.3fs", took)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._batcher.assigned()
        if self.exactly_once is not None:
            # fence the previous owners, then read the committed offsets: before the health
            # says so, since the partitions are not consumed until then
            await self.exactly_once.assign(assigned)
        self.telemetry.health.partitions_assigned(assigned)
        if self._rebalance_started is None:
            logger.info("assigned %d partitions: %s", len(assigned), sorted(assigned))
            return
        took = time.monotonic() - self._rebalance_started
        self._rebalance_started = None
        self.telemetry.metrics.rebalance_ms(took * 1000)
        logger.info(
            "assigned %d partitions after a rebalance of %.3fs: %s", len(assigned), took, sorted(assigned)
        )

    def _on_listener_error(self, error: BaseException) -> None:
        logger.error("rebalance handling failed: %s", error)
        self._failing(error)
        self._fatal = error
        self.tracker.poke()
