"""The publishing API behind `routeworker routes apply/delete`: plan against the log, then publish.

routes = load_route_file(Path("routes.yaml"))
plan, state = await plan_routes(settings, routes, prune=True)
receipt = await publish_plan(settings, plan, encoder=pool)   # encoder: ship vectors

A plan remembers where the log ended when it was made; publishing it raises ``LogMoved``
(publishing nothing) if another admin published meanwhile (see :mod:`worker.replication.guard`).

A calibration (head and thresholds, :mod:`worker.routing.route_calibration`) is derived here, by
the publisher, for the routes the log will hold, and published after the route records:
``calibrate_plan`` makes it, ``publish_plan(..., calibration=record)`` ships it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition, RouteMutation
from worker.embedding import EncoderPool
from worker.replication.calibrations import calibration_record
from worker.replication.guard import PublishHooks, publish_guarded
from worker.replication.log import LogState, read_routes
from worker.replication.plan import MutationPlan, RouteChange, plan_changes
from worker.replication.publisher import MutationPublisher, PublishReceipt
from worker.replication.routefile import check_sizes
from worker.replication.vectors import embed_routes, route_of, shipped_vectors, with_embeddings
from worker.routing import RouteCalibration, RouteVectors
from worker.routing.route_calibration import calibrated_digest
from worker.routing.types import training_digest

#: derives a calibration from the vectors of every route (e.g. ``self_fit`` with its settings)
Calibrate = Callable[[list[RouteVectors]], RouteCalibration]


async def plan_routes(
    settings: Settings,
    routes: Sequence[RouteDefinition],
    *,
    prune: bool = False,
    fingerprint: str | None = None,
) -> tuple[MutationPlan, LogState]:
    """Read the log's current routes and plan the changes that make it hold ``routes``; the plan
    records the log's end offsets, so publishing it refuses if the log moves meanwhile."""
    state = await read_routes(settings)
    plan = plan_changes(state.routes, routes, prune=prune, fingerprint=fingerprint)
    return replace(plan, based_on=dict(state.end_offsets)), state


async def publish_plan(
    settings: Settings,
    plan: MutationPlan,
    *,
    encoder: EncoderPool | None = None,
    on_acked: Callable[[int], None] | None = None,
    hooks: PublishHooks | None = None,
    calibration: RouteCalibrationRecord | None = None,
) -> PublishReceipt:
    """Publish the plan's changes, then ``calibration`` if given; with ``encoder``, added and
    changed routes carry their vectors.

    Everything is embedded and size-checked before the first record is sent. A plan made against
    the log (``based_on``) is published only onto the log as it was then, else ``LogMoved``.
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
    mutations = [c.mutation() for c in changes]
    if plan.based_on is not None:
        return await publish_guarded(
            settings, mutations, plan.based_on, on_acked=on_acked, hooks=hooks, calibration=calibration
        )
    async with MutationPublisher(settings) as publisher:
        return await publisher.publish(mutations, on_acked, calibration=calibration)


async def embedded_plan(plan: MutationPlan, encoder: EncoderPool) -> MutationPlan:
    """``plan`` with its added and changed routes carrying their vectors (``--with-embeddings``)."""

    async def embedded(changes: tuple[RouteChange, ...]) -> tuple[RouteChange, ...]:
        definitions = [c.definition.model_copy(update={"embeddings": None}) for c in changes if c.definition]
        attached = iter(await with_embeddings(encoder, definitions))
        return tuple(RouteChange(c.kind, c.name, next(attached), c.details) for c in changes)

    return replace(plan, added=await embedded(plan.added), changed=await embedded(plan.changed))


def planned_routes(state: LogState, plan: MutationPlan) -> dict[str, RouteDefinition]:
    """The routes the log holds once ``plan`` is published."""
    routes = dict(state.routes)
    for change in plan.changes:
        if change.definition is None:
            routes.pop(change.name, None)
        else:
            routes[change.name] = change.definition
    return routes


def calibration_is_current(state: LogState, routes: Mapping[str, RouteDefinition], fingerprint: str) -> bool:
    """Whether the log's calibration was made for exactly ``routes`` with model ``fingerprint``."""
    record = state.calibration
    if record is None or record.fingerprint != fingerprint:
        return False
    pairs = ((name, training_digest(route_of(d), fingerprint)) for name, d in routes.items())
    return calibrated_digest(pairs) == record.table_digest


async def route_vectors(routes: Mapping[str, RouteDefinition], encoder: EncoderPool) -> list[RouteVectors]:
    """Vectors of ``routes``: the shipped ones of this model, the others embedded here (name order)."""
    vectors: dict[str, RouteVectors] = {}
    missing = []
    for name in sorted(routes):
        shipped = shipped_vectors(routes[name], encoder.fingerprint, encoder.dim)
        if shipped is not None:
            vectors[name] = shipped
        else:
            missing.append(route_of(routes[name]))
    for rv in await embed_routes(encoder, missing):
        vectors[rv.name] = rv
    return [vectors[name] for name in sorted(vectors)]


async def calibrate_plan(
    routes: Mapping[str, RouteDefinition], encoder: EncoderPool, calibrate: Calibrate
) -> tuple[RouteCalibration, RouteCalibrationRecord]:
    """Derive a calibration of ``routes`` (in a thread: it is seconds of CPU) and its record."""
    vectors = await route_vectors(routes, encoder)
    calibration = await asyncio.to_thread(calibrate, vectors)
    return calibration, calibration_record(calibration, encoder.dim)


async def publish_calibration(settings: Settings, record: RouteCalibrationRecord) -> PublishReceipt:
    """Publish ``record`` alone (`routeworker fit --publish`, `routeworker routes calibrate`)."""
    async with MutationPublisher(settings) as publisher:
        return await publisher.publish([], calibration=record)


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
