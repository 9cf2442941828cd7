"""A consumed mutation-log record as the replication code reads it (worker.replication.fold.LogRecord):
the unit tests' stand-in for aiokafka's ConsumerRecord."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    topic: str = "route-mutations"
    timestamp: int = -1
