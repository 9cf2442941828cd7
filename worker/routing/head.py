"""A learned routing head: a small neural network over utterance embeddings, numpy only.

The head is trained on a set of routes and remembers the training digest (name, utterances,
negatives, model) of every route it learned. The router only uses it for routes whose live training
digest still matches, so a route added, changed or deleted after training is answered by the
nearest-utterance path at once: the head never hides a mutation. Training is deterministic on one
machine (fixed seed, fixed route order); across CPUs it is not bit-reproducible (BLAS kernels round
differently), which is why replicas never train one: a head is made once and shipped in a
:class:`~worker.routing.route_calibration.RouteCalibration`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from worker.routing.head_training import HeadConfig, HeadLayers, softmax, train_layers
from worker.routing.types import RouteVectors, Vectors

__all__ = ["HeadConfig", "RouteHead", "train_head"]

logger = logging.getLogger(__name__)

Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RouteHead:
    """Trained weights plus the routes (name -> training digest) they were trained on.

    ``logits = relu(scale * x @ hidden_weights + hidden_bias) @ weights + bias``; without a hidden
    layer ``logits = scale * x @ weights + bias``.
    """

    names: tuple[str, ...]
    digests: Mapping[str, str]
    weights: npt.NDArray[np.float32]  # (hidden or dim, routes)
    bias: npt.NDArray[np.float32]  # (routes,)
    scale: float
    train_seconds: float = 0.0
    hidden_weights: npt.NDArray[np.float32] | None = None  # (dim, hidden)
    hidden_bias: npt.NDArray[np.float32] | None = None  # (hidden,)
    columns: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", {name: i for i, name in enumerate(self.names)})

    def column(self, route: RouteVectors) -> int:
        """The head's column for ``route``, or -1 when the head never saw this exact route."""
        if self.digests.get(route.name) != route.training_digest:
            return -1
        return self.columns[route.name]

    def probabilities(self, queries: Vectors) -> Probabilities:
        """Softmax over the trained routes, one row per query."""
        features = np.float32(self.scale) * np.asarray(queries, dtype=np.float32)
        if self.hidden_weights is not None and self.hidden_bias is not None:
            features = np.maximum(features @ self.hidden_weights + self.hidden_bias, np.float32(0.0))
        return softmax(features @ self.weights + self.bias)


def train_head(
    routes: Iterable[RouteVectors],
    config: HeadConfig | None = None,
    examples: tuple[Vectors, Sequence[str | None]] | None = None,
) -> RouteHead:
    """Train a head on ``routes``: utterances pull towards their route, negatives push away.

    ``examples`` (vectors, labels) are labelled queries trained like utterances of the route they
    name; rows labelled None ("no match") or with a route not in ``routes`` are left out.
    """
    config = config or HeadConfig()
    started = time.perf_counter()
    ordered = sorted(routes, key=lambda rv: rv.name)
    if not ordered:
        raise ValueError("a head needs at least one route")
    dim = ordered[0].dim
    xs = [rv.utterance_vectors for rv in ordered]
    ys = [np.full(rv.utterance_vectors.shape[0], i) for i, rv in enumerate(ordered)]
    if examples is not None:
        column = {rv.name: i for i, rv in enumerate(ordered)}
        codes = np.array([column.get(label, -1) if label is not None else -1 for label in examples[1]])
        known = np.flatnonzero(codes >= 0)
        xs.append(np.asarray(examples[0], dtype=np.float32).reshape(-1, dim)[known])
        ys.append(codes[known])
    positives = sum(x.shape[0] for x in xs)
    xs += [rv.negative_vectors for rv in ordered]
    ys += [np.full(rv.negative_vectors.shape[0], i) for i, rv in enumerate(ordered)]
    x = np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, dim), np.float32)
    y = np.concatenate(ys).astype(np.int64)
    positive = np.arange(y.size) < positives
    layers: HeadLayers = train_layers(x, y, positive, len(ordered), config)
    seconds = time.perf_counter() - started
    logger.info("trained route head: %d routes, %d examples in %.2fs", len(ordered), y.size, seconds)
    return RouteHead(
        names=tuple(rv.name for rv in ordered),
        digests={rv.name: rv.training_digest for rv in ordered},
        weights=layers.weights,
        bias=layers.bias,
        scale=config.scale,
        train_seconds=seconds,
        hidden_weights=layers.hidden_weights,
        hidden_bias=layers.hidden_bias,
    )
