"""Mini-batches of head training, and which routes each one's softmax covers.

Up to ``HeadConfig.softmax_routes`` routes a batch is a random slice of the examples and its softmax
covers every route (exact). Beyond, the softmax over every route is most of a step's cost (it grows
with routes x examples, i.e. with the square of the table), so a batch is built from a few routes
that are close to each other, and its softmax covers those routes, each one's nearest routes (by
centroid) and a few random others: the competitors that decide a route's answers. A step then costs
the same whatever the table size, so training grows linearly with it. Deterministic: everything
random comes from the caller's seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.routing.types import Int64s, Vectors

#: nearest routes each route competes with in a sampled softmax
NEIGHBOURS = 15
#: random routes added to each sampled softmax (keeps far routes' logits in check)
RANDOM_ROUTES = 32
#: most examples of one route in one sampled batch
UNIT = 10


@dataclass(frozen=True)
class Batch:
    """Example rows of one step, and the routes its softmax covers (None: all of them)."""

    rows: Int64s
    columns: Int64s | None


def neighbours(x: Vectors, y: Int64s, positive: npt.NDArray[np.bool_], routes: int, count: int) -> Int64s:
    """Each route's ``count`` nearest routes by cosine of their utterances' centroids."""
    centroids = np.zeros((routes, x.shape[1]), np.float64)
    np.add.at(centroids, y[positive], x[positive])
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids /= np.where(norms > 0, norms, 1.0)
    similarity = centroids @ centroids.T
    np.fill_diagonal(similarity, -np.inf)
    count = min(count, routes - 1)
    if count <= 0:
        return np.zeros((routes, 0), np.int64)
    nearest = np.argpartition(-similarity, count - 1, axis=1)[:, :count].astype(np.int64)
    # argpartition leaves ties and order to the implementation: sort for a fixed order
    keys = np.take_along_axis(-similarity, nearest, axis=1)
    order = np.lexsort((nearest, keys), axis=1)
    return np.take_along_axis(nearest, order, axis=1).astype(np.int64)


def epoch_batches(
    y: Int64s,
    routes: int,
    batch_size: int,
    rng: np.random.Generator,
    nearest: Int64s | None,
) -> Iterator[Batch]:
    """One epoch's batches: exact random slices when ``nearest`` is None, else route groups.

    A route group is an anchor route and its nearest routes, each giving at most ``UNIT`` of its
    examples, so a batch mixes about ``batch_size / UNIT`` routes however many examples each has.
    """
    n = y.size
    if nearest is None:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield Batch(order[start : start + batch_size], None)
        return
    units: list[list[Int64s]] = []  # per route, its examples in shuffled chunks of at most UNIT
    for rows in _rows_by_route(y, routes):
        shuffled = rng.permutation(rows)
        units.append([shuffled[i : i + UNIT] for i in range(0, shuffled.size, UNIT)][::-1])
    order = rng.permutation(routes).tolist()
    remaining = sum(len(u) for u in units)
    group: list[Int64s] = []
    members: list[int] = []
    count = 0
    while remaining:  # passes over the routes until every unit is in a batch
        for anchor in order:
            if not units[anchor]:
                continue
            for route in (anchor, *nearest[anchor].tolist()):
                if count >= batch_size or not units[route] or route in members:
                    continue
                chunk = units[route].pop()
                remaining -= 1
                group.append(chunk)
                members.append(route)
                count += chunk.size
            if count >= batch_size:
                yield _batch(group, members, nearest, routes, rng)
                group, members, count = [], [], 0
        if group:  # the routes still waiting may all be in this group already: close it
            yield _batch(group, members, nearest, routes, rng)
            group, members, count = [], [], 0


def _rows_by_route(y: Int64s, routes: int) -> list[Int64s]:
    order = np.argsort(y, kind="stable")
    bounds = np.searchsorted(y[order], np.arange(routes + 1))
    return [order[bounds[r] : bounds[r + 1]] for r in range(routes)]


def _batch(
    chunks: list[Int64s], members: list[int], nearest: Int64s, routes: int, rng: np.random.Generator
) -> Batch:
    rows = np.concatenate(chunks)
    competitors = nearest[members].ravel()
    extra = rng.integers(0, routes, size=min(RANDOM_ROUTES, routes))
    columns = np.unique(np.concatenate([np.asarray(members, dtype=np.int64), competitors, extra]))
    return Batch(rng.permutation(rows), columns)
