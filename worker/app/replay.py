"""Replaying recent traffic against a planned route table (`routes apply --replay`, issue 18).

The sample (:mod:`worker.app.traffic_sample`) is routed as the replicas route it: texts normalised
as the pipeline normalises them, embedded with the replicas' model (the same fingerprint, so the
same vectors), decided by :func:`~worker.app.serving.serving_router` (the replicas' scoring
settings and head policy) over two tables:

- the current one: the log's routes, serving the log's calibration record as a replica does
  (none when it was made with another model, or is inconsistent);
- the planned one: the routes once the plan is published, serving the calibration record that
  publishing would leave in service (the self-fit `routes apply` publishes with the plan, or the
  log's record when it publishes none: ``--no-calibrate``, or a calibration already current).

The comparison itself is the engine's (:func:`worker.routing.impact.route_impact`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from worker.app.serving import describe, serving_router
from worker.app.traffic_sample import SampledQuery, SampleSpec, TrafficSample, read_sample
from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition
from worker.embedding import EncoderPool
from worker.errors import ContractError
from worker.pipeline.embed import embed_isolating, unique_texts
from worker.replication import route_vectors
from worker.replication.calibrations import served_calibration
from worker.routing import RouteCalibration, Router, RouteTable, RouteVectors, make_version
from worker.routing.impact import RouteImpact, compare, route_impact

logger = logging.getLogger(__name__)

#: distinct texts embedded per step of the progress bar
EMBED_CHUNK = 64

#: called with (texts embedded so far, texts to embed)
EmbedProgress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ServedTable:
    """A route table as replicas would serve it: its routes and the calibration record in the log."""

    routes: Mapping[str, RouteDefinition]
    calibration: RouteCalibrationRecord | None
    #: the mutation-log position it stands for (the routes_version of its answers)
    offsets: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The outcome of a replay: the sample read, what was embedded, the impact, the time taken."""

    sample: str
    records: int
    malformed: dict[str, int]
    #: valid queries in the sample, and those of them the model could not embed (dead-lettered
    #: by the replicas, left out of the impact)
    queries: int
    unembeddable: int
    #: distinct normalised texts embedded (at most the sample's limit)
    embedded: int
    impact: RouteImpact
    current_calibration: str
    planned_calibration: str
    model: str
    read_seconds: float
    tables_seconds: float
    embed_seconds: float
    route_seconds: float

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


async def replay(
    settings: Settings,
    encoder: EncoderPool,
    spec: SampleSpec,
    current: ServedTable,
    planned: ServedTable,
    *,
    progress: EmbedProgress | None = None,
) -> ReplayReport:
    """Read ``spec``'s sample of ``settings.topic_queries`` and route it through both tables.

    Raises :class:`~worker.app.traffic_sample.SampleUnavailable` when the topic cannot be read.
    """
    sample = await read_sample(settings, spec)
    return await replay_sample(settings, encoder, spec, sample, current, planned, progress=progress)


async def replay_sample(
    settings: Settings,
    encoder: EncoderPool,
    spec: SampleSpec,
    sample: TrafficSample,
    current: ServedTable,
    planned: ServedTable,
    *,
    progress: EmbedProgress | None = None,
) -> ReplayReport:
    """Route an already read ``sample`` through both tables (see :func:`replay`).

    A sample without a query to route builds no table and embeds nothing.
    """
    tables_s = embed_s = route_s = 0.0
    queries: list[SampledQuery] = []
    impact = compare([], [], [], [])
    if sample.queries:
        started = time.monotonic()
        before, after = await _routers(settings, encoder, current, planned)
        tables_s = time.monotonic() - started
        try:
            started = time.monotonic()
            vectors, kept = await _embed(encoder, [q.text for q in sample.queries], progress)
            embed_s = time.monotonic() - started
            queries = [sample.queries[i] for i in kept]
            started = time.monotonic()
            impact = await asyncio.to_thread(
                route_impact, before, after, vectors, [q.id for q in queries], [q.text for q in queries]
            )
            route_s = time.monotonic() - started
        finally:
            before.table.close()
            after.table.close()
    embedded = len(unique_texts([q.text for q in sample.queries]).texts)
    logger.info(
        "replayed %d queries: %d change route (%d distinct texts embedded in %.2f s)",
        impact.queries,
        impact.changed,
        embedded,
        embed_s,
    )
    return ReplayReport(
        sample=spec.describe(),
        records=sample.records,
        malformed=dict(sample.malformed),
        queries=len(sample.queries),
        unembeddable=len(sample.queries) - len(queries),
        embedded=embedded,
        impact=impact,
        current_calibration=describe(_served(current, encoder), len(current.routes)),
        planned_calibration=describe(_served(planned, encoder), len(planned.routes)),
        model=encoder.fingerprint,
        read_seconds=sample.read_seconds,
        tables_seconds=tables_s,
        embed_seconds=embed_s,
        route_seconds=route_s,
    )


async def _routers(
    settings: Settings, encoder: EncoderPool, current: ServedTable, planned: ServedTable
) -> tuple[Router, Router]:
    """Routers over both tables; routes both hold unchanged are embedded once."""
    now = await route_vectors(current.routes, encoder)
    by_name = {rv.name: rv for rv in now}
    differ = {name: d for name, d in planned.routes.items() if current.routes.get(name) != d}
    later = {rv.name: rv for rv in await route_vectors(differ, encoder)}
    then = [later[name] if name in differ else by_name[name] for name in sorted(planned.routes)]
    before = await asyncio.to_thread(_table, now, current, encoder)
    after = await asyncio.to_thread(_table, then, planned, encoder)
    return serving_router(settings, before), serving_router(settings, after)


def _table(routes: list[RouteVectors], served: ServedTable, encoder: EncoderPool) -> RouteTable:
    version = make_version(served.offsets)
    table = RouteTable.from_routes(routes, version, encoder.dim, encoder.fingerprint)
    table.apply([], [], version, rebuild=False, calibration=_served(served, encoder))
    return table


def _served(table: ServedTable, encoder: EncoderPool) -> RouteCalibration | None:
    """The calibration a replica serves from ``table``'s record (it skips an inconsistent one)."""
    try:
        return served_calibration(table.calibration, encoder.fingerprint, encoder.dim)
    except ContractError as error:
        logger.warning("the calibration record is inconsistent, replayed without one: %s", error)
        return None


async def _embed(
    encoder: EncoderPool, texts: list[str], progress: EmbedProgress | None
) -> tuple[np.ndarray, list[int]]:
    """Vectors of the queries that embed, and their indexes; each distinct text embedded once."""
    unique = unique_texts(texts)
    vectors = np.zeros((len(unique.texts), encoder.dim), dtype=np.float32)
    failed: set[int] = set()
    if progress is not None:
        progress(0, len(unique.texts))
    for start in range(0, len(unique.texts), EMBED_CHUNK):
        chunk = unique.texts[start : start + EMBED_CHUNK]
        embedded = await embed_isolating(encoder, chunk)
        vectors[start : start + len(chunk)] = embedded.vectors
        failed.update(start + i for i in embedded.failed)
        if progress is not None:
            progress(start + len(chunk), len(unique.texts))
    kept = [i for i, text in enumerate(unique.index) if text not in failed]
    return vectors[[unique.index[i] for i in kept]], kept
