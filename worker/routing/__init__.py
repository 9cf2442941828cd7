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
from worker.routing.head import HeadConfig, RouteHead, train_head
from worker.routing.index_settings import IndexSettings
from worker.routing.route_calibration import CalibrationEstimate, RouteCalibration
from worker.routing.router import Router
from worker.routing.scoring import ScoringConfig, Thresholds
from worker.routing.self_fit import SelfFitConfig, self_fit
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
    "CalibrationEstimate",
    "Candidate",
    "Decision",
    "DimensionMismatch",
    "Encoder",
    "EncoderError",
    "FingerprintMismatch",
    "FitMetrics",
    "FittedThresholds",
    "HeadConfig",
    "Hits",
    "IndexSettings",
    "InvalidRoute",
    "OffsetRegression",
    "Route",
    "RouteCalibration",
    "RouteHead",
    "RouteStore",
    "RouteTable",
    "RouteVectors",
    "Router",
    "RoutingError",
    "SchemaTooNew",
    "ScoringConfig",
    "SelfFitConfig",
    "StoreError",
    "StoredState",
    "TableSnapshot",
    "TableVersion",
    "Thresholds",
    "fit_head_weight",
    "fit_thresholds",
    "l2_normalise",
    "make_version",
    "self_fit",
    "train_head",
]
