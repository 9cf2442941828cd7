"""A learned routing head: softmax regression over utterance embeddings, numpy only.

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

from worker.routing.table import RouteTable
from worker.routing.types import RouteVectors, Vectors

logger = logging.getLogger(__name__)

Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True)
class HeadConfig:
    """Training settings. Defaults were chosen on the fit splits (never test) of Banking77/CLINC150
    (CLINC150 val in-scope, head alone: scale 20/6 epochs/lr 0.01 0.952, 16/12/0.005 0.956, 32/6/0.01
    0.950; more epochs at a high rate over-fit the route utterances)."""

    #: logits are ``scale * x @ W + b``; cosine-like inputs need a large scale to become confident
    scale: float = 16.0
    epochs: int = 12
    batch_size: int = 256
    learning_rate: float = 0.005
    l2: float = 1e-4
    seed: int = 0


@dataclass(frozen=True, eq=False)
class RouteHead:
    """Trained weights plus the routes (name -> digest) they were trained on."""

    names: tuple[str, ...]
    digests: Mapping[str, str]
    weights: npt.NDArray[np.float32]  # (dim, routes)
    bias: npt.NDArray[np.float32]  # (routes,)
    scale: float
    train_seconds: float = 0.0
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
        logits = self.scale * (np.asarray(queries, dtype=np.float32) @ self.weights) + self.bias
        return _softmax(logits.astype(np.float64))


def _softmax(logits: npt.NDArray[np.float64]) -> Probabilities:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: Probabilities = exp / exp.sum(axis=1, keepdims=True)
    return out


def train_head(routes: Iterable[RouteVectors], config: HeadConfig | None = None) -> RouteHead:
    """Train a head on ``routes``: utterances pull towards their route, negatives push away.

    Mini-batch Adam with a cosine learning-rate decay, weights initialised at the route centroids.
    """
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
    weights, bias = _fit(x, y, positive, len(ordered), config)
    seconds = time.perf_counter() - started
    logger.info("trained route head: %d routes, %d examples in %.2fs", len(ordered), y.size, seconds)
    return RouteHead(
        names=tuple(rv.name for rv in ordered),
        digests={rv.name: rv.digest for rv in ordered},
        weights=weights,
        bias=bias,
        scale=config.scale,
        train_seconds=seconds,
    )


def _fit(
    x: Vectors, y: npt.NDArray[np.int64], positive: npt.NDArray[np.bool_], routes: int, config: HeadConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    centroids = np.zeros((routes, x.shape[1]), np.float64)
    np.add.at(centroids, y[positive], x[positive])
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    weights = (centroids / np.where(norms > 0, norms, 1.0)).T.astype(np.float32).copy()
    bias = np.zeros(routes, np.float32)
    params = [weights, bias]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    rng = np.random.default_rng(config.seed)
    n = y.size
    batches = max(1, -(-n // config.batch_size))
    total, step = config.epochs * batches, 0
    beta1, beta2 = 0.9, 0.999
    for _ in range(config.epochs if n else 0):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            xb, yb, pos = x[rows], y[rows], positive[rows]
            probs = _softmax((config.scale * (xb @ weights) + bias).astype(np.float64))
            onehot = np.zeros_like(probs)
            onehot[np.arange(rows.size), yb] = 1.0
            # Positives: cross-entropy. Negatives: -log(1 - p_route), whose gradient pushes the
            # route's logit down and spreads the mass over the others.
            p_own = probs[np.arange(rows.size), yb]
            push = (p_own / np.maximum(1.0 - p_own, 1e-6))[:, None] * (onehot - probs)
            grad = (np.where(pos[:, None], probs - onehot, push) / rows.size).astype(np.float32)
            grads = [config.scale * (xb.T @ grad) + config.l2 * weights, grad.sum(axis=0)]
            step += 1
            rate = config.learning_rate * 0.5 * (1.0 + np.cos(np.pi * step / total))
            for param, g, m, v in zip(params, grads, moments, squares, strict=True):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                param -= (rate * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
    return weights, bias


class HeadTrainer:
    """Trains a head from a table snapshot in a background thread and hands it over by reference.

    ``maybe_train(table)`` starts training when the table's digest differs from the one last
    trained (or being trained); ``on_ready`` (e.g. ``lambda head: setattr(router, "head", head)``)
    receives the new head. Errors are logged and kept in :attr:`last_error`.
    """

    def __init__(self, on_ready: Callable[[RouteHead], None], config: HeadConfig | None = None) -> None:
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
        try:
            head = train_head(routes, self.config)
        except Exception as error:  # task boundary: the router keeps its previous head
            self.last_error = error
            with self._lock:
                self._digest = None
            logger.exception("route head training failed for table %s", digest[:12])
            return
        self._on_ready(head)
