"""Every malformed input becomes one ContractError with the right code; valid ones round-trip."""

from __future__ import annotations

import base64
import contextlib

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.contracts import (
    CandidateScore,
    Limits,
    Query,
    RouteDefinition,
    RoutedIntent,
    ShippedEmbeddings,
    Timings,
    decode_mutation,
    decode_query,
    encode,
)
from worker.errors import ContractError, ErrorCode

LIMITS = Limits(max_message_bytes=1024, max_text_chars=100, max_top_n=5, max_mutation_bytes=4096)


def _code(raw: bytes | None) -> ErrorCode:
    with pytest.raises(ContractError) as info:
        decode_query(raw, LIMITS)
    assert info.value.reason  # a person can read why
    return info.value.code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", ErrorCode.INVALID_JSON),
        (b"not json at all", ErrorCode.INVALID_JSON),
        (b"", ErrorCode.INVALID_JSON),
        (b"\xff\xfe{}", ErrorCode.INVALID_UTF8),
        (b"[1, 2]", ErrorCode.NOT_AN_OBJECT),
        (b'"text"', ErrorCode.NOT_AN_OBJECT),
        (b"null", ErrorCode.NOT_AN_OBJECT),
        (None, ErrorCode.SCHEMA),
        (b'{"text": "hello"}', ErrorCode.SCHEMA),
        (b'{"id": "1"}', ErrorCode.SCHEMA),
        (b'{"id": 1, "text": "hello"}', ErrorCode.SCHEMA),
        (b'{"id": "1", "text": 5}', ErrorCode.SCHEMA),
        (b'{"id": "", "text": "hello"}', ErrorCode.SCHEMA),
        (b'{"id": "1", "text": "hello", "top_n": 0}', ErrorCode.SCHEMA),
        (b'{"id": "1", "text": "hello", "top_n": 6}', ErrorCode.SCHEMA),
        (b'{"id": "1", "text": "hello", "metadata": [1]}', ErrorCode.SCHEMA),
        (b'{"id": "1", "text": ""}', ErrorCode.EMPTY_TEXT),
        (b'{"id": "1", "text": "  \\n\\t "}', ErrorCode.EMPTY_TEXT),
        (orjson.dumps({"id": "1", "text": "x" * 101}), ErrorCode.TOO_LARGE),
        (orjson.dumps({"id": "x" * 300, "text": "hello"}), ErrorCode.TOO_LARGE),
        (orjson.dumps({"id": "1", "text": "y" * 2000}), ErrorCode.TOO_LARGE),
    ],
)
def test_malformed_query_has_code(raw: bytes | None, code: ErrorCode) -> None:
    assert _code(raw) is code


def test_size_limit_is_checked_before_parsing() -> None:
    # not even valid JSON: the size check must answer first
    assert _code(b"{" * 5000) is ErrorCode.TOO_LARGE


def test_valid_query_keeps_metadata() -> None:
    raw = orjson.dumps(
        {"id": "q-1", "text": " my card is lost ", "top_n": 2, "metadata": {"a": [1, {"b": None}]}}
    )
    query = decode_query(raw, LIMITS)
    assert query == Query(id="q-1", text=" my card is lost ", top_n=2, metadata={"a": [1, {"b": None}]})
    assert decode_query(encode(query), LIMITS) == query


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_error(raw: bytes) -> None:
    # decode either succeeds or raises ContractError; any other exception fails the test
    with contextlib.suppress(ContractError):
        decode_query(raw, LIMITS)


@given(st.text(max_size=120), st.text(max_size=20))
def test_arbitrary_text_decodes_or_is_rejected_with_code(text: str, qid: str) -> None:
    raw = orjson.dumps({"id": qid, "text": text})
    expected_error = (
        not text.strip() or len(text) > LIMITS.max_text_chars or not qid or len(orjson.dumps(text)) > 1000
    )
    if expected_error:
        with pytest.raises(ContractError) as info:
            decode_query(raw, LIMITS)
        assert info.value.code in {ErrorCode.EMPTY_TEXT, ErrorCode.TOO_LARGE, ErrorCode.SCHEMA}
    else:
        query = decode_query(raw, LIMITS)
        assert query.text == text
        assert query.id == qid


def _route(**overrides: object) -> bytes:
    doc: dict[str, object] = {"name": "billing", "utterances": ["where is my invoice"], **overrides}
    return orjson.dumps(doc)


def test_mutation_tombstone() -> None:
    mutation = decode_mutation(b"billing", None, LIMITS)
    assert mutation.is_tombstone
    assert mutation.name == "billing"


@pytest.mark.parametrize(
    ("key", "raw", "code"),
    [
        (None, _route(), ErrorCode.MISSING_KEY),
        (b"", _route(), ErrorCode.MISSING_KEY),
        (b"\xff", _route(), ErrorCode.INVALID_UTF8),
        (b"other", _route(), ErrorCode.KEY_MISMATCH),
        (b"billing", b"{]", ErrorCode.INVALID_JSON),
        (b"billing", b"[]", ErrorCode.NOT_AN_OBJECT),
        (b"billing", _route(utterances=[]), ErrorCode.SCHEMA),
        (b"billing", _route(utterances=["ok", " "]), ErrorCode.SCHEMA),
        (b"billing", _route(threshold=1.5), ErrorCode.SCHEMA),
        (b"billing", _route(metadata={"x": "y" * 5000}), ErrorCode.TOO_LARGE),
        (
            b"billing",
            _route(embeddings={"fingerprint": "m", "dim": 4, "utterances": "AAAA"}),
            ErrorCode.SCHEMA,
        ),
        (b"billing", _route(embeddings={"fingerprint": "m", "dim": 4, "utterances": "!!"}), ErrorCode.SCHEMA),
    ],
)
def test_malformed_mutation_has_code(key: bytes | None, raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ContractError) as info:
        decode_mutation(key, raw, LIMITS)
    assert info.value.code is code


def test_shipped_embeddings_round_trip() -> None:
    vectors = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    shipped = ShippedEmbeddings(
        fingerprint="m@fp32:abc", dim=4, utterances=ShippedEmbeddings.encode_matrix(vectors)
    )
    definition = RouteDefinition(name="billing", utterances=["a", "b"], embeddings=shipped)
    decoded = decode_mutation(b"billing", encode(definition), Limits())
    assert decoded.definition is not None
    assert decoded.definition.embeddings is not None
    assert np.array_equal(decoded.definition.embeddings.matrix("utterances", 2), vectors)
    assert base64.b64decode(shipped.utterances) == vectors.astype("<f4").tobytes()


def test_routed_intent_serialises_null_route() -> None:
    intent = RoutedIntent(
        query_id="q",
        route=None,
        score=0.1,
        candidates=[CandidateScore(route="billing", score=0.1)],
        routes_version={"0": 12},
        model="m",
        worker="w",
        timings=Timings(queue_ms=1, embed_ms=2, search_ms=0.5, total_ms=4),
        metadata=None,
    )
    doc = orjson.loads(encode(intent))
    assert doc["route"] is None
    assert RoutedIntent.model_validate(doc) == intent
