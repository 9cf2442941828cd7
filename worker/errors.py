"""Errors shared by every layer: one typed error for bad input, one for bad configuration."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable reason an input could not be used. Stable: dashboards and DLQ tools key on it."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_object"
    SCHEMA = "schema"
    UNKNOWN_FIELD = "unknown_field"
    EMPTY_TEXT = "empty_text"
    TOO_LARGE = "too_large"
    MISSING_KEY = "missing_key"
    KEY_MISMATCH = "key_mismatch"
    WRONG_MODEL = "wrong_model"
    EMBEDDING_SHAPE = "embedding_shape"
    EMBEDDING_FAILED = "embedding_failed"
    PROCESSING = "processing"
    ROUTING_FAILED = "routing_failed"
    INTENT_TOO_LARGE = "intent_too_large"
    # a fetched record batch the Kafka client could not decode (corrupt, or an unknown codec)
    UNDECODABLE_BATCH = "undecodable_batch"


class ContractError(ValueError):
    """An input message that breaks its topic's contract.

    ``code`` is for machines (DLQ routing, metrics), ``reason`` for people. The stream layer turns
    it into a DLQ record; the CLI prints it.
    """

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class ConfigError(ValueError):
    """A setting with a bad value; the message is one line naming the setting."""
