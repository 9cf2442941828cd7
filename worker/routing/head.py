"""A learned routing head: a small neural network over utterance embeddings, numpy only.

The head is trained on one table snapshot and remembers the digest of every route it learned. The
router only uses it for routes whose live digest still matches, so a route added, changed or
deleted after training is answered by the nearest-utterance path at once: the head never hides a
mutation. Training is deterministic (fixed seed, fixed route order), so replicas training on equal
tables get equal weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from worker.background import lower_this_thread
from worker.routing.head_training import HeadConfig, HeadLayers, softmax, train_layers
from worker.routing.table import RouteTable
from worker.routing.types import RouteVectors, Vectors

__all__ = ["HeadConfig", "HeadTrainer", "RouteHead", "train_head"]

logger = logging.getLogger(__name__)

Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RouteHead:
    """Trained weights plus the routes (name -> digest) they were trained on.

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
        if self.digests.get(route.name) != route.digest:
            return -1
        return self.columns[route.name]

    def probabilities(self, queries: Vectors) -> Probabilities:
        """Softmax over the trained routes, one row per query."""
        features = np.float32(self.scale) * np.asarray(queries, dtype=np.float32)
        if self.hidden_weights is not None and self.hidden_bias is not None:
            features = np.maximum(features @ self.hidden_weights + self.hidden_bias, np.float32(0.0))
        return softmax(features @ self.weights + self.bias)


def train_head(routes: Iterable[RouteVectors], config: HeadConfig | None = None) -> RouteHead:
    """Train a head on ``routes``: utterances pull towards their route, negatives push away."""
    config = config or HeadConfig()
    started = time.perf_counter()
    ordered = sorted(routes, key=lambda rv: rv.name)
    if not ordered:
        raise ValueError("a head needs at least one route")
    dim = ordered[0].dim
    xs = [rv.utterance_vectors for rv in ordered] + [rv.negative_vectors for rv in ordered]
    ys = [np.full(rv.utterance_vectors.shape[0], i) for i, rv in enumerate(ordered)]
    ys += [np.full(rv.negative_vectors.shape[0], i) for i, rv in enumerate(ordered)]
    x = np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, dim), np.float32)
    y = np.concatenate(ys).astype(np.int64)
    positive = np.arange(y.size) < sum(rv.utterance_vectors.shape[0] for rv in ordered)
    layers: HeadLayers = train_layers(x, y, positive, len(ordered), config)
    seconds = time.perf_counter() - started
    logger.info("trained route head: %d routes, %d examples in %.2fs", len(ordered), y.size, seconds)
    return RouteHead(
        names=tuple(rv.name for rv in ordered),
        digests={rv.name: rv.digest for rv in ordered},
        weights=layers.weights,
        bias=layers.bias,
        scale=config.scale,
        train_seconds=seconds,
        hidden_weights=layers.hidden_weights,
        hidden_bias=layers.hidden_bias,
    )


class HeadTrainer:
    """Trains a head from a table snapshot in a background thread and hands it over by reference.

    ``maybe_train(table)`` starts training when the table's digest differs from the one last
    trained (or being trained); ``on_ready`` (e.g. ``lambda head: setattr(router, "head", head)``)
    receives the new head. Errors are logged and kept in :attr:`last_error`.
    """

    def __init__(
        self, on_ready: Callable[[RouteHead], None], config: HeadConfig | None = None, *, niceness: int = 0
    ) -> None:
        #: training is background work: its thread lowers its priority by this much (0 = not)
        self.niceness = niceness
        self.config = config or HeadConfig()
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._digest: str | None = None
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None

    def maybe_train(self, table: RouteTable) -> bool:
        """Start training on ``table``'s current snapshot unless it was trained already."""
        snapshot = table.snapshot()
        with self._lock:
            if snapshot.digest == self._digest or len(snapshot) == 0:
                return False
            if self._thread is not None and self._thread.is_alive():
                return False  # one at a time; the caller asks again after this one lands
            self._digest = snapshot.digest
            routes = list(snapshot.routes())
            self._thread = threading.Thread(
                target=self._train, args=(routes, snapshot.digest), name="route-head", daemon=True
            )
            self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the training run started last (if any)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _train(self, routes: list[RouteVectors], digest: str) -> None:
        lower_this_thread(self.niceness)
        try:
            head = train_head(routes, self.config)
        except Exception as error:  # task boundary: the router keeps its previous head
            self.last_error = error
            with self._lock:
                self._digest = None
            logger.exception("route head training failed for table %s", digest[:12])
            return
        self._on_ready(head)
