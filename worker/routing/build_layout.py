"""What a main-index build folds together: routes in name order, with their names, digests and row
counts gathered in C, and which rows it can carry over from the index it replaces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, lt
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.routing.index import MainIndex, holds_raw_vectors
from worker.routing.native import SLICE, in_slices, pause
from worker.routing.types import Int64s, RouteVectors

_NAME: Callable[[RouteVectors], str] = attrgetter("route.name")

_DIGEST: Callable[[RouteVectors], str] = attrgetter("digest")

_VECTORS: Callable[[RouteVectors], Any] = attrgetter("utterance_vectors")

_Value = TypeVar("_Value")


@dataclass(frozen=True, eq=False)
class Carried:
    """Routes a new main index takes over unchanged from ``previous``, the one it replaces.

    ``slots[i]`` is the slot in ``previous`` of the i-th route being built, or -1 when that route
    is new or changed. Used when ``previous`` is an approximate index mapped from a file, with
    its vectors file or raw float32 lists to read the carried rows from.
    """

    previous: MainIndex
    slots: Int64s

    def usable_for(self, routes: int) -> bool:
        """Whether the child process can read the carried rows itself: from ``previous``'s vectors
        file, or from its lists if they hold raw float32 (float16 codes are not the vectors)."""
        if self.slots.shape != (routes,) or not bool((self.slots < len(self.previous.names)).all()):
            return False
        if self.vectors_file() is not None:
            return True
        path = self.previous.path
        return (
            self.previous.kind == "ivf"
            and holds_raw_vectors(self.previous.index)
            and path is not None
            and path.is_file()
        )

    def vectors_file(self) -> Path | None:
        """``previous``'s vectors file (every row of it, in row order), if it is still there."""
        path = self.previous.vectors_path
        return path if path is not None and path.is_file() else None


@dataclass(frozen=True, eq=False)
class Layout:
    """Routes in name order with what a main index records of each, gathered before building.

    ``carried`` (aligned with ``routes``) lets the build read unchanged routes' rows from the index
    being replaced; the index built is the same as without it.
    """

    routes: tuple[RouteVectors, ...]
    names: tuple[str, ...]
    digests: tuple[str, ...]
    counts: Int64s
    carried: Carried | None = None

    @classmethod
    def of(cls, routes: Sequence[RouteVectors]) -> Layout:
        """``routes`` (ideally already in name order; sorted otherwise) laid out."""
        ordered = list(routes)
        names = _gather(ordered, _NAME)
        if not is_sorted(names):
            ordered.sort(key=_NAME)
            names = _gather(ordered, _NAME)
        counts = np.fromiter(
            chain.from_iterable(map(len, map(_VECTORS, part)) for part in in_slices(ordered)),
            dtype=np.int64,
            count=len(ordered),
        )
        return cls(tuple(ordered), names, _gather(ordered, _DIGEST), counts)


def take(items: Sequence[_Value], positions: Int64s) -> tuple[_Value, ...]:
    """``items`` at ``positions``, gathered in C slice by slice (pausing between slices)."""
    picked = positions.tolist()

    def part(at: Sequence[int]) -> Sequence[_Value]:
        return (items[at[0]],) if len(at) == 1 else itemgetter(*at)(items)

    return tuple(chain.from_iterable(map(part, in_slices(picked))))


def _gather(items: Sequence[RouteVectors], getter: Callable[[RouteVectors], _Value]) -> tuple[_Value, ...]:
    return tuple(chain.from_iterable(map(getter, part) for part in in_slices(items)))


def is_sorted(names: Sequence[str]) -> bool:
    """Whether ``names`` are strictly increasing (checked in slices, pausing between them)."""
    for start in range(0, max(len(names) - 1, 0), SLICE):
        if start:
            pause()
        part = names[start : start + SLICE + 1]  # overlapping by one: every neighbouring pair
        if not all(map(lt, part, part[1:])):
            return False
    return True
