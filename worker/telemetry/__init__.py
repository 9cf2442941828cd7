"""Telemetry of a replica: OpenTelemetry traces and metrics, Prometheus text, health probes."""

from worker.telemetry.health import Health
from worker.telemetry.metrics import PipelineMetrics
from worker.telemetry.names import METRICS, MetricName, MetricSpec
from worker.telemetry.prometheus import render_prometheus
from worker.telemetry.setup import Telemetry
from worker.telemetry.tracing import extract_context, trace_headers, without_trace_headers

__all__ = [
    "METRICS",
    "Health",
    "MetricName",
    "MetricSpec",
    "PipelineMetrics",
    "Telemetry",
    "extract_context",
    "render_prometheus",
    "trace_headers",
    "without_trace_headers",
]
