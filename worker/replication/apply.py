"""The publishing API behind `routeworker routes apply/delete`: plan against the log, then publish.

routes = load_route_file(Path("routes.yaml"))
plan, _ = await plan_routes(settings, routes, prune=True)
receipt = await publish_plan(settings, plan, encoder=pool)   # encoder: ship vectors
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation
from worker.embedding import EncoderPool
from worker.replication.log import LogState, read_routes
from worker.replication.plan import MutationPlan, RouteChange, plan_changes
from worker.replication.publisher import MutationPublisher, PublishReceipt
from worker.replication.routefile import check_sizes
from worker.replication.vectors import with_embeddings


async def plan_routes(
    settings: Settings,
    routes: Sequence[RouteDefinition],
    *,
    prune: bool = False,
    fingerprint: str | None = None,
) -> tuple[MutationPlan, LogState]:
    """Read the log's current routes and plan the changes that make it hold ``routes``."""
    state = await read_routes(settings)
    return plan_changes(state.routes, routes, prune=prune, fingerprint=fingerprint), state


async def publish_plan(
    settings: Settings,
    plan: MutationPlan,
    *,
    encoder: EncoderPool | None = None,
    on_acked: Callable[[int], None] | None = None,
) -> PublishReceipt:
    """Publish the plan's changes; with ``encoder``, added and changed routes carry their vectors.

    Everything is embedded and size-checked before the first record is sent.
    """
    changes = list(plan.changes)
    if encoder is not None:
        upserts = [c.definition for c in changes if c.definition is not None]
        embedded = iter(
            await with_embeddings(encoder, [d.model_copy(update={"embeddings": None}) for d in upserts])
        )
        changes = [
            RouteChange(c.kind, c.name, next(embedded), c.details) if c.definition is not None else c
            for c in changes
        ]
        check_sizes([c.definition for c in changes if c.definition is not None], settings.limits, "routes")
    async with MutationPublisher(settings) as publisher:
        return await publisher.publish([c.mutation() for c in changes], on_acked)


async def apply_routes(
    settings: Settings,
    routes: Sequence[RouteDefinition],
    *,
    prune: bool = False,
    encoder: EncoderPool | None = None,
) -> tuple[MutationPlan, PublishReceipt]:
    """Make the log hold ``routes`` (and, with ``prune``, nothing else), publishing only differences."""
    fingerprint = encoder.fingerprint if encoder is not None else None
    plan, _ = await plan_routes(settings, routes, prune=prune, fingerprint=fingerprint)
    return plan, await publish_plan(settings, plan, encoder=encoder)


async def delete_routes(settings: Settings, names: Sequence[str]) -> PublishReceipt:
    """Publish tombstones for ``names`` (whether or not the log holds them)."""
    async with MutationPublisher(settings) as publisher:
        return await publisher.publish([RouteMutation(name, None) for name in names])
