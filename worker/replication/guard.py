"""Publishing a plan only onto the log it was made against (two admins never undo each other).

`routes apply` reads the log, plans, and publishes; another admin may publish in between, and a
plan made before that (``--prune`` above all) would delete or overwrite what they just added. So a
plan records the log's end offsets (:attr:`~worker.replication.MutationPlan.based_on`) and
:func:`publish_guarded` publishes only if the log still ends there, raising :class:`LogMoved`
otherwise, with nothing published.

Between the check and the publish another admin could still slip in. On a broker with transactions
(Apache Kafka) the check runs inside a transaction of a transactional id shared by every admin of
the topic (:func:`admin_transactional_id`):

1. ``begin_transaction`` takes the id's producer id, which fences every admin that took it before
   (their open transaction is aborted; their later sends and commit fail);
2. the log's end offsets are read and compared with the plan's;
3. the records are sent and the transaction committed.

An admin that published before step 1 moved the log: step 2 refuses. One that begins after step 1
fences this one: its sends or its commit fail, and it refuses too. Whatever the interleaving, at
most one of two racing plans is published, and only onto the log it was made against. (Both may
refuse, when one is fenced after sending: its aborted records still move the end offsets.) Replicas
read committed records only, so an aborted publish is never applied.

A broker without transactions (Tansu) gets the check right before the records are sent, which
narrows the race to that moment, with a warning saying so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    UnknownError,
    UnsupportedVersionError,
)

from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteMutation
from worker.replication.errors import ReplicationError
from worker.replication.log import MutationLog
from worker.replication.publisher import MutationPublisher, PublishReceipt

logger = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class LogMoved(ReplicationError):
    """The log is not where the plan was made against: another admin published. Nothing of this
    plan was published; planning again against the log as it is now is safe."""

    def __init__(self, topic: str, planned: Mapping[int, int], now: Mapping[int, int] | None) -> None:
        self.planned = dict(planned)
        self.now = None if now is None else dict(now)
        if now is None:
            detail = (
                "another admin began publishing to it while this one was (or this transaction ran "
                "longer than allowed)"
            )
        else:
            detail = f"it ended at {dict(planned)} when the plan was made and ends at {dict(now)} now"
        super().__init__(
            f"{topic} moved since the plan was made: {detail}; nothing was published. Run the "
            "command again to plan against the log as it is now."
        )


@dataclass(frozen=True, slots=True)
class PublishHooks:
    """Points inside a guarded publish where a test or the fault suite can make another admin act."""

    #: after the end offsets were checked, before any record is sent
    after_check: Hook | None = None
    #: after every record was acknowledged, before the transaction is committed
    before_commit: Hook | None = None


def admin_transactional_id(topic: str) -> str:
    """The transactional id every admin of ``topic`` publishes with (the same one: they fence each
    other). Admins need Write on it (a TransactionalId ACL) besides Write on the topic."""
    return f"routeworker-routes-{topic}"


async def log_ends(settings: Settings) -> dict[int, int]:
    """Where the mutation log ends now, for committed readers (what a plan records)."""
    async with MutationLog.opened(settings) as log:
        return dict(log.ends)


async def publish_guarded(
    settings: Settings,
    mutations: Sequence[RouteMutation],
    planned_ends: Mapping[int, int],
    *,
    on_acked: Callable[[int], None] | None = None,
    hooks: PublishHooks | None = None,
    calibration: RouteCalibrationRecord | None = None,
) -> PublishReceipt:
    """Publish ``mutations`` (then ``calibration``) only if the log still ends at ``planned_ends``;
    else :class:`LogMoved`."""
    hooks = hooks or PublishHooks()
    topic = settings.topic_mutations
    publisher = MutationPublisher(settings, transactional_id=admin_transactional_id(topic))
    try:
        await publisher.start()  # takes the producer id at once (a failed start stops itself)
        await publisher.begin_transaction()
    except (UnknownError, UnsupportedVersionError) as error:
        await publisher.stop()
        logger.warning(
            "the brokers take no transactions (%s): the log is checked right before publishing, "
            "so another admin publishing at that very moment is not excluded",
            type(error).__name__,
        )
    else:
        try:
            return await _in_transaction(
                settings, publisher, mutations, planned_ends, on_acked, hooks, calibration
            )
        finally:
            await publisher.stop()
    async with MutationPublisher(settings) as plain:
        await _check(settings, planned_ends)
        if hooks.after_check is not None:
            await hooks.after_check()
        return await plain.publish(mutations, on_acked, calibration=calibration)


async def _in_transaction(
    settings: Settings,
    publisher: MutationPublisher,
    mutations: Sequence[RouteMutation],
    planned_ends: Mapping[int, int],
    on_acked: Callable[[int], None] | None,
    hooks: PublishHooks,
    calibration: RouteCalibrationRecord | None,
) -> PublishReceipt:
    committed = False
    try:
        await _check(settings, planned_ends)
        if hooks.after_check is not None:
            await hooks.after_check()
        receipt = await publisher.publish(mutations, on_acked, calibration=calibration)
        if hooks.before_commit is not None:
            await hooks.before_commit()
        await publisher.commit_transaction()
        committed = True
        return receipt
    except (ProducerFenced, InvalidProducerEpoch) as error:
        raise LogMoved(settings.topic_mutations, planned_ends, None) from error
    finally:
        if not committed:
            # fenced or failed: make sure no reader waits for this transaction to time out
            with contextlib.suppress(KafkaError):
                await publisher.abandon_transaction()


async def _check(settings: Settings, planned_ends: Mapping[int, int]) -> None:
    now = await log_ends(settings)
    if now != dict(planned_ends):
        raise LogMoved(settings.topic_mutations, planned_ends, now)
