"""Errors of the exactly-once output: which stop the replica, and which abort and re-consume.

A transaction that failed for a passing reason (a record the broker did not take, a timeout) is
aborted and its input consumed again from the committed offset. Errors that say this replica may no
longer write (it was fenced: a newer producer of the partition's transactional id exists), that it
is not allowed to, or that the client and the broker disagree on the transaction's state cannot be
retried away: the replica stops loudly, and whoever owns the partition goes on from its committed
offset.
"""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalOperation,
    IncompatibleBrokerVersion,
    InvalidProducerEpoch,
    InvalidTxnState,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
)
from aiokafka.structs import TopicPartition

from worker.pipeline.errors import PipelineError

_FENCED = (ProducerFenced, InvalidProducerEpoch)
_FATAL = (
    *_FENCED,
    OutOfOrderSequenceNumber,
    TransactionalIdAuthorizationFailed,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    InvalidTxnState,
    UnsupportedVersionError,
    IncompatibleBrokerVersion,
    IllegalOperation,
)


# What a transactional producer's calls raise: Kafka errors, refusals of the client, the assertions
# of its transaction state machine, and timeouts (ours).
TRANSACTION_ERRORS = (KafkaError, IllegalOperation, AssertionError, TimeoutError)


class TransactionFatal(PipelineError):
    """The exactly-once output cannot go on; the replica stops (exit status 1)."""


def is_fatal(error: BaseException) -> bool:
    """Whether ``error`` of a transactional call must stop the replica.

    Anything that is not a Kafka error or a timeout is fatal too: aiokafka signals a transaction
    state it cannot leave with an assertion, and a bug must not be retried in a loop.
    """
    if isinstance(error, _FATAL):
        return True
    return not isinstance(error, KafkaError | TimeoutError)


def fatal_error(partition: TopicPartition, error: BaseException) -> TransactionFatal:
    """The one-line error the replica stops with."""
    where = f"{partition.topic}-{partition.partition}"
    if isinstance(error, _FENCED):
        return TransactionFatal(
            f"the transactional producer of {where} was fenced: a newer producer of its "
            "transactional id exists (another replica took the partition over while this one had "
            "lost its group membership); stopping, the new owner goes on from the committed offset"
        )
    return TransactionFatal(f"transaction of {where} failed for good: {type(error).__name__}: {error}")
