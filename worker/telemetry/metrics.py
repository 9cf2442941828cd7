"""The replica's metrics, recorded through OpenTelemetry instruments named in :mod:`names`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation, _Gauge
from opentelemetry.util.types import Attributes

from worker.telemetry.names import METRICS, MetricName

_OBSERVED = frozenset({MetricName.CACHE_HIT_RATIO, MetricName.READY})


class PipelineMetrics:
    """Typed recording methods; instruments exist only for names in the closed list.

    Durations are given in milliseconds (as the pipeline measures them) and recorded in seconds.
    ``ready`` is read on every collection for the readiness gauge.
    """

    def __init__(self, meter: Meter, ready: Callable[[], bool] = lambda: False) -> None:
        self._meter = meter
        self._counters: dict[MetricName, Counter] = {}
        self._histograms: dict[MetricName, Histogram] = {}
        self._gauges: dict[MetricName, _Gauge] = {}
        for name, spec in METRICS.items():
            if name in _OBSERVED:
                continue  # observed on collection, below
            if spec.kind == "counter":
                self._counters[name] = meter.create_counter(name, spec.unit, spec.description)
            elif spec.kind == "histogram":
                self._histograms[name] = meter.create_histogram(
                    name,
                    spec.unit,
                    spec.description,
                    explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None,
                )
            else:
                self._gauges[name] = meter.create_gauge(name, spec.unit, spec.description)
        ratio = METRICS[MetricName.CACHE_HIT_RATIO]
        meter.create_observable_gauge(
            MetricName.CACHE_HIT_RATIO, [self._observe_hit_ratio], ratio.unit, ratio.description
        )
        readiness = METRICS[MetricName.READY]
        self._ready = ready
        meter.create_observable_gauge(
            MetricName.READY, [self._observe_ready], readiness.unit, readiness.description
        )
        self._lock = threading.Lock()
        self._hits = 0
        self._lookups = 0

    def _add(self, name: MetricName, amount: int, attributes: Attributes = None) -> None:
        # zeros are added too: a counter is exported from its first use, so rate() has a start
        self._counters[name].add(amount, attributes)

    def _record(self, name: MetricName, value: float, attributes: Attributes = None) -> None:
        self._histograms[name].record(value, attributes)

    def decisions(self, routed: int, no_match: int) -> None:
        """Count the routed intents of a batch."""
        self._add(MetricName.ROUTED, routed)
        self._add(MetricName.NO_MATCH, no_match)

    def dead_lettered(self, code: str, count: int = 1) -> None:
        """Count records sent to the DLQ with ``code``."""
        self._add(MetricName.DEAD_LETTERED, count, {"error_code": code})

    def end_to_end_ms(self, values: Iterable[float]) -> None:
        """Record per-query latency from the query's timestamp."""
        for value in values:
            self._record(MetricName.END_TO_END_LATENCY, max(value, 0.0) / 1000)

    def batch_size(self, size: int) -> None:
        """Record the size of a consumed batch."""
        self._record(MetricName.BATCH_SIZE, size)

    def embed_ms(self, value: float) -> None:
        """Record a batch's embedding time."""
        self._record(MetricName.EMBED_DURATION, value / 1000)

    def search_ms(self, value: float) -> None:
        """Record a batch's search-and-decide time."""
        self._record(MetricName.SEARCH_DURATION, value / 1000)

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set a partition's lag (high watermark minus next offset)."""
        self._gauges[MetricName.CONSUMER_LAG].set(max(lag, 0), {"topic": topic, "partition": partition})

    def cache_lookups(self, hits: int, misses: int) -> None:
        """Count one batch's embedding-cache hits and misses."""
        self._add(MetricName.CACHE_HITS, hits)
        self._add(MetricName.CACHE_MISSES, misses)
        with self._lock:
            self._hits += hits
            self._lookups += hits + misses

    def cache_unavailable(self, backend: str) -> None:
        """Count a failed cache call."""
        self._add(MetricName.CACHE_UNAVAILABLE, 1, {"backend": backend})

    def produce_retries(self, count: int) -> None:
        """Count output records sent again."""
        self._add(MetricName.PRODUCE_RETRIES, count)

    def produce_error(self, remedy: str, error: str) -> None:
        """Count one failed send of an output record: what was done about it, and the error class."""
        self._add(MetricName.PRODUCE_ERRORS, 1, {"remedy": remedy, "error": error})

    def paused(self) -> None:
        """Count one pause of consumption under backpressure."""
        self._add(MetricName.PARTITIONS_PAUSED, 1)

    def decisions_remembered(self, count: int) -> None:
        """Count texts whose decision came from the memo."""
        self._add(MetricName.DECISIONS_REMEMBERED, count)

    def committed(self, reason: str) -> None:
        """Count one offset commit (``reason``: cadence, revoke, shutdown)."""
        self._add(MetricName.COMMITS, 1, {"reason": reason})

    def rebalance_ms(self, value: float) -> None:
        """Record one rebalance of this replica, from its revocation to its new assignment."""
        self._record(MetricName.REBALANCE_DURATION, value / 1000)

    def undecodable_batch(self, topic: str, partition: int) -> None:
        """Count one record batch the client could not decode (dead-lettered and skipped)."""
        self._add(MetricName.UNDECODABLE_BATCHES, 1, {"topic": topic, "partition": partition})

    def head_routes(self, routes: int) -> None:
        """The learned head now in service knows ``routes`` routes (0 when none is in service)."""
        self._gauges[MetricName.HEAD_ROUTES].set(routes)

    def mutation_apply_lag(self, seconds: Iterable[float]) -> None:
        """Record, per applied route mutation, the time from its record's timestamp to being live."""
        for value in seconds:
            self._record(MetricName.MUTATION_APPLY_LAG, max(value, 0.0))

    def health_request(self, path: str, code: int) -> None:
        """Count one request answered by the health server."""
        self._add(MetricName.HEALTH_REQUESTS, 1, {"path": path, "code": str(code)})

    def full_replay(self, reason: str) -> None:
        """Count one replay of the whole mutation log (``reason``: why it could not resume)."""
        self._add(MetricName.MUTATIONS_FULL_REPLAYS, 1, {"reason": reason})

    def mutation_skipped(self, code: str) -> None:
        """Count one route-mutation record that could not be applied."""
        self._add(MetricName.MUTATIONS_SKIPPED, 1, {"error_code": code})

    def apply_waited(self) -> None:
        """Count one live mutation batch that waited for room in the overlay."""
        self._add(MetricName.MUTATION_APPLY_WAITS, 1)

    def rebuild_failed(self) -> None:
        """Count one failed background index rebuild."""
        self._add(MetricName.INDEX_REBUILD_FAILURES, 1)

    def overlay_rows(self, rows: int) -> None:
        """The write-ahead overlay now holds ``rows`` vectors."""
        self._gauges[MetricName.OVERLAY_ROWS].set(rows)

    def unknown_fields(self, topic: str, fields: int) -> None:
        """Count fields of ``topic``'s records that this version ignored."""
        self._add(MetricName.UNKNOWN_FIELDS, fields, {"topic": topic})

    def _observe_ready(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if self._ready() else 0)]

    def _observe_hit_ratio(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            if self._lookups == 0:
                return []
            return [Observation(self._hits / self._lookups)]
