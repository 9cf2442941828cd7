"""Decoding: every malformed record becomes a dead letter with its code, bytes, headers, position."""

from __future__ import annotations

import base64
from dataclasses import replace

import orjson
import pytest

from worker.contracts import DeadLetter, Limits
from worker.errors import ErrorCode
from worker.pipeline import InputRecord, dead_letter, decode_batch
from worker.pipeline.decode import MAX_DEAD_LETTER_BYTES, Rejected

LIMITS = Limits(max_message_bytes=1024, max_text_chars=100, max_top_n=5)

MALFORMED: list[tuple[bytes | None, ErrorCode]] = [
    (None, ErrorCode.SCHEMA),
    (b"\xff\xfe not utf-8", ErrorCode.INVALID_UTF8),
    (b"{not json", ErrorCode.INVALID_JSON),
    (b"[1, 2]", ErrorCode.NOT_AN_OBJECT),
    (b'{"id": "q"}', ErrorCode.SCHEMA),
    (b'{"id": "q", "text": "   "}', ErrorCode.EMPTY_TEXT),
    (orjson.dumps({"id": "q", "text": "x" * 101}), ErrorCode.TOO_LARGE),
    (b"{" + b" " * 2000 + b"}", ErrorCode.TOO_LARGE),
    (b'{"id": "q", "text": "hi", "top_n": 6}', ErrorCode.SCHEMA),
]


def record(
    value: bytes | None, offset: int = 7, headers: tuple[tuple[str, bytes | None], ...] = ()
) -> InputRecord:
    return InputRecord("queries", 1, offset, 1_700_000_000_000, b"conversation-9", value, headers)


def test_unknown_fields_are_counted_in_tolerant_mode_and_dead_lettered_in_strict_mode() -> None:
    newer = b'{"id": "q", "text": "hi", "colour": "red", "tags": {"a": 1}}'
    bad = b'{"id": "q", "text": "   ", "colour": "red"}'  # rejected anyway: its fields are not counted
    tolerant = decode_batch([record(newer, offset=1), record(newer, offset=2), record(bad, offset=3)], LIMITS)
    assert [a.query.id for a in tolerant.accepted] == ["q", "q"]
    assert [r.code for r in tolerant.rejected] == [ErrorCode.EMPTY_TEXT]
    assert tolerant.unknown_fields == {"colour": 2, "tags": 2}

    strict = decode_batch([record(newer)], replace(LIMITS, contract_mode="strict"))
    assert strict.accepted == []
    (rejected,) = strict.rejected
    assert rejected.code is ErrorCode.UNKNOWN_FIELD
    assert "colour, tags" in rejected.reason
    assert not strict.unknown_fields


@pytest.mark.parametrize(("value", "code"), MALFORMED)
def test_malformed_records_are_rejected_with_their_code(value: bytes | None, code: ErrorCode) -> None:
    decoded = decode_batch([record(value)], LIMITS)
    assert decoded.accepted == []
    (rejected,) = decoded.rejected
    assert rejected.code is code
    assert rejected.reason


def test_valid_and_malformed_records_are_split_in_order() -> None:
    records = [
        record(b'{"id": "a", "text": "hello"}', 0),
        record(b"nope", 1),
        record(b'{"id": "b", "text": "bye", "metadata": {"x": 1}}', 2),
    ]
    decoded = decode_batch(records, LIMITS)
    assert [a.query.id for a in decoded.accepted] == ["a", "b"]
    assert [r.record.offset for r in decoded.rejected] == [1]


def test_a_dead_letter_keeps_bytes_headers_key_and_position() -> None:
    raw = b"\x00binary\xff"
    headers: tuple[tuple[str, bytes | None], ...] = (("traceparent", b"00-abc"), ("empty", None))
    out = dead_letter(Rejected(record(raw, 42, headers), ErrorCode.INVALID_UTF8, "bad"), "dlq", "r1", 5)
    assert out.topic == "dlq"
    assert out.key == b"conversation-9"
    letter = DeadLetter.model_validate_json(out.value)
    assert letter.error_code is ErrorCode.INVALID_UTF8
    assert letter.reason == "bad"
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == ("queries", 1, 42)
    assert base64.b64decode(letter.value_b64 or "") == raw
    assert base64.b64decode(letter.key_b64 or "") == b"conversation-9"
    assert [(h.key, h.value_b64) for h in letter.headers] == [
        ("traceparent", base64.b64encode(b"00-abc").decode()),
        ("empty", None),
    ]
    assert (letter.worker, letter.failed_at_ms) == ("r1", 5)


def test_a_huge_record_is_kept_truncated_so_its_dead_letter_fits_a_broker_record() -> None:
    raw = b"x" * (MAX_DEAD_LETTER_BYTES * 3)
    out = dead_letter(Rejected(record(raw), ErrorCode.TOO_LARGE, "too big"), "dlq", "r1")
    letter = DeadLetter.model_validate_json(out.value)
    assert len(base64.b64decode(letter.value_b64 or "")) == MAX_DEAD_LETTER_BYTES
    assert "truncated" in letter.reason
    assert len(out.value) < 1024 * 1024
