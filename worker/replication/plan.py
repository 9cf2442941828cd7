"""The plan of a route-file apply: which routes to add, change and remove, and why.

Routes are compared on what decides routing (utterances, negatives, threshold, metadata), never on
shipped vectors, so re-applying an unchanged file publishes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from worker.contracts import RouteDefinition, RouteMutation
from worker.contracts.mutation import definition_without_embeddings

ChangeKind = Literal["add", "change", "remove"]


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One route to publish: its new definition (None to remove it) and a short human description."""

    kind: ChangeKind
    name: str
    definition: RouteDefinition | None
    details: str

    def mutation(self) -> RouteMutation:
        """The mutation record that makes this change (a tombstone for a removal)."""
        return RouteMutation(self.name, self.definition)


@dataclass(frozen=True, slots=True)
class MutationPlan:
    """Differences between the log's routes and the desired ones, each group sorted by name."""

    added: tuple[RouteChange, ...] = ()
    changed: tuple[RouteChange, ...] = ()
    removed: tuple[RouteChange, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: routes in the log but not in the file, left alone because pruning was not asked for
    kept: tuple[str, ...] = field(default=())
    #: the log's end offsets (partition -> next offset) the plan was made against; publishing it
    #: refuses if the log has moved since (:mod:`worker.replication.guard`). None: not checked.
    based_on: Mapping[int, int] | None = None

    @property
    def changes(self) -> tuple[RouteChange, ...]:
        """Every change, in publishing order: additions, changes, removals."""
        return self.added + self.changed + self.removed

    @property
    def is_empty(self) -> bool:
        """True when the log already holds the desired routes."""
        return not self.changes

    def mutations(self) -> list[RouteMutation]:
        """The records to publish."""
        return [change.mutation() for change in self.changes]

    def summary(self) -> str:
        """One line: counts of each kind of change."""
        text = (
            f"{len(self.added)} to add, {len(self.changed)} to change, {len(self.removed)} to remove, "
            f"{len(self.unchanged)} unchanged"
        )
        if self.kept:
            text += f", {len(self.kept)} not in the file and kept (--prune deletes them)"
        return text


def plan_changes(
    current: Mapping[str, RouteDefinition],
    desired: Sequence[RouteDefinition],
    *,
    prune: bool = False,
    fingerprint: str | None = None,
) -> MutationPlan:
    """Compare the log's ``current`` routes with ``desired`` ones.

    With ``prune``, routes absent from ``desired`` are removed (tombstones). With ``fingerprint``
    (publishing shipped embeddings), an unchanged route whose record carries no vectors of that
    model counts as changed, so replicas stop embedding it themselves.
    """
    added: list[RouteChange] = []
    changed: list[RouteChange] = []
    unchanged: list[str] = []
    wanted = {route.name: route for route in desired}
    if len(wanted) != len(desired):
        raise ValueError("desired routes must have distinct names")
    for name in sorted(wanted):
        route = wanted[name]
        old = current.get(name)
        if old is None:
            added.append(RouteChange("add", name, route, _counts(route)))
            continue
        details = describe_difference(old, route)
        if not details and fingerprint is not None and _fingerprint(old) != fingerprint:
            details = "embeddings of the current model"
        if details:
            changed.append(RouteChange("change", name, route, details))
        else:
            unchanged.append(name)
    missing = sorted(set(current) - set(wanted))
    removed = [RouteChange("remove", name, None, _counts(current[name])) for name in missing] if prune else []
    return MutationPlan(
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(removed),
        unchanged=tuple(unchanged),
        kept=() if prune else tuple(missing),
    )


def describe_difference(old: RouteDefinition, new: RouteDefinition) -> str:
    """What differs between two definitions of a route, e.g. ``+2/-1 utterances, threshold 0.5 → 0.6``;
    empty when they route identically."""
    if definition_without_embeddings(old) == definition_without_embeddings(new):
        return ""
    parts = []
    for field_name, label in (("utterances", "utterances"), ("negative_utterances", "negatives")):
        before, after = getattr(old, field_name), getattr(new, field_name)
        plus, minus = len(set(after) - set(before)), len(set(before) - set(after))
        if plus or minus:
            parts.append(f"+{plus}/-{minus} {label}")
        elif before != after:
            parts.append(f"{label} reordered")
    if old.threshold != new.threshold:
        parts.append(f"threshold {_threshold(old.threshold)} → {_threshold(new.threshold)}")
    if old.metadata != new.metadata:
        keys = sorted(set(old.metadata) ^ set(new.metadata)) or sorted(
            k for k in new.metadata if old.metadata.get(k) != new.metadata[k]
        )
        parts.append(f"metadata ({', '.join(keys)})")
    return ", ".join(parts)


def _counts(route: RouteDefinition) -> str:
    text = f"{len(route.utterances)} utterances"
    if route.negative_utterances:
        text += f", {len(route.negative_utterances)} negatives"
    if route.threshold is not None:
        text += f", threshold {route.threshold}"
    return text


def _threshold(value: float | None) -> str:
    return "default" if value is None else f"{value:g}"


def _fingerprint(route: RouteDefinition) -> str | None:
    return route.embeddings.fingerprint if route.embeddings is not None else None
