"""One replica's telemetry: a tracer, the metrics, health state, Prometheus exposition and OTLP export.

Providers are owned by the :class:`Telemetry` object, not installed globally, so tests (and two
pipelines in one process) each read their own spans and metrics. Prometheus reads the metrics
through OpenTelemetry's Prometheus exporter into this object's own ``prometheus_client`` registry,
which the health server serves on ``/metrics`` (text format or OpenMetrics, as the scraper asks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, generate_latest

from worker import __version__
from worker.telemetry.health import DEFAULT_STALL_AFTER_S, Clock, Health
from worker.telemetry.metrics import PipelineMetrics

logger = logging.getLogger(__name__)

SCOPE = "routeworker"
# Metric export cadence to an OTLP collector; Prometheus scrapes set their own.
_EXPORT_INTERVAL_MS = 15_000


def _otlp_url(endpoint: str, signal: str) -> str:
    base = endpoint.rstrip("/")
    suffix = f"/v1/{signal}"
    return base if base.endswith(suffix) else base + suffix


class Telemetry:
    """Tracer, metrics and health of one replica; ``registry`` is what ``/metrics`` serves."""

    def __init__(
        self,
        *,
        replica_id: str = "routeworker",
        otlp_endpoint: str | None = None,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Clock | None = None,
    ) -> None:
        resource = Resource.create(
            {"service.name": "routeworker", "service.version": __version__, "service.instance.id": replica_id}
        )
        self.health = Health(stall_after_s=stall_after_s, clock=clock or time.monotonic)
        self.registry = CollectorRegistry()
        # scope labels (otel_scope_name...) would repeat "routeworker" on every series; the
        # resource (service, version, instance) is one target_info series
        prometheus = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        readers: list[MetricReader] = [prometheus, *metric_readers]
        processors = list(span_processors)
        if otlp_endpoint:
            # imported only when export is configured: the exporter pulls in protobuf and requests
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=_otlp_url(otlp_endpoint, "metrics")),
                    export_interval_millis=_EXPORT_INTERVAL_MS,
                )
            )
            processors.append(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=_otlp_url(otlp_endpoint, "traces")))
            )
            logger.info("exporting traces and metrics to %s", otlp_endpoint)
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for processor in processors:
            self.tracer_provider.add_span_processor(processor)
        self.tracer: Tracer = self.tracer_provider.get_tracer(SCOPE, __version__)
        self.metrics = PipelineMetrics(
            self.meter_provider.get_meter(SCOPE, __version__), self.health.is_ready
        )

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry).decode("utf-8")

    def shutdown(self) -> None:
        """Flush exporters and release them (blocking: a last OTLP export may go out)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
