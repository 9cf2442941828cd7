"""Deciding where each changed route's vectors come from: shipped, kept, or embedded here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.replication.fold import FoldedMutations
from worker.replication.stats import ReplicaStats
from worker.replication.vectors import route_of
from worker.routing import Route, RouteVectors


@dataclass(slots=True)
class ResolvedChanges:
    """A folded batch split into what can be applied now and what must be embedded first."""

    upserts: list[RouteVectors] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    to_embed: list[Route] = field(default_factory=list)
    #: upserts (by ``id``) whose utterance vectors are rows of the replay's spill file already
    #: (decoded in another process), with their first row there (see ``SpillFile.spill``)
    placed: dict[int, int] = field(default_factory=dict)


def resolve_changes(
    folded: FoldedMutations,
    current: Callable[[str], RouteVectors | None],
    fingerprint: str,
    stats: ReplicaStats,
) -> ResolvedChanges:
    """Split ``folded`` into upserts with vectors, deletions and routes to embed.

    ``current(name)`` is the replica's present vectors of a route. A route whose utterances and
    negatives are unchanged keeps those vectors (a threshold edit never waits for the model);
    shipped vectors of another model are never trusted: the route is re-embedded here.
    """
    resolved = ResolvedChanges()
    for name, definition in folded.changes.items():
        if definition is None:
            resolved.deletes.append(name)
            continue
        shipped = folded.vectors.get(name)
        if shipped is not None:
            stats.shipped += 1
            resolved.upserts.append(shipped)
            continue
        route = route_of(definition)
        present = current(name)
        if (
            present is not None
            and present.fingerprint == fingerprint
            and present.route.utterances == route.utterances
            and present.route.negative_utterances == route.negative_utterances
        ):
            stats.reused += 1
            resolved.upserts.append(
                RouteVectors(route, present.utterance_vectors, present.negative_vectors, fingerprint)
            )
            continue
        if definition.embeddings is not None:
            stats.re_embedded += 1
        else:
            stats.embedded += 1
        resolved.to_embed.append(route)
    return resolved
