"""Message contracts of the four topics, and their wire codec."""

from worker.contracts.calibration import (
    CALIBRATION_KEY,
    RESERVED_KEY_PREFIX,
    CalibratedRoute,
    HalfMatrix,
    RouteCalibrationRecord,
    ShippedEstimate,
    ShippedHead,
)
from worker.contracts.codec import decode_calibration, decode_mutation, decode_query, encode
from worker.contracts.dlq import DeadLetter, Header, SourcePosition
from worker.contracts.intent import (
    CandidateScore,
    Explanation,
    NearUtterance,
    RoutedIntent,
    RouteReason,
    Timings,
)
from worker.contracts.limits import Limits
from worker.contracts.mutation import RouteDefinition, RouteMutation, ShippedEmbeddings
from worker.contracts.query import Query

__all__ = [
    "CALIBRATION_KEY",
    "RESERVED_KEY_PREFIX",
    "CalibratedRoute",
    "CandidateScore",
    "DeadLetter",
    "Explanation",
    "HalfMatrix",
    "Header",
    "Limits",
    "NearUtterance",
    "Query",
    "RouteCalibrationRecord",
    "RouteDefinition",
    "RouteMutation",
    "RouteReason",
    "RoutedIntent",
    "ShippedEmbeddings",
    "ShippedEstimate",
    "ShippedHead",
    "SourcePosition",
    "Timings",
    "decode_calibration",
    "decode_mutation",
    "decode_query",
    "encode",
]
