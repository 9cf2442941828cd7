"""The `queries.dlq` topic: every input that could not be routed, with why."""

from __future__ import annotations

from pydantic import BaseModel, Field

from worker.contracts.evolution import reader_config
from worker.errors import ErrorCode


class SourcePosition(BaseModel):
    """Where the bad record sits in its source topic."""

    model_config = reader_config()

    topic: str
    partition: int
    offset: int


class Header(BaseModel):
    """A Kafka record header; values are bytes, kept as base64."""

    model_config = reader_config()

    key: str
    value_b64: str | None


class DeadLetter(BaseModel):
    """An input the worker could not route, kept whole so it can be inspected and replayed."""

    model_config = reader_config("DeadLetter")

    error_code: ErrorCode
    reason: str = Field(description="Human-readable explanation.")
    source: SourcePosition
    key_b64: str | None = Field(description="Original record key, base64.")
    value_b64: str | None = Field(description="Original record value bytes, base64.")
    headers: list[Header]
    worker: str
    failed_at_ms: int = Field(description="Unix epoch milliseconds when the worker gave up on it.")
