"""W3C trace-context propagation through Kafka record headers."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

KafkaHeaders = Sequence[tuple[str, bytes | None]]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[KafkaHeaders]):
    """Reads header values (bytes) as text; a header that is not UTF-8 counts as absent."""

    def get(self, carrier: KafkaHeaders, key: str) -> list[str] | None:
        found = []
        for name, value in carrier:
            if name.lower() == key and value is not None:
                try:
                    found.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    continue
        return found or None

    def keys(self, carrier: KafkaHeaders) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("utf-8")))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()


def extract_context(headers: KafkaHeaders | None) -> Context | None:
    """The upstream trace context carried by a record's ``traceparent`` header, if valid."""
    if not headers:
        return None
    context = _PROPAGATOR.extract(headers, getter=_GETTER)
    return context or None


def trace_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """``traceparent`` (and ``tracestate``) headers for the span current in ``context``."""
    carrier: list[tuple[str, bytes]] = []
    _PROPAGATOR.inject(carrier, context=context, setter=_SETTER)
    return carrier


def without_trace_headers(headers: KafkaHeaders | None) -> list[tuple[str, bytes | None]]:
    """The headers minus trace context, so a fresh ``traceparent`` replaces the upstream one."""
    return [(k, v) for k, v in headers or () if k.lower() not in (TRACEPARENT, TRACESTATE)]
