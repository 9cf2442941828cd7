"""Message contracts of the four topics, and their wire codec."""

from worker.contracts.codec import decode_mutation, decode_query, encode
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
    "CandidateScore",
    "DeadLetter",
    "Explanation",
    "Header",
    "Limits",
    "NearUtterance",
    "Query",
    "RouteDefinition",
    "RouteMutation",
    "RouteReason",
    "RoutedIntent",
    "ShippedEmbeddings",
    "SourcePosition",
    "Timings",
    "decode_mutation",
    "decode_query",
    "encode",
]
