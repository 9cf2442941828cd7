"""The impact of a route change on real queries: route them through both tables and compare.

``route_impact(before, after, vectors, ids, texts)`` decides every query with the router of the
current table and with the router of the planned one, and reports how many change route (to and
from "no match" included), the moves between routes, and the most affected queries. Pure and
synchronous like :meth:`Router.decide` (run it on a worker thread): it knows nothing of where the
queries came from, nor of what is printed (the caller decides whether texts are shown).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from worker.routing.router import Router
from worker.routing.types import Decision, Vectors

#: examples kept by default: the most affected queries
EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class Move:
    """``count`` queries answered ``source`` now and ``target`` under the plan (None: no match)."""

    source: str | None
    target: str | None
    count: int


@dataclass(frozen=True, slots=True)
class AffectedQuery:
    """One query that changes route, with the winning score of each table.

    A score is the best route's score even when it was refused ("no match": below its threshold
    or within the margin), so a move to or from no match shows how far it was from passing.
    """

    id: str
    text: str
    before: str | None
    before_score: float
    after: str | None
    after_score: float

    @property
    def score_change(self) -> float:
        """How far the winning score moved (after minus before)."""
        return self.after_score - self.before_score


@dataclass(frozen=True, slots=True)
class RouteImpact:
    """What the plan changes for a sample of queries."""

    queries: int
    changed: int
    #: moves between different answers, the largest first (then by route names, no match first)
    moves: tuple[Move, ...]
    #: the most affected queries: those that change route, the largest score change first
    examples: tuple[AffectedQuery, ...]
    #: answers per route (None: no match) before and after
    before_counts: dict[str | None, int]
    after_counts: dict[str | None, int]

    @property
    def share(self) -> float:
        """Share of the queries that change route (0 for no queries)."""
        return self.changed / self.queries if self.queries else 0.0

    def exceeds(self, percent: float) -> bool:
        """Whether more than ``percent`` % of the queries change route."""
        return self.share * 100.0 > percent


def route_impact(
    before: Router,
    after: Router,
    vectors: Vectors,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    examples: int = EXAMPLES,
) -> RouteImpact:
    """Decide every query (one row of ``vectors`` each) with both routers and compare."""
    if not len(ids) == len(texts) == vectors.shape[0]:
        raise ValueError(f"{vectors.shape[0]} vectors for {len(ids)} ids and {len(texts)} texts")
    if vectors.shape[0] == 0:
        return compare([], [], ids, texts, examples=examples)
    return compare(before.decide(vectors, 1), after.decide(vectors, 1), ids, texts, examples=examples)


def compare(
    before: Sequence[Decision],
    after: Sequence[Decision],
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    examples: int = EXAMPLES,
) -> RouteImpact:
    """The impact of ``before`` -> ``after`` decisions of the same queries, in the same order."""
    if not len(before) == len(after) == len(ids) == len(texts):
        raise ValueError("before, after, ids and texts must be of one length")
    moves: Counter[tuple[str | None, str | None]] = Counter()
    affected: list[tuple[int, AffectedQuery]] = []
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        if old.route == new.route:
            continue
        moves[(old.route, new.route)] += 1
        affected.append((i, AffectedQuery(ids[i], texts[i], old.route, old.score, new.route, new.score)))
    # largest score change first; ties keep the sample's order, so the report is deterministic
    affected.sort(key=lambda pair: (-abs(pair[1].score_change), pair[0]))
    return RouteImpact(
        queries=len(before),
        changed=sum(moves.values()),
        moves=tuple(
            Move(source, target, count)
            for (source, target), count in sorted(
                moves.items(), key=lambda item: (-item[1], _order(item[0][0]), _order(item[0][1]))
            )
        ),
        examples=tuple(query for _, query in affected[: max(examples, 0)]),
        before_counts=dict(Counter(d.route for d in before)),
        after_counts=dict(Counter(d.route for d in after)),
    )


def _order(route: str | None) -> tuple[int, str]:
    return (0, "") if route is None else (1, route)
