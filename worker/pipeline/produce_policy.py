"""The produce step's error policy: what a failed send means, and what the step does about it.

One function, :func:`remedy_for`, decides from aiokafka's error classes (their ``retriable``
attribute, and a few classes by name); :class:`worker.pipeline.produce.Delivery` applies it:

- ``RETRY``: a broker or network condition that passes (leader moving, broker restarting, request
  timing out, an unknown topic that may be being created). Sent again with back-off, in order,
  until ``produce_deadline_s``; past it the replica stops.
- ``DEAD_LETTER``: the record is larger than the topic takes. Sent alone once more (a batch of
  records can be refused when each would fit); refused alone, its query goes to the DLQ with code
  ``intent_too_large``.
- ``RESET``: the idempotent producer's sequence for a partition broke (the broker refused a batch
  and expects the sequence it skipped): a new producer, then the records are sent again in order.
- ``STOP``: anything else (authorization, an invalid topic, a closed producer...): retrying cannot
  help, so the replica stops loudly.
"""

from __future__ import annotations

from enum import StrEnum

from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    UnknownProducerId,
)

from worker.pipeline.errors import PipelineError


class Remedy(StrEnum):
    """What the produce step does about a failed send (also the ``remedy`` label of its metric)."""

    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    RESET = "reset"
    STOP = "stop"


class ProduceError(PipelineError):
    """Output cannot be delivered (a non-retriable error, or retries past the deadline).

    ``refusal``: the broker's error that made it, when one did (e.g. a write permission taken
    away), kept apart from ``__cause__`` because the error is raised again from several places.
    """

    def __init__(self, message: str, refusal: BaseException | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


# A record (or the batch it was in) over the topic's max.message.bytes, or the segment size.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# The broker lost track of the idempotent producer's sequence: a new producer id starts afresh.
_SEQUENCE = (OutOfOrderSequenceNumber, UnknownProducerId)


def remedy_for(error: BaseException) -> Remedy:
    """The remedy for one failed send."""
    if isinstance(error, _TOO_LARGE):
        return Remedy.DEAD_LETTER
    if isinstance(error, _SEQUENCE):
        return Remedy.RESET
    # aiokafka's own timeouts (a batch expired unacknowledged, the buffer stayed full) pass with
    # the condition behind them, though the class is not marked retriable
    if isinstance(error, KafkaTimeoutError):
        return Remedy.RETRY
    if isinstance(error, KafkaError) and error.retriable:
        return Remedy.RETRY
    return Remedy.STOP


def describe(error: BaseException) -> str:
    """``ClassName: message`` (aiokafka's messages alone are often just the class name)."""
    text = str(error)
    name = type(error).__name__
    return name if not text or text == name else f"{name}: {text}"
