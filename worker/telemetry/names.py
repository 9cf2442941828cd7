"""The closed list of metrics a replica emits: adding one means adding it here, nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

InstrumentKind = Literal["counter", "histogram", "gauge"]


class MetricName(StrEnum):
    """Every metric name; dashboards and alerts key on these strings, so they are stable.

    Prometheus sees them through OpenTelemetry's exporter, which writes ``.`` as ``_``, appends the
    unit (``s`` -> ``_seconds``; annotations such as ``{query}`` add nothing) and ``_total`` to
    counters: ``routeworker.queries.routed`` is scraped as ``routeworker_queries_routed_total``,
    ``routeworker.query.latency`` as ``routeworker_query_latency_seconds``. Durations are recorded
    in seconds, the Prometheus base unit.
    """

    ROUTED = "routeworker.queries.routed"
    NO_MATCH = "routeworker.queries.no_match"
    DEAD_LETTERED = "routeworker.queries.dead_lettered"
    END_TO_END_LATENCY = "routeworker.query.latency"
    BATCH_SIZE = "routeworker.batch.size"
    EMBED_DURATION = "routeworker.embed.duration"
    SEARCH_DURATION = "routeworker.search.duration"
    CONSUMER_LAG = "routeworker.consumer.lag"
    CACHE_HITS = "routeworker.cache.hits"
    CACHE_MISSES = "routeworker.cache.misses"
    CACHE_HIT_RATIO = "routeworker.cache.hit_ratio"
    CACHE_UNAVAILABLE = "routeworker.cache.unavailable"
    PRODUCE_RETRIES = "routeworker.produce.retries"
    PRODUCE_ERRORS = "routeworker.produce.errors"
    PARTITIONS_PAUSED = "routeworker.consumer.paused"
    COMMITS = "routeworker.offsets.committed"
    REBALANCE_DURATION = "routeworker.rebalance.duration"
    DECISIONS_REMEMBERED = "routeworker.decisions.remembered"
    HEAD_ROUTES = "routeworker.route_head.routes"
    READY = "routeworker.replica.ready"
    MUTATION_APPLY_LAG = "routeworker.mutations.apply_lag"
    HEALTH_REQUESTS = "routeworker.health.requests"
    UNDECODABLE_BATCHES = "routeworker.consumer.undecodable_batches"
    MUTATIONS_FULL_REPLAYS = "routeworker.mutations.full_replays"
    MUTATIONS_SKIPPED = "routeworker.mutations.skipped"
    MUTATION_APPLY_WAITS = "routeworker.mutations.apply_waits"
    INDEX_REBUILD_FAILURES = "routeworker.index.rebuild_failures"
    OVERLAY_ROWS = "routeworker.index.overlay_rows"
    UNKNOWN_FIELDS = "routeworker.contracts.unknown_fields"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How one metric is recorded."""

    kind: InstrumentKind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None  # histogram bucket bounds


# seconds: 1 ms .. 5 s
LATENCY_S_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
# seconds: a mutation's publish -> applied, 10 ms .. 5 min
APPLY_LAG_S_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)


METRICS: dict[MetricName, MetricSpec] = {
    MetricName.ROUTED: MetricSpec("counter", "{query}", "Queries answered with a route."),
    MetricName.NO_MATCH: MetricSpec("counter", "{query}", "Queries answered with no match."),
    MetricName.DEAD_LETTERED: MetricSpec(
        "counter", "{record}", "Input records sent to the dead-letter topic, by error code."
    ),
    MetricName.END_TO_END_LATENCY: MetricSpec(
        "histogram",
        "s",
        "From the query record's timestamp to its routed intent being acknowledged.",
        LATENCY_S_BUCKETS,
    ),
    MetricName.BATCH_SIZE: MetricSpec("histogram", "{record}", "Records per consumed batch.", SIZE_BUCKETS),
    MetricName.EMBED_DURATION: MetricSpec(
        "histogram",
        "s",
        "Time a batch spends in the embedding step: cache lookup, waiting for a session, embedding.",
        LATENCY_S_BUCKETS,
    ),
    MetricName.SEARCH_DURATION: MetricSpec(
        "histogram", "s", "Route search and decision time per batch.", LATENCY_S_BUCKETS
    ),
    MetricName.CONSUMER_LAG: MetricSpec(
        "gauge", "{record}", "Records between the partition's high watermark and the next one consumed."
    ),
    MetricName.CACHE_HITS: MetricSpec("counter", "{text}", "Embedding cache lookups that found a vector."),
    MetricName.CACHE_MISSES: MetricSpec("counter", "{text}", "Embedding cache lookups that had to embed."),
    MetricName.CACHE_HIT_RATIO: MetricSpec("gauge", "1", "Embedding cache hits / lookups since start."),
    MetricName.CACHE_UNAVAILABLE: MetricSpec(
        "counter", "{error}", "Embedding cache calls that failed (routing went on without the cache)."
    ),
    MetricName.PRODUCE_RETRIES: MetricSpec(
        "counter", "{record}", "Output records sent again after a failure."
    ),
    MetricName.PRODUCE_ERRORS: MetricSpec(
        "counter",
        "{error}",
        "Failed sends of output records, by remedy (retry, dead_letter, reset, stop) and error class.",
    ),
    MetricName.PARTITIONS_PAUSED: MetricSpec(
        "counter", "{event}", "Times consumption paused because in-flight work hit its bound."
    ),
    MetricName.COMMITS: MetricSpec("counter", "{commit}", "Offset commits, by reason."),
    MetricName.REBALANCE_DURATION: MetricSpec(
        "histogram",
        "s",
        "From the start of a rebalance (in-flight work of revoked partitions finished and committed) "
        "to the new assignment.",
        APPLY_LAG_S_BUCKETS,
    ),
    MetricName.DECISIONS_REMEMBERED: MetricSpec(
        "counter", "{text}", "Texts routed from the decision memo (same text, unchanged route table)."
    ),
    MetricName.HEAD_ROUTES: MetricSpec(
        "gauge", "{route}", "Routes the learned head in service was trained on (0: nearest utterances only)."
    ),
    MetricName.READY: MetricSpec(
        "gauge", "1", "1 while the replica is ready (route table caught up, partitions held, no rebalance)."
    ),
    MetricName.MUTATION_APPLY_LAG: MetricSpec(
        "histogram",
        "s",
        "From a route mutation's record timestamp to its being live in this replica's route table.",
        APPLY_LAG_S_BUCKETS,
    ),
    MetricName.HEALTH_REQUESTS: MetricSpec(
        "counter", "{request}", "Requests answered by the health server, by path and status code."
    ),
    MetricName.UNDECODABLE_BATCHES: MetricSpec(
        "counter",
        "{batch}",
        "Fetched record batches the Kafka client could not decode (dead-lettered and skipped), by partition.",
    ),
    MetricName.MUTATIONS_FULL_REPLAYS: MetricSpec(
        "counter",
        "{replay}",
        "Replays of the whole mutation log instead of a resume from stored offsets, by reason "
        "(below_log_start, tombstone_horizon, ahead_of_log, never_caught_up, retention_unknown).",
    ),
    MetricName.MUTATIONS_SKIPPED: MetricSpec(
        "counter", "{record}", "Route-mutation records that could not be applied, by error code."
    ),
    MetricName.MUTATION_APPLY_WAITS: MetricSpec(
        "counter", "{batch}", "Live mutation batches that waited for an index rebuild (overlay full)."
    ),
    MetricName.INDEX_REBUILD_FAILURES: MetricSpec(
        "counter", "{rebuild}", "Background index rebuilds that failed (each is retried)."
    ),
    MetricName.OVERLAY_ROWS: MetricSpec(
        "gauge", "{vector}", "Vectors in the route table's write-ahead overlay (bounded by OVERLAY_MAX_ROWS)."
    ),
    MetricName.UNKNOWN_FIELDS: MetricSpec(
        "counter", "{field}", "Fields this version does not know, ignored in accepted records, by topic."
    ),
}

assert set(METRICS) == set(MetricName), "every metric name needs a spec"
