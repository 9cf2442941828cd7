"""Planning a route-file apply: what is added, changed, removed, and how changes are described."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from worker.contracts import RouteDefinition
from worker.replication import MutationPlan, plan_changes
from worker.replication.plan import describe_difference
from worker.replication.vectors import attach_embeddings, route_of
from worker.routing import RouteVectors


def route(name: str, *utterances: str, **fields: Any) -> RouteDefinition:
    return RouteDefinition(name=name, utterances=list(utterances or (f"{name} please",)), **fields)


def log(*routes: RouteDefinition) -> dict[str, RouteDefinition]:
    return {r.name: r for r in routes}


def test_adds_changes_and_leaves_unchanged_routes_alone() -> None:
    current = log(route("billing", "pay my bill"), route("weather", "will it rain"))
    desired = [
        route("billing", "pay my bill", "invoice"),
        route("weather", "will it rain"),
        route("greet", "hi"),
    ]
    plan = plan_changes(current, desired)
    assert [c.name for c in plan.added] == ["greet"]
    assert [c.name for c in plan.changed] == ["billing"]
    assert plan.unchanged == ("weather",)
    assert plan.removed == ()
    assert [m.name for m in plan.mutations()] == ["greet", "billing"]
    assert all(m.definition is not None for m in plan.mutations())


def test_routes_missing_from_the_file_are_kept_unless_pruned() -> None:
    current = log(route("billing"), route("legacy"))
    kept = plan_changes(current, [route("billing")])
    assert kept.removed == ()
    assert kept.kept == ("legacy",)
    assert "1 not in the file and kept" in kept.summary()
    pruned = plan_changes(current, [route("billing")], prune=True)
    assert [c.name for c in pruned.removed] == ["legacy"]
    assert pruned.kept == ()
    (tombstone,) = pruned.mutations()
    assert tombstone.name == "legacy"
    assert tombstone.is_tombstone


def test_an_identical_file_plans_nothing() -> None:
    routes = [route("a", "x"), route("b", "y", threshold=0.7, metadata={"team": "t"})]
    plan = plan_changes(log(*routes), routes, prune=True)
    assert plan.is_empty
    assert plan.summary() == "0 to add, 0 to change, 0 to remove, 2 unchanged"


def test_shipped_vectors_do_not_make_a_route_differ() -> None:
    plain = route("a", "hello there")
    vectors = np.eye(1, 8, dtype=np.float32)
    shipped = attach_embeddings(
        plain, RouteVectors(route_of(plain), vectors, np.zeros((0, 8), np.float32), "model@fp32:1")
    )
    assert plan_changes(log(shipped), [plain]).is_empty
    assert plan_changes(log(plain), [shipped]).is_empty


def test_with_a_fingerprint_routes_lacking_its_vectors_are_republished() -> None:
    plain = route("a", "hello there")
    vectors = RouteVectors(
        route_of(plain), np.eye(1, 8, dtype=np.float32), np.zeros((0, 8), np.float32), "m:1"
    )
    shipped = attach_embeddings(plain, vectors)
    plan = plan_changes(log(plain), [plain], fingerprint="m:1")
    assert [(c.name, c.details) for c in plan.changed] == [("a", "embeddings of the current model")]
    assert plan_changes(log(shipped), [plain], fingerprint="m:1").is_empty
    assert plan_changes(log(shipped), [plain], fingerprint="m:2").changed


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (route("a", "x", "y"), route("a", "x", "z", "w"), "+2/-1 utterances"),
        (route("a", "x", "y"), route("a", "y", "x"), "utterances reordered"),
        (route("a", "x"), route("a", "x", negative_utterances=["n"]), "+1/-0 negatives"),
        (route("a", "x"), route("a", "x", threshold=0.6), "threshold default → 0.6"),
        (route("a", "x", threshold=0.5), route("a", "x", threshold=0.6), "threshold 0.5 → 0.6"),
        (route("a", "x", metadata={"t": 1}), route("a", "x", metadata={"t": 2}), "metadata (t)"),
        (route("a", "x"), route("a", "x", metadata={"new": True}), "metadata (new)"),
        (route("a", "x"), route("a", "x"), ""),
    ],
)
def test_differences_are_described(old: RouteDefinition, new: RouteDefinition, expected: str) -> None:
    assert describe_difference(old, new) == expected


def test_several_differences_are_listed_together() -> None:
    old = route("a", "x", threshold=0.5)
    new = route("a", "x", "y", threshold=0.6)
    assert describe_difference(old, new) == "+1/-0 utterances, threshold 0.5 → 0.6"


def test_duplicate_desired_names_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        plan_changes({}, [route("a"), route("a")])


def test_changes_are_published_additions_first_then_changes_then_removals() -> None:
    current = log(route("b", "old"), route("c"))
    plan: MutationPlan = plan_changes(current, [route("z"), route("b", "new")], prune=True)
    assert [(c.kind, c.name) for c in plan.changes] == [("add", "z"), ("change", "b"), ("remove", "c")]
