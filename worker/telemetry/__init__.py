"""Telemetry of a replica: OpenTelemetry traces and metrics, their Prometheus exposition, health state."""

from worker.telemetry.health import Health
from worker.telemetry.metrics import PipelineMetrics
from worker.telemetry.names import METRICS, MetricName, MetricSpec
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
    "trace_headers",
    "without_trace_headers",
]
