"""Telemetry: the closed list of metrics, their Prometheus names, W3C propagation."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

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


def test_prometheus_names_follow_the_conventions(telemetry: Telemetry) -> None:
    metrics = telemetry.metrics
    metrics.decisions(routed=3, no_match=1)
    metrics.dead_lettered("invalid_json", 2)
    metrics.batch_size(4)
    metrics.end_to_end_ms([12.0, 40.0])
    metrics.consumer_lag("queries", 1, 17)
    metrics.cache_lookups(hits=3, misses=1)
    metrics.mutation_apply_lag([0.3])
    value = telemetry.registry.get_sample_value
    assert value("routeworker_queries_routed_total") == 3
    assert value("routeworker_queries_no_match_total") == 1
    assert value("routeworker_queries_dead_lettered_total", {"error_code": "invalid_json"}) == 2
    # durations in seconds, the Prometheus base unit
    assert value("routeworker_query_latency_seconds_bucket", {"le": "0.02"}) == 1
    assert value("routeworker_query_latency_seconds_bucket", {"le": "+Inf"}) == 2
    assert value("routeworker_query_latency_seconds_sum") == pytest.approx(0.052)
    assert value("routeworker_mutations_apply_lag_seconds_count") == 1
    assert value("routeworker_consumer_lag", {"partition": "1", "topic": "queries"}) == 17
    assert value("routeworker_cache_hit_ratio") == 0.75
    assert value("routeworker_replica_ready") == 0
    text = telemetry.metrics_text()
    assert "# TYPE routeworker_batch_size histogram\n" in text
    assert "otel_scope_name" not in text  # one target_info series carries the resource instead
    assert 'target_info{service_instance_id="replica-test"' in text
    # the text parses as Prometheus exposition
    assert {f.name for f in text_string_to_metric_families(text)} >= {"routeworker_queries_routed"}


def test_the_readiness_gauge_follows_health(telemetry: Telemetry) -> None:
    health = telemetry.health
    health.routes_caught_up()
    health.partitions_assigned({("queries", 0)})
    assert telemetry.registry.get_sample_value("routeworker_replica_ready") == 1
    health.rebalance_started()
    assert telemetry.registry.get_sample_value("routeworker_replica_ready") == 0


def test_nothing_recorded_means_no_hit_ratio(telemetry: Telemetry) -> None:
    assert telemetry.registry.get_sample_value("routeworker_cache_hit_ratio") is None


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
