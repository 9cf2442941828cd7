"""Calibration records: the engine's :class:`RouteCalibration` to the wire and back.

The publisher turns a calibration into a record (weights rounded to float16, exactly the values it
serves with); a replica turns the record back into a calibration in its background thread. Both
directions are pure functions of their input, so every replica that reads the same record holds
the same bytes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from worker.contracts import (
    CALIBRATION_KEY,
    CalibratedRoute,
    HalfMatrix,
    Limits,
    RouteCalibrationRecord,
    ShippedEstimate,
    ShippedHead,
    decode_calibration,
    encode,
)
from worker.errors import ContractError, ErrorCode
from worker.replication.stats import ReplicaStats
from worker.routing import CalibrationEstimate, RouteCalibration, RouteHead
from worker.routing.route_calibration import ACCEPT_ALL, calibrated_digest, half_precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CalibrationChange:
    """The latest calibration record of a run of log records: its value (None: withdrawn)."""

    value: bytes | None
    record: RouteCalibrationRecord | None


def calibration_record(calibration: RouteCalibration, dim: int) -> RouteCalibrationRecord:
    """The wire form of ``calibration`` (its head is rounded to float16 if it was not already)."""
    names = sorted(calibration.routes)
    head = None
    if calibration.head is not None:
        served = half_precision(calibration.head)
        if served.names != tuple(names):
            raise ValueError("the head's columns must be the calibrated routes in name order")
        head = ShippedHead(
            scale=served.scale,
            hidden_weights=None if served.hidden_weights is None else HalfMatrix.of(served.hidden_weights),
            hidden_bias=None if served.hidden_bias is None else HalfMatrix.of(served.hidden_bias),
            weights=HalfMatrix.of(served.weights),
            bias=HalfMatrix.of(served.bias),
        )
    estimate = calibration.estimate
    return RouteCalibrationRecord(
        fingerprint=calibration.fingerprint,
        dim=dim,
        table_digest=calibration.digest,
        routes=[
            CalibratedRoute(
                name=name,
                training_digest=calibration.routes[name],
                threshold=_finite(calibration.per_route.get(name)),
            )
            for name in names
        ],
        head=head,
        head_weight=calibration.head_weight,
        default_threshold=_finite(calibration.default_threshold),
        fallback_threshold=_finite(calibration.fallback_threshold),
        margin=calibration.margin,
        method=calibration.method[:500],
        estimate=None if estimate is None else ShippedEstimate(**_fields(estimate)),
    )


def calibration_of(record: RouteCalibrationRecord) -> RouteCalibration:
    """The calibration a replica serves from ``record``; :class:`ContractError` if inconsistent."""
    routes = {route.name: route.training_digest for route in record.routes}
    if calibrated_digest(routes.items()) != record.table_digest:
        raise ContractError(ErrorCode.SCHEMA, "calibration: table_digest does not match its routes")
    head = None
    if record.head is not None:
        shipped = record.head
        head = RouteHead(
            names=tuple(route.name for route in record.routes),
            digests=routes,
            weights=shipped.weights.array(),
            bias=shipped.bias.array()[0],
            scale=shipped.scale,
            hidden_weights=None if shipped.hidden_weights is None else shipped.hidden_weights.array(),
            hidden_bias=None if shipped.hidden_bias is None else shipped.hidden_bias.array()[0],
        )
    estimate = record.estimate
    return RouteCalibration(
        fingerprint=record.fingerprint,
        routes=routes,
        head=head,
        head_weight=record.head_weight,
        default_threshold=_threshold(record.default_threshold),
        fallback_threshold=_threshold(record.fallback_threshold),
        margin=record.margin,
        per_route={r.name: r.threshold for r in record.routes if r.threshold is not None},
        method=record.method,
        estimate=None if estimate is None else CalibrationEstimate(**estimate.model_dump()),
    )


def calibration_mutation(record: RouteCalibrationRecord) -> tuple[bytes, bytes]:
    """Key and value of the calibration record on the mutation log."""
    return CALIBRATION_KEY.encode("utf-8"), encode(record)


def _finite(value: float | None) -> float | None:
    # JSON has no infinity: "accept every score" travels as null
    return None if value is None or not math.isfinite(value) else float(value)


def _threshold(value: float | None) -> float:
    return ACCEPT_ALL if value is None else float(value)


def _fields(estimate: CalibrationEstimate) -> dict[str, object]:
    return {
        name: (float(value) if isinstance(value, float | np.floating) else value)
        for name, value in asdict(estimate).items()
    }


def served_calibration(
    record: RouteCalibrationRecord | None, fingerprint: str, dim: int
) -> RouteCalibration | None:
    """What a replica of model ``fingerprint`` serves from the latest calibration record: the
    calibration, or None when there is none or it was made with another model's vectors.

    Raises :class:`ContractError` when the record is inconsistent (the previous one stays).
    """
    if record is None or record.fingerprint != fingerprint:
        return None
    if record.dim != dim:
        raise ContractError(
            ErrorCode.EMBEDDING_SHAPE, f"calibration for vectors of dimension {record.dim}, model has {dim}"
        )
    return calibration_of(record)


@dataclass(frozen=True, slots=True)
class CalibrationInstall:
    """A calibration record to store (``value``; None forgets it) and what to serve from it."""

    value: bytes | None
    calibration: RouteCalibration | None


@dataclass(frozen=True, slots=True)
class CalibrationContext:
    """What a replica decides a calibration record's fate by: its model, its limits, its counters."""

    fingerprint: str
    dim: int
    limits: Limits
    stats: ReplicaStats


def installable(change: CalibrationChange, context: CalibrationContext) -> CalibrationInstall | None:
    """What a replica stores and serves for the latest calibration record of a batch; None when the
    record is inconsistent (skipped and counted: the calibration in service stays)."""
    try:
        calibration = served_calibration(change.record, context.fingerprint, context.dim)
    except ContractError as error:
        context.stats.skipped_malformed += 1
        logger.warning("skipped a calibration record: %s", error)
        return None
    if change.record is not None and calibration is None:
        context.stats.calibrations_of_other_models += 1
        logger.warning(
            "the calibration in the log was made with model %s, not %s: serving none",
            change.record.fingerprint,
            context.fingerprint,
        )
    elif calibration is not None:
        context.stats.calibrations += 1
    return CalibrationInstall(change.value, calibration)


def stored_calibration(value: bytes, context: CalibrationContext) -> CalibrationInstall | None:
    """The same decision for the record a replica's store kept (valid when it was read)."""
    try:
        record = decode_calibration(value, context.limits)
    except ContractError as error:
        logger.warning("stored calibration record is unreadable (%s): serving none", error)
        return CalibrationInstall(value, None)
    return installable(CalibrationChange(value, record), context)
