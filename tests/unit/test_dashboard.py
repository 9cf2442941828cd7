"""The Grafana dashboard: what it covers, and that its queries are well formed.

Whether every metric it queries is exported is checked against a real worker's /metrics in
tests/integration/test_dashboard_metrics.py.
"""

from __future__ import annotations

from dashboard_queries import METRIC, dashboard, queried_metrics


def test_the_dashboard_covers_what_operators_watch() -> None:
    names = queried_metrics()
    assert {
        "routeworker_queries_routed_total",  # throughput
        "routeworker_query_latency_seconds_bucket",  # latency quantiles
        "routeworker_consumer_lag",  # lag per partition
        "routeworker_queries_dead_lettered_total",  # DLQ by code
        "routeworker_cache_hits_total",  # cache hit ratio
        "routeworker_replica_ready",  # readiness
        "routeworker_mutations_apply_lag_seconds_bucket",  # mutation-apply lag
        "routeworker_contracts_unknown_fields_total",  # newer writers during a rolling upgrade
    } <= names
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    assert "by (topic, partition)" in exprs
    assert "by (error_code)" in exprs
    assert "histogram_quantile(0.99" in exprs


def test_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["title"], panel
        assert panel["targets"], panel
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            # counters are read as rates, never as raw totals
            for name in METRIC.findall(expr):
                if name.endswith("_total") or name.endswith("_bucket"):
                    assert f"rate({name}" in expr, expr
