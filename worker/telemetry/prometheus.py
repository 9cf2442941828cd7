"""OpenTelemetry metric data rendered in the Prometheus text exposition format (version 0.0.4).

The health server serves this text on /metrics; it needs no Prometheus client library because the
instruments are OpenTelemetry's and an in-memory reader collects them on each scrape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)

_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(name: str) -> str:
    """``routeworker.queries.routed`` -> ``routeworker_queries_routed``."""
    return _INVALID.sub("_", name)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, object] | None, extra: Mapping[str, str] | None = None) -> str:
    pairs = {**{prometheus_name(k): v for k, v in (attributes or {}).items()}, **(extra or {})}
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items())) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _metrics(data: MetricsData | None) -> Iterable[Metric]:
    if data is None:
        return
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def _render_metric(metric: Metric) -> list[str]:
    name = prometheus_name(metric.name)
    data = metric.data
    lines: list[str] = []
    if isinstance(data, Sum):
        kind = "counter" if data.is_monotonic else "gauge"
        sample = f"{name}_total" if data.is_monotonic else name
        lines.append(f"# TYPE {name} {kind}")
        for point in data.data_points:
            assert isinstance(point, NumberDataPoint)
            lines.append(f"{sample}{_labels(point.attributes)} {_number(point.value)}")
    elif isinstance(data, Gauge):
        lines.append(f"# TYPE {name} gauge")
        for point in data.data_points:
            lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
    elif isinstance(data, Histogram):
        lines.append(f"# TYPE {name} histogram")
        for hist in data.data_points:
            assert isinstance(hist, HistogramDataPoint)
            cumulative = 0
            bounds = [*hist.explicit_bounds, math.inf]
            for bound, count in zip(bounds, hist.bucket_counts, strict=True):
                cumulative += count
                le = {"le": _number(bound)}
                lines.append(f"{name}_bucket{_labels(hist.attributes, le)} {cumulative}")
            lines.append(f"{name}_sum{_labels(hist.attributes)} {_number(hist.sum)}")
            lines.append(f"{name}_count{_labels(hist.attributes)} {hist.count}")
    else:  # exponential histograms are not configured anywhere in routeworker
        return []
    # annotation units like "{record}" say nothing a reader needs; real units (ms, 1) are kept
    unit = f" ({metric.unit})" if metric.unit and not metric.unit.startswith("{") else ""
    return [f"# HELP {name} {_escape(metric.description)}{unit}", *lines]


def render_prometheus(data: MetricsData | None) -> str:
    """The exposition text of every metric in ``data`` (empty text when nothing was recorded)."""
    out: list[str] = []
    for metric in sorted(_metrics(data), key=lambda m: m.name):
        out.extend(_render_metric(metric))
    return "\n".join(out) + "\n" if out else ""
