"""What a router serves a route table with: the learned head, its weight and the thresholds.

A calibration is derived once from the routes (:mod:`worker.routing.self_fit`, no labels, or
:mod:`worker.routing.fitting` on labelled examples), by the publisher, and shipped to the replicas
through the mutation log, so every replica serves byte-identical weights and thresholds whatever
its CPU. It names the routes it was made for by their training digest: a route added or changed
since is answered through the nearest-utterance path with ``fallback_threshold`` (also part of the
calibration, so deterministic) until a new calibration covers it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from worker.routing.head import RouteHead
from worker.routing.types import RouteVectors

#: a threshold that accepts every score (JSON has no infinity: shipped as null)
ACCEPT_ALL = float("-inf")


@dataclass(frozen=True)
class CalibrationEstimate:
    """How a calibration did on answers it was not fitted on (cross-validated)."""

    #: what was held out: "route utterances" (self-fit) or "labelled examples" (fit)
    held_out: str
    examples: int
    #: share answered right (a "no match" example is right when refused)
    accuracy: float
    #: among in-scope examples, the share routed to their route
    in_scope_accuracy: float
    #: among in-scope examples, the share refused ("no match"); None when not measured
    refused: float | None = None
    #: among "no match" examples, the share refused (None without any)
    no_match_recall: float | None = None
    #: in-scope top-1 accuracy before thresholds
    top1: float | None = None
    #: top-1 accuracy of the nearest utterance on the same examples (the baseline)
    nearest_utterance: float | None = None
    #: cross-validation folds the figures come from
    folds: int = 0


@dataclass(frozen=True, eq=False)
class RouteCalibration:
    """Head, head weight and thresholds for the routes ``routes`` names (name -> training digest).

    Scores: a covered route scores ``(1 - head_weight) * knn + head_weight * p_head``; any other
    route its kNN score. Thresholds: a covered route uses ``per_route`` or its own definition's
    threshold or ``default_threshold``; any other route its own threshold or
    ``fallback_threshold`` (calibrated for kNN scores).
    """

    fingerprint: str
    routes: Mapping[str, str]
    head: RouteHead | None
    head_weight: float
    default_threshold: float
    fallback_threshold: float
    margin: float = 0.0
    per_route: Mapping[str, float] = field(default_factory=dict)
    #: how it was made, for people: "self-fit ..." or "fit on N labelled examples"
    method: str = ""
    estimate: CalibrationEstimate | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.head_weight <= 1.0:
            raise ValueError(f"head_weight must be within [0, 1], got {self.head_weight}")
        if self.head is not None and dict(self.head.digests) != dict(self.routes):
            raise ValueError("the head must be trained on exactly the calibrated routes")

    def covers(self, route: RouteVectors) -> bool:
        """Whether this calibration was made for ``route`` as it is now."""
        return self.routes.get(route.name) == route.training_digest

    @property
    def digest(self) -> str:
        """The route table it was made for: sha256 over the sorted (name, training digest) pairs."""
        return calibrated_digest(self.routes.items())

    def threshold(self, route: RouteVectors) -> float:
        """The threshold the winner ``route`` must reach under this calibration."""
        if self.covers(route):
            if route.name in self.per_route:
                return float(self.per_route[route.name])
            if route.route.threshold is not None:
                return float(route.route.threshold)
            return self.default_threshold
        if route.route.threshold is not None:
            return float(route.route.threshold)
        return self.fallback_threshold


def calibrated_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(route name, training digest)`` pairs."""
    sha = hashlib.sha256()
    for name, digest in sorted(pairs):
        for part in (name.encode(), digest.encode()):
            sha.update(len(part).to_bytes(8, "little"))
            sha.update(part)
    return sha.hexdigest()


def half_precision(head: RouteHead) -> RouteHead:
    """``head`` with every weight rounded to float16, as it is shipped (and then served)."""

    def rounded(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array.astype(np.float16).astype(np.float32)

    weights, bias = rounded(head.weights), rounded(head.bias)
    assert weights is not None
    assert bias is not None
    return RouteHead(
        names=head.names,
        digests=dict(head.digests),
        weights=weights,
        bias=bias,
        scale=head.scale,
        train_seconds=head.train_seconds,
        hidden_weights=rounded(head.hidden_weights),
        hidden_bias=rounded(head.hidden_bias),
    )
