"""Health and metrics endpoints of a replica: `/livez`, `/readyz`, `/metrics` (stdlib HTTP only)."""

from worker.health.metrics import CONTENT_TYPE, MetricFamily, SimpleMetrics, render
from worker.health.probe import probe
from worker.health.server import HealthServer, Liveness, MetricsText, Readiness

__all__ = [
    "CONTENT_TYPE",
    "HealthServer",
    "Liveness",
    "MetricFamily",
    "MetricsText",
    "Readiness",
    "SimpleMetrics",
    "probe",
    "render",
]
