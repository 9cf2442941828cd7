"""Folding mutation records: last valid value per key, tombstones delete, malformed records skipped."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
from log_records import Record

from worker.contracts import Limits, RouteDefinition, encode
from worker.replication import fold
from worker.replication.fold import FoldedMutations
from worker.replication.vectors import (
    attach_embeddings,
    route_of,
    shipped_unchecked,
    shipped_vectors,
    unit_faults,
)
from worker.routing import RouteVectors, l2_normalise

LIMITS = Limits()


def upsert(partition: int, offset: int, name: str, *utterances: str) -> Record:
    definition = RouteDefinition(name=name, utterances=list(utterances or ("hello",)))
    return Record(partition, offset, name.encode(), encode(definition))


def test_the_last_value_per_key_wins_and_offsets_point_past_the_last_record() -> None:
    folded = fold(
        [upsert(0, 0, "a", "one"), upsert(0, 1, "b"), upsert(0, 2, "a", "two"), upsert(1, 7, "c")], LIMITS
    )
    assert {name: d.utterances if d else None for name, d in folded.changes.items()} == {
        "a": ["two"],
        "b": ["hello"],
        "c": ["hello"],
    }
    assert folded.offsets == {0: 3, 1: 8}
    assert folded.records == 4


def test_a_tombstone_deletes_and_a_later_record_re_adds() -> None:
    deleted = fold([upsert(0, 0, "a"), Record(0, 1, b"a", None)], LIMITS)
    assert deleted.changes == {"a": None}
    readded = fold([upsert(0, 0, "a"), Record(0, 1, b"a", None), upsert(0, 2, "a", "back")], LIMITS)
    definition = readded.changes["a"]
    assert definition is not None
    assert definition.utterances == ["back"]


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (None, b"{}", "missing_key"),
        (b"a", b"\xff\xfe", "invalid_utf8"),
        (b"a", b"not json", "invalid_json"),
        (b"a", b"[1]", "not_object"),
        (b"a", b'{"name": "a", "utterances": []}', "schema"),
        (b"a", b'{"name": "b", "utterances": ["x"]}', "key_mismatch"),
    ],
)
def test_a_malformed_record_is_skipped_with_its_position(
    key: bytes | None, value: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    folded = fold([upsert(2, 4, "a", "valid"), Record(2, 5, key, value)], LIMITS)
    (skipped,) = folded.skipped
    if key is None:
        # no key names no route: nothing changes
        assert folded.changes["a"] is not None
        assert skipped.route is None
    else:
        # the route is absent, as on a replica that replays after compaction kept only this record
        assert folded.changes["a"] is None
        assert skipped.route == "a"
        assert fold([Record(2, 5, key, value)], LIMITS).changes == {"a": None}
    assert (skipped.partition, skipped.offset) == (2, 5)
    assert skipped.code == code
    assert skipped.reason.startswith(code)
    assert folded.offsets == {2: 6}  # consumed: replay never stops or loops on it
    assert "route-mutations[2] offset 5" in caplog.text


def test_an_oversized_record_is_skipped() -> None:
    folded = fold([upsert(0, 0, "a", "x" * 2000)], Limits(max_mutation_bytes=1024))
    assert folded.changes == {"a": None}
    assert folded.skipped[0].reason.startswith("too_large")


def test_merging_keeps_log_order() -> None:
    first = fold([upsert(0, 0, "a", "one"), upsert(0, 1, "b")], LIMITS)
    later = fold([Record(0, 2, b"b", None), upsert(0, 3, "a", "two")], LIMITS)
    first.merge(later)
    assert list(first.changes) == ["b", "a"]
    assert first.changes["b"] is None
    assert first.offsets == {0: 4}
    assert first.records == 4


def _shipped(name: str, fingerprint: str, vectors: np.ndarray) -> RouteDefinition:
    definition = RouteDefinition(name=name, utterances=[f"u{i}" for i in range(vectors.shape[0])])
    rv = RouteVectors(route_of(definition), vectors, np.zeros((0, vectors.shape[1]), np.float32), fingerprint)
    return attach_embeddings(definition, rv)


def test_resolved_vectors_follow_their_record_and_bad_vectors_count_as_malformed() -> None:
    good = l2_normalise(np.random.default_rng(1).normal(size=(2, 8)))
    ok = _shipped("a", "m:1", good)
    not_unit = _shipped("a", "m:1", good * 3)
    folded = fold([Record(0, 0, b"a", encode(ok))], LIMITS, lambda d: shipped_vectors(d, "m:1", 8))
    assert folded.changes["a"] == ok
    assert np.array_equal(folded.vectors["a"].utterance_vectors, good)
    records = [Record(0, 0, b"a", encode(ok)), Record(0, 1, b"a", encode(not_unit))]
    folded = fold(records, LIMITS, lambda d: shipped_vectors(d, "m:1", 8))
    assert folded.changes["a"] is None  # the later record is unusable: the route is absent
    assert "a" not in folded.vectors
    assert folded.skipped[0].code == "embedding_shape"
    assert folded.positions["a"] == (0, 1)


def test_a_later_record_without_vectors_drops_the_earlier_resolved_ones() -> None:
    good = l2_normalise(np.random.default_rng(2).normal(size=(1, 8)))
    records = [Record(0, 0, b"a", encode(_shipped("a", "m:1", good))), upsert(0, 1, "a", "plain")]
    folded: FoldedMutations = fold(records, LIMITS, lambda d: shipped_vectors(d, "m:1", 8))
    assert "a" not in folded.vectors


def test_folding_without_yielding_the_gil_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [upsert(0, i, f"r{i % 5}", f"text {i}") for i in range(12)]
    with_yields = fold(records, LIMITS)
    naps: list[float] = []
    monkeypatch.setattr(
        importlib.import_module("worker.replication.fold"), "time", SimpleNamespace(sleep=naps.append)
    )
    without = fold(records, LIMITS, yield_gil=False)
    assert naps == []
    assert without.changes == with_yields.changes
    assert without.offsets == with_yields.offsets
    fold(records, LIMITS)
    assert naps  # the default still lets searching threads in


def test_shipped_vectors_are_the_arrays_the_validator_decoded() -> None:
    vectors = l2_normalise(np.random.default_rng(2).normal(size=(2, 8)))
    definition = RouteDefinition(name="billing", utterances=["pay", "bill"])
    shipped = attach_embeddings(
        definition, RouteVectors(route_of(definition), vectors, np.zeros((0, 8)), "m")
    )
    decoded = RouteDefinition.model_validate_json(encode(shipped))
    assert decoded.embeddings is not None
    first = decoded.embeddings.matrix("utterances", 2)
    resolved = shipped_vectors(decoded, "m", 8)
    assert resolved is not None
    assert resolved.utterance_vectors is first or np.shares_memory(resolved.utterance_vectors, first)
    assert np.array_equal(resolved.utterance_vectors, vectors)
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="expected 3x8"):
        decoded.embeddings.matrix("utterances", 3)


def test_a_route_from_a_newer_writer_is_applied_without_its_unknown_fields_in_any_mode() -> None:
    newer = Record(0, 0, b"a", b'{"name": "a", "utterances": ["x"], "priority": 3, "owner": {"team": "t"}}')
    same = Record(0, 0, b"a", b'{"name": "a", "utterances": ["x"]}')
    for limits in (LIMITS, Limits(contract_mode="strict")):  # the mode governs queries only
        folded = fold([newer], limits)
        assert folded.skipped == []
        assert folded.changes == fold([same], limits).changes  # the same definition, field left out
        definition = folded.changes["a"]
        assert definition is not None
        assert "priority" not in encode(definition).decode()
        assert folded.unknown_fields == {"priority": 1, "owner": 1}
    later = fold([Record(1, 0, b"b", b'{"name": "b", "utterances": ["y"], "priority": 1}')], LIMITS)
    folded.merge(later)
    assert folded.unknown_fields == {"priority": 2, "owner": 1}


def test_unknown_fields_of_a_record_that_is_skipped_are_not_counted() -> None:
    folded = fold([Record(0, 0, b"a", b'{"name": "b", "utterances": ["x"], "priority": 3}')], LIMITS)
    assert [s.code for s in folded.skipped] == ["key_mismatch"]
    assert not folded.unknown_fields


def test_a_batch_checked_at_once_folds_as_records_checked_one_by_one() -> None:
    rng = np.random.default_rng(4)
    good = l2_normalise(rng.normal(size=(2, 8)))
    other = l2_normalise(rng.normal(size=(3, 8)))
    records = [
        Record(0, 0, b"a", encode(_shipped("a", "m:1", good * 3))),  # bad, then replaced
        Record(0, 1, b"b", encode(_shipped("b", "m:1", good))),
        Record(0, 2, b"a", encode(_shipped("a", "m:1", other))),
        Record(0, 3, b"c", b"not json"),
        Record(0, 4, b"d", encode(_shipped("d", "m:1", other))),
        Record(0, 5, b"d", encode(_shipped("d", "m:1", other * 0.5))),  # bad, last for d
        upsert(0, 6, "e", "plain"),
        Record(0, 7, b"f", encode(_shipped("f", "m:9", good))),  # another model: not resolved
        Record(0, 8, b"b", None),
    ]
    one_by_one = fold(records, LIMITS, lambda d: shipped_vectors(d, "m:1", 8))
    checked = fold(
        records, LIMITS, lambda d: shipped_unchecked(d, "m:1", 8), check=unit_faults, yield_gil=False
    )
    live = fold(records, LIMITS, lambda d: shipped_unchecked(d, "m:1", 8), check=unit_faults)
    for folded in (checked, live):
        assert list(folded.changes.items()) == list(one_by_one.changes.items())
        assert folded.vectors.keys() == one_by_one.vectors.keys() == {"a"}
        assert np.array_equal(folded.vectors["a"].utterance_vectors, other)
        assert folded.skipped == one_by_one.skipped
        assert folded.positions == one_by_one.positions
        assert folded.offsets == one_by_one.offsets == {0: 9}
        assert folded.records == one_by_one.records == 9
    assert [(s.offset, s.code) for s in checked.skipped] == [
        (0, "embedding_shape"),
        (3, "invalid_json"),
        (5, "embedding_shape"),
    ]
    assert checked.changes["d"] is None
