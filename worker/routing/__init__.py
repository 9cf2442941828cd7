"""The routing engine: route store, searchable route table, router, learned head, threshold fitting.

Pure: it knows nothing of Kafka, of the settings or of the embedding model (it routes vectors; the
:class:`Encoder` protocol says what it needs of whatever makes them). Everything here is synchronous.
"""

from worker.routing.errors import (
    DimensionMismatch,
    EncoderError,
    FingerprintMismatch,
    InvalidRoute,
    OffsetRegression,
    RoutingError,
    SchemaTooNew,
    StoreError,
)
from worker.routing.fitting import FitMetrics, FittedThresholds, fit_head_weight, fit_thresholds
from worker.routing.head import HeadConfig, HeadTrainer, RouteHead, train_head
from worker.routing.index_settings import IndexSettings
from worker.routing.router import Router
from worker.routing.scoring import ScoringConfig, Thresholds
from worker.routing.snapshot import Hits, TableSnapshot
from worker.routing.store import RouteStore, StoredState
from worker.routing.table import RouteTable
from worker.routing.types import (
    Candidate,
    Decision,
    Encoder,
    Route,
    RouteVectors,
    TableVersion,
    l2_normalise,
    make_version,
)

__all__ = [
    "Candidate",
    "Decision",
    "DimensionMismatch",
    "Encoder",
    "EncoderError",
    "FingerprintMismatch",
    "FitMetrics",
    "FittedThresholds",
    "HeadConfig",
    "HeadTrainer",
    "Hits",
    "IndexSettings",
    "InvalidRoute",
    "OffsetRegression",
    "Route",
    "RouteHead",
    "RouteStore",
    "RouteTable",
    "RouteVectors",
    "Router",
    "RoutingError",
    "SchemaTooNew",
    "ScoringConfig",
    "StoreError",
    "StoredState",
    "TableSnapshot",
    "TableVersion",
    "Thresholds",
    "fit_head_weight",
    "fit_thresholds",
    "l2_normalise",
    "make_version",
    "train_head",
]
