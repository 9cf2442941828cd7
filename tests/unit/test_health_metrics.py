"""The built-in Prometheus renderer and the HTTP head parser, without sockets."""

from __future__ import annotations

import math
import threading
from http import HTTPStatus

import pytest

from worker.health import MetricFamily, SimpleMetrics, render
from worker.health.http import HttpError, Response, parse_request_head
from worker.health.metrics import format_value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (3.0, "3"),
        (-2, "-2"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (1e300, "1e+300"),
    ],
)
def test_values_are_written_as_prometheus_expects(value: float, text: str) -> None:
    assert format_value(value) == text


def test_nan_is_written_as_nan() -> None:
    assert format_value(math.nan) == "NaN"


def test_render_groups_help_type_and_escapes_labels() -> None:
    family = MetricFamily(
        "routeworker_routed_total",
        "counter",
        "Routed queries.\nBy route.",
        {(("route", 'say "hi"\\'),): 2.0, (): 5.0},
    )
    assert render([family]) == (
        "# HELP routeworker_routed_total Routed queries.\\nBy route.\n"
        "# TYPE routeworker_routed_total counter\n"
        "routeworker_routed_total 5\n"
        'routeworker_routed_total{route="say \\"hi\\"\\\\"} 2\n'
    )
    assert render([]) == ""


def test_simple_metrics_counters_and_gauges() -> None:
    metrics = SimpleMetrics()
    metrics.declare("routeworker_lag", "gauge", "Records behind.")
    metrics.set("routeworker_lag", 12, partition="0")
    metrics.set("routeworker_lag", 3, partition="0")
    metrics.inc("routeworker_dlq_total", code="schema")
    metrics.inc("routeworker_dlq_total", 2, code="schema")
    assert metrics.value("routeworker_lag", partition="0") == 3
    assert metrics.value("routeworker_dlq_total", code="schema") == 3
    assert metrics.value("routeworker_dlq_total", code="too_large") is None
    text = metrics.render()
    assert text.index("routeworker_dlq_total") < text.index("routeworker_lag")
    assert 'routeworker_lag{partition="0"} 3\n' in text
    assert "# TYPE routeworker_dlq_total counter\n" in text


@pytest.mark.parametrize(
    "misuse",
    [
        lambda m: m.inc("routeworker_x_total", -1),
        lambda m: m.set("routeworker_x_total", 1),  # declared as a counter by the first inc
        lambda m: m.declare("routeworker_x_total", "gauge", "conflicting kind"),
        lambda m: m.declare("9starts_with_digit", "gauge", ""),
        lambda m: m.inc("has-dash"),
        lambda m: m.inc("routeworker_y_total", **{"__reserved": "x"}),
        lambda m: m.inc("routeworker_y_total", **{"bad-label": "x"}),
    ],
)
def test_misuse_fails_where_it_is_written(misuse: object) -> None:
    metrics = SimpleMetrics()
    metrics.inc("routeworker_x_total")
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        misuse(metrics)  # type: ignore[operator]
    assert metrics.value("routeworker_x_total") == 1


def test_counters_are_thread_safe() -> None:
    metrics = SimpleMetrics()

    def bump() -> None:
        for _ in range(10_000):
            metrics.inc("routeworker_bumps_total")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.value("routeworker_bumps_total") == 40_000


def test_parse_request_head_keeps_path_and_headers() -> None:
    request = parse_request_head(
        b"GET /readyz?x=1 HTTP/1.0\r\nHost: pod\r\nUser-Agent: kube-probe/1.31\r\n\r\n"
    )
    assert (request.method, request.path, request.version) == ("GET", "/readyz", "HTTP/1.0")
    assert request.headers == {"host": "pod", "user-agent": "kube-probe/1.31"}


def test_parse_errors_carry_their_status() -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(b"DELETE /livez HTTP/1.1\r\n\r\n")
    assert info.value.status is HTTPStatus.METHOD_NOT_ALLOWED


def test_response_bytes() -> None:
    wire = Response(HTTPStatus.SERVICE_UNAVAILABLE, "catching up\n").encode()
    assert wire.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Length: 12\r\n" in wire
    assert b"Connection: close\r\n" in wire
    assert wire.endswith(b"\r\n\r\ncatching up\n")
