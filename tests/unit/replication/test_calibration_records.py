"""Calibration records: made once, shipped as bytes, decoded identically, skipped by older readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from log_records import Record
from pydantic import ValidationError

from worker.contracts import (
    CALIBRATION_KEY,
    HalfMatrix,
    Limits,
    RouteCalibrationRecord,
    RouteDefinition,
    decode_calibration,
    decode_mutation,
    encode,
)
from worker.errors import ContractError
from worker.replication import calibration_of, calibration_record, fold
from worker.replication.calibrations import calibration_mutation, served_calibration
from worker.routing import Route, RouteVectors, l2_normalise, self_fit
from worker.routing.head import HeadConfig
from worker.routing.self_fit import SelfFitConfig

DIM = 16
FP = "synthetic"
LIMITS = Limits()


def _routes(seed: int = 0, count: int = 6) -> list[RouteVectors]:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(count, DIM)))
    return [
        RouteVectors(
            Route(f"r{i}", tuple(f"r{i} says {j}" for j in range(8))),
            l2_normalise(c + 0.8 * rng.normal(size=(8, DIM)) / np.sqrt(DIM)),
            np.zeros((0, DIM), np.float32),
            FP,
        )
        for i, c in enumerate(centres)
    ]


@pytest.fixture(scope="module")
def record() -> RouteCalibrationRecord:
    calibration = self_fit(_routes(), config=SelfFitConfig(head=HeadConfig(hidden=8, epochs=3)))
    return calibration_record(calibration, DIM)


def test_a_record_decodes_to_the_calibration_it_was_made_from(record: RouteCalibrationRecord) -> None:
    decoded = calibration_of(decode_calibration(encode(record), LIMITS))
    again = calibration_record(decoded, DIM)
    assert encode(again) == encode(record)  # weights, thresholds and routes survive byte for byte
    assert decoded.head is not None
    assert decoded.head.names == tuple(route.name for route in record.routes)
    assert all(decoded.covers(rv) for rv in _routes())


def test_two_readers_of_the_same_bytes_hold_identical_weights(record: RouteCalibrationRecord) -> None:
    raw = encode(record)
    a = calibration_of(decode_calibration(raw, LIMITS))
    b = calibration_of(decode_calibration(bytes(raw), LIMITS))
    assert a.head is not None
    assert b.head is not None
    for left, right in ((a.head.weights, b.head.weights), (a.head.hidden_weights, b.head.hidden_weights)):
        assert left is not None
        assert right is not None
        assert left.tobytes() == right.tobytes()


def test_a_record_of_another_model_serves_nothing(record: RouteCalibrationRecord) -> None:
    assert served_calibration(record, "another-model", DIM) is None
    assert served_calibration(None, FP, DIM) is None
    with pytest.raises(ContractError, match="dimension"):
        served_calibration(record, FP, DIM + 1)


def test_a_record_whose_digest_lies_is_refused(record: RouteCalibrationRecord) -> None:
    forged = record.model_copy(update={"table_digest": "0" * 64})
    with pytest.raises(ContractError, match="table_digest"):
        calibration_of(forged)


def test_inconsistent_shapes_break_the_schema(record: RouteCalibrationRecord) -> None:
    doc = json.loads(encode(record))
    doc["routes"] = doc["routes"][:-1]
    with pytest.raises(ValidationError, match="outputs"):
        RouteCalibrationRecord.model_validate(doc)
    doc = json.loads(encode(record))
    doc["routes"] = list(reversed(doc["routes"]))
    with pytest.raises(ValidationError, match="sorted"):
        RouteCalibrationRecord.model_validate(doc)
    with pytest.raises(ValidationError, match="bytes"):
        HalfMatrix(rows=2, columns=2, float16="AAAA")


def test_readers_ignore_fields_they_do_not_know(record: RouteCalibrationRecord) -> None:
    doc = json.loads(encode(record))
    doc["added_by_a_newer_publisher"] = {"anything": 1}
    assert decode_calibration(json.dumps(doc).encode(), LIMITS) == record


def test_fold_keeps_the_last_calibration_and_a_tombstone_withdraws_it(record: RouteCalibrationRecord) -> None:
    key, value = calibration_mutation(record)
    route = RouteDefinition(name="r0", utterances=["hello"])
    folded = fold([Record(0, 0, key, value), Record(0, 1, b"r0", encode(route))], LIMITS)
    assert folded.calibration is not None
    assert folded.calibration.record == record
    assert list(folded.changes) == ["r0"]  # the calibration is not a route
    withdrawn = fold([Record(0, 0, key, value), Record(0, 1, key, None)], LIMITS)
    assert withdrawn.calibration is not None
    assert withdrawn.calibration.record is None
    assert withdrawn.changes == {}


def test_fold_skips_record_types_it_does_not_know() -> None:
    folded = fold([Record(0, 0, b"__routeworker__/something-newer", b"{}")], LIMITS)
    assert folded.changes == {}
    assert folded.calibration is None
    assert len(folded.skipped) == 1
    assert "unknown to this version" in folded.skipped[0].reason


def test_an_older_reader_skips_the_calibration_as_a_malformed_route(record: RouteCalibrationRecord) -> None:
    # what a replica that predates calibration records does with it: a schema error, skipped and counted
    key, value = calibration_mutation(record)
    with pytest.raises(ContractError, match="schema"):
        decode_mutation(key, value, LIMITS)


def test_route_names_cannot_take_the_reserved_key() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        RouteDefinition(name=CALIBRATION_KEY, utterances=["hi"])
