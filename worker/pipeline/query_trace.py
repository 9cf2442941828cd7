"""Trace context of routed intents: each continues its query's trace, or else the batch's.

A query that arrives with a W3C ``traceparent`` gets a span of its own in that trace (linked to the
batch span, which belongs to the worker's trace); its routed intent carries that span's context.
A query without one is part of the batch's trace only, and its intent carries the batch span's
context: one span per batch instead of one per query where nobody upstream is tracing.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Link, Span, Tracer

from worker.pipeline.decode import Accepted
from worker.pipeline.types import OutHeaders
from worker.routing import Decision
from worker.telemetry import extract_context, trace_headers, without_trace_headers


class QueryTracer:
    """Made inside the batch span (the current span); hands out the headers of each intent."""

    def __init__(self, tracer: Tracer, started_ns: int) -> None:
        self._tracer = tracer
        self._started_ns = started_ns
        self._batch_span = trace.get_current_span()
        self._batch_headers: OutHeaders | None = None
        self.spans: list[Span] = []

    def headers(self, accepted: Accepted, decision: Decision) -> OutHeaders:
        """The query's own headers, with a ``traceparent`` for its routed intent."""
        kept = [(k, v) for k, v in without_trace_headers(accepted.record.headers) if v is not None]
        upstream = extract_context(accepted.record.headers)
        if upstream is None:
            if self._batch_headers is None:
                self._batch_headers = trace_headers(trace.set_span_in_context(self._batch_span))
            return kept + self._batch_headers
        span = self._tracer.start_span(
            "routeworker.route",
            context=upstream,
            links=[Link(self._batch_span.get_span_context())],
            start_time=self._started_ns,
            attributes={
                "routeworker.query_id": accepted.query.id,
                "messaging.kafka.offset": accepted.record.offset,
                "routeworker.route": decision.route or "",
                "routeworker.score": decision.score,
            },
        )
        self.spans.append(span)
        return kept + trace_headers(trace.set_span_in_context(span))

    def end(self) -> None:
        """End the per-query spans (once their intents are acknowledged)."""
        for span in self.spans:
            span.end()
