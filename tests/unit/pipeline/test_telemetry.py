"""Telemetry: the closed list of metrics, Prometheus text, W3C propagation, health state."""

from __future__ import annotations

import re

from opentelemetry import trace

from worker.telemetry import (
    METRICS,
    MetricName,
    Telemetry,
    extract_context,
    trace_headers,
    without_trace_headers,
)

UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_every_metric_name_has_one_spec_and_a_routeworker_prefix() -> None:
    assert set(METRICS) == set(MetricName)
    assert all(name.startswith("routeworker.") for name in MetricName)


def test_prometheus_text_holds_counters_histograms_and_gauges(telemetry: Telemetry) -> None:
    metrics = telemetry.metrics
    metrics.decisions(routed=3, no_match=1)
    metrics.dead_lettered("invalid_json", 2)
    metrics.batch_size(4)
    metrics.end_to_end_ms([12.0, 40.0])
    metrics.consumer_lag("queries", 1, 17)
    metrics.cache_lookups(hits=3, misses=1)
    text = telemetry.metrics_text()
    assert "routeworker_queries_routed_total 3\n" in text
    assert "routeworker_queries_no_match_total 1\n" in text
    assert 'routeworker_queries_dead_lettered_total{error_code="invalid_json"} 2\n' in text
    assert 'routeworker_query_latency_bucket{le="20"} 1\n' in text
    assert 'routeworker_query_latency_bucket{le="+Inf"} 2\n' in text
    assert "routeworker_query_latency_count 2\n" in text
    assert 'routeworker_consumer_lag{partition="1",topic="queries"} 17\n' in text
    assert "routeworker_cache_hit_ratio 0.75\n" in text
    assert "# TYPE routeworker_batch_size histogram\n" in text
    # every sample line is name{labels} value
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r"[a-z_]+(\{[^}]*\})? [-+0-9.eInf]+", line), line


def test_nothing_recorded_renders_nothing_but_the_ratio_gauge_stays_silent(telemetry: Telemetry) -> None:
    assert "hit_ratio" not in telemetry.metrics_text()


def test_upstream_trace_context_is_extracted_from_headers_and_injected_again(telemetry: Telemetry) -> None:
    context = extract_context([("other", b"x"), ("traceparent", UPSTREAM.encode())])
    assert context is not None
    with telemetry.tracer.start_as_current_span("child", context=context) as span:
        headers = dict(trace_headers(trace.set_span_in_context(span)))
    trace_id, span_id = headers["traceparent"].decode().split("-")[1:3]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_id == format(span.get_span_context().span_id, "016x")


def test_missing_or_garbled_traceparent_gives_no_context() -> None:
    assert extract_context(None) is None
    assert extract_context([("traceparent", b"\xff\xfe")]) is None
    assert extract_context([("traceparent", b"not-a-traceparent")]) is None


def test_trace_headers_are_replaced_not_duplicated() -> None:
    kept = without_trace_headers([("traceparent", b"a"), ("TraceState", b"b"), ("tenant", b"c")])
    assert kept == [("tenant", b"c")]


def test_health_readiness_and_liveness(telemetry: Telemetry) -> None:
    health = telemetry.health
    assert health.liveness()
    assert health.readiness() == (False, "starting")
    health.set_state("consuming", ready=True)
    assert health.readiness() == (True, "consuming")
    health.fail("broker gone")
    assert not health.liveness()
    assert health.readiness() == (False, "failed: broker gone")
