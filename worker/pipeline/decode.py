"""Decoding step: raw records -> valid queries, and dead letters for everything else."""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.contracts import DeadLetter, Header, Limits, Query, SourcePosition, decode_query, encode
from worker.errors import ContractError, ErrorCode
from worker.pipeline.types import InputRecord, Outbound

# A dead letter must itself fit in a broker record (1 MiB by default): key and value are kept in
# base64 (+33%) next to the original key, so each is kept up to this many bytes.
MAX_DEAD_LETTER_BYTES = 192 * 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record whose value is a valid query."""

    record: InputRecord
    query: Query


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that breaks the contract, and why."""

    record: InputRecord
    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A batch split into valid queries and rejected records, each in consumption order."""

    accepted: list[Accepted]
    rejected: list[Rejected]
    #: paths of fields this version does not know, ignored in the accepted queries, with counts
    unknown_fields: Counter[str] = field(default_factory=Counter)


def decode_batch(records: Sequence[InputRecord], limits: Limits) -> DecodedBatch:
    """Validate every record; a contract error rejects that record only."""
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    unknown: Counter[str] = Counter()
    for record in records:
        if record.undecodable is not None:  # a stand-in for a batch the client could not decode
            rejected.append(Rejected(record, ErrorCode.UNDECODABLE_BATCH, record.undecodable))
            continue
        try:
            accepted.append(Accepted(record, decode_query(record.value, limits, unknown)))
        except ContractError as error:
            rejected.append(Rejected(record, error.code, error.reason))
    return DecodedBatch(accepted, rejected, unknown)


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def dead_letter(rejected: Rejected, topic: str, worker: str, now_ms: int | None = None) -> Outbound:
    """The DLQ record of a rejected input: original key, value and headers, position, code, reason.

    The record keeps the original key so the DLQ partitions like the input did.
    """
    record = rejected.record
    key = record.key[:MAX_DEAD_LETTER_BYTES] if record.key is not None else None
    value = record.value
    reason = rejected.reason
    if value is not None and len(value) > MAX_DEAD_LETTER_BYTES:
        reason = f"{reason} (value of {len(value)} bytes kept truncated to its first {MAX_DEAD_LETTER_BYTES})"
        value = value[:MAX_DEAD_LETTER_BYTES]
    letter = DeadLetter(
        error_code=rejected.code,
        reason=reason,
        source=SourcePosition(topic=record.topic, partition=record.partition, offset=record.offset),
        key_b64=_b64(key),
        value_b64=_b64(value),
        headers=[Header(key=k, value_b64=_b64(v)) for k, v in record.headers],
        worker=worker,
        failed_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )
    return Outbound(topic, key, encode(letter), origin=record.topic_partition)
