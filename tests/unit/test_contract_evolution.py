"""Forward compatibility of the contracts: readers tolerate, name and count fields they do not know;
strict mode refuses them in queries only (issue 13, item 7)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.config import load_settings
from worker.contracts import (
    DeadLetter,
    Limits,
    Query,
    RouteCalibrationRecord,
    RouteDefinition,
    RoutedIntent,
    decode_calibration,
    decode_mutation,
    decode_query,
    encode,
)
from worker.contracts.evolution import FirstSightings, unknown_fields
from worker.errors import ConfigError, ContractError, ErrorCode
from worker.replication.errors import RouteFileError
from worker.replication.routefile import parse_routes
from worker.routing.store import SCHEMA_VERSION

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TOLERANT = Limits()
STRICT = Limits(contract_mode="strict")

#: the fields a route definition has at each store schema version (see the last test)
ROUTE_FIELDS_BY_STORE_SCHEMA = {
    2: {"name", "utterances", "negative_utterances", "threshold", "metadata", "embeddings"},
    # 3 moved utterance vectors to their own table: the same fields (converted in place, no replay)
    3: {"name", "utterances", "negative_utterances", "threshold", "metadata", "embeddings"},
}


def test_unknown_fields_are_named_by_path_nested_models_included() -> None:
    doc: dict[str, Any] = {
        "name": "a",
        "utterances": ["x"],
        "owner": "team-a",
        "metadata": {"anything": {"goes": 1}},  # free-form: nothing in it is unknown
        "embeddings": {"fingerprint": "m", "dim": 1, "utterances": "AACAPw==", "quantised": True},
    }
    assert unknown_fields(RouteDefinition, doc) == ["owner", "embeddings.quantised"]
    assert unknown_fields(RouteDefinition, {"name": "a", "utterances": ["x"], "embeddings": None}) == []
    calibration = {"routes": [{"name": "a", "colour": 1}, {"name": "b", "colour": 2}], "extra": 0}
    assert sorted(unknown_fields(RouteCalibrationRecord, calibration)) == [
        "extra",
        "routes[].colour",
        "routes[].colour",
    ]


def test_a_query_from_a_newer_writer_decodes_as_the_same_query_and_is_counted() -> None:
    newer = orjson.dumps({"id": "q", "text": "hello", "top_n": 2, "locale": "de", "tags": ["a"]})
    seen: Counter[str] = Counter()
    query = decode_query(newer, TOLERANT, seen)
    assert query == Query(id="q", text="hello", top_n=2)
    assert encode(query) == encode(Query(id="q", text="hello", top_n=2))  # nothing to pass on
    assert seen == {"locale": 1, "tags": 1}
    decode_query(newer, TOLERANT, seen)
    assert seen.total() == 4
    assert decode_query(newer, TOLERANT) == query  # counting is optional


def test_strict_mode_refuses_a_query_with_unknown_fields_with_a_code() -> None:
    with pytest.raises(ContractError) as info:
        decode_query(b'{"id": "q", "text": "hello", "locale": "de"}', STRICT)
    assert info.value.code is ErrorCode.UNKNOWN_FIELD
    assert "locale" in info.value.reason
    assert "strict" in info.value.reason
    # a query that breaks its schema anyway keeps that code
    with pytest.raises(ContractError) as schema:
        decode_query(b'{"text": "hello", "locale": "de"}', STRICT)
    assert schema.value.code is ErrorCode.SCHEMA
    assert decode_query(b'{"id": "q", "text": "hello"}', STRICT) == Query(id="q", text="hello")


def test_a_query_rejected_for_another_reason_counts_no_unknown_fields() -> None:
    seen: Counter[str] = Counter()
    with pytest.raises(ContractError):
        decode_query(b'{"id": "q", "text": "  ", "locale": "de"}', TOLERANT, seen)
    assert not seen


@pytest.mark.parametrize("limits", [TOLERANT, STRICT], ids=["tolerant", "strict"])
def test_route_mutations_are_read_tolerantly_in_every_mode(limits: Limits) -> None:
    plain = {"name": "billing", "utterances": ["where is my invoice"], "threshold": 0.4}
    newer = {**plain, "priority": 5, "embeddings": None}
    seen: Counter[str] = Counter()
    mutation = decode_mutation(b"billing", orjson.dumps(newer), limits, seen)
    assert mutation.definition == decode_mutation(b"billing", orjson.dumps(plain), limits).definition
    assert seen == {"priority": 1}


def test_the_calibration_record_counts_its_unknown_fields() -> None:
    record = {
        "fingerprint": "m",
        "dim": 2,
        "table_digest": "0" * 64,
        "routes": [],
        "head_weight": 0.0,
        "default_threshold": None,
        "fallback_threshold": None,
        "drift": "new",
    }
    seen: Counter[str] = Counter()
    decoded = decode_calibration(orjson.dumps(record), STRICT, seen)
    assert decoded.fingerprint == "m"
    assert seen == {"drift": 1}


def test_older_readers_of_intents_and_dead_letters_tolerate_newer_fields() -> None:
    intent = {
        "query_id": "q",
        "route": None,
        "score": 0.1,
        "candidates": [{"route": "a", "score": 0.1, "rank": 1}],
        "routes_version": {"0": 3},
        "model": "m",
        "worker": "w",
        "timings": {"queue_ms": 1, "embed_ms": 1, "search_ms": 1, "total_ms": 3, "decode_ms": 0},
        "confidence": "low",
    }
    assert RoutedIntent.model_validate_json(orjson.dumps(intent)).candidates[0].route == "a"
    letter = {
        "error_code": "schema",
        "reason": "r",
        "source": {"topic": "queries", "partition": 0, "offset": 1, "leader_epoch": 4},
        "key_b64": None,
        "value_b64": None,
        "headers": [],
        "worker": "w",
        "failed_at_ms": 1,
        "attempts": 1,
    }
    assert DeadLetter.model_validate_json(orjson.dumps(letter)).source.offset == 1


def test_every_object_in_the_schemas_allows_additional_properties() -> None:
    def objects(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        if isinstance(node, dict):
            if "properties" in node:
                found.append((where, node))
            for key, child in node.items():
                found += objects(child, f"{where}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                found += objects(child, f"{where}/{i}")
        return found

    paths = sorted(SCHEMAS.glob("*.schema.json"))
    assert len(paths) == 5
    for path in paths:
        found = objects(json.loads(path.read_text()), path.name)
        assert found
        for where, node in found:
            assert node.get("additionalProperties") is True, f"{where}: a newer writer's field would break it"


def test_an_admins_route_file_is_strict_about_unknown_fields() -> None:
    with pytest.raises(RouteFileError) as info:
        parse_routes([{"name": "typo", "utterances": ["x"], "treshold": 0.5}], "routes.yaml")
    assert "treshold: unknown field" in str(info.value)
    with pytest.raises(RouteFileError) as nested:
        parse_routes(
            [
                {
                    "name": "n",
                    "utterances": [],
                    "embeddings": {"fingerprint": "m", "dim": 1, "utterances": "", "x": 1},
                }
            ],
            "routes.yaml",
        )
    assert "utterances:" in str(nested.value)  # the schema error and the unknown field, both named
    assert "embeddings.x: unknown field" in str(nested.value)


def test_the_contract_mode_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().limits.contract_mode == "tolerant"
    monkeypatch.setenv("ROUTEWORKER_CONTRACT_MODE", "strict")
    assert load_settings().limits.contract_mode == "strict"
    monkeypatch.setenv("ROUTEWORKER_CONTRACT_MODE", "lenient")
    with pytest.raises(ConfigError, match="ROUTEWORKER_CONTRACT_MODE"):
        load_settings()


def test_first_sightings_report_each_path_once_and_stay_bounded() -> None:
    seen = FirstSightings(limit=3)
    assert seen.new(["b", "a", "a"]) == ["a", "b"]
    assert seen.new(["a", "c"]) == ["c"]
    assert seen.new(["d", "e"]) == []  # full: nothing more is remembered or reported


def test_a_new_route_field_comes_with_a_new_store_schema() -> None:
    # A replica stores routes without the fields its version ignores. A version that gives a new
    # route field a meaning must raise the store's schema version (and replay the log on opening an
    # older store, as the migration to 2 does): else a replica upgraded in place resumes from its
    # offsets, never re-reads the records that carried the field, and disagrees with a fresh one.
    assert set(RouteDefinition.model_fields) == ROUTE_FIELDS_BY_STORE_SCHEMA[SCHEMA_VERSION], (
        "RouteDefinition's fields changed: raise worker/routing/store.py SCHEMA_VERSION (replaying the "
        "log from an older store) and record the new fields here"
    )
