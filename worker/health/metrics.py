"""A small Prometheus text-format renderer for counters and gauges (exposition format 0.0.4).

The pipeline brings its own renderer; this one is the health server's default and the building
block for anything that only needs a handful of numbers. Names and label names are validated when a
sample is recorded, so a bad name fails where it is written, not when Prometheus scrapes.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricKind = Literal["counter", "gauge"]
Labels = tuple[tuple[str, str], ...]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric: its name, kind, help text and its samples keyed by label set."""

    name: str
    kind: MetricKind
    help: str
    samples: Mapping[Labels, float]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, ±Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render(families: Iterable[MetricFamily]) -> str:
    """Render metric families in the Prometheus text format, one ``# HELP``/``# TYPE`` per family."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.help)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in sorted(family.samples.items()):
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            selector = f"{{{label_text}}}" if labels else ""
            out.append(f"{family.name}{selector} {format_value(value)}")
    return "\n".join(out) + "\n" if out else ""


def label_set(labels: Mapping[str, str]) -> Labels:
    """A validated, sorted label set usable as a dictionary key."""
    for key in labels:
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {key!r}")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class SimpleMetrics:
    """A thread-safe dictionary of counters and gauges that renders itself.

    Counters only go up (``inc``); gauges are set. Each name has one kind and one help text,
    fixed by the first ``declare`` (or first use, with an empty help).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, MetricKind] = {}
        self._help: dict[str, str] = {}
        self._samples: dict[str, dict[Labels, float]] = {}

    def declare(self, name: str, kind: MetricKind, help_text: str) -> None:
        """Fix a metric's kind and help text; re-declaring with another kind is an error."""
        if not _NAME.match(name):
            raise ValueError(f"invalid Prometheus metric name {name!r}")
        with self._lock:
            known = self._kinds.get(name)
            if known is not None and known != kind:
                raise ValueError(f"metric {name} is a {known}, not a {kind}")
            self._kinds[name] = kind
            self._help[name] = help_text
            self._samples.setdefault(name, {})

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to a counter."""
        if amount < 0:
            raise ValueError(f"counter {name} cannot decrease (got {amount})")
        key = self._key(name, "counter", labels)
        with self._lock:
            samples = self._samples[name]
            samples[key] = samples.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        key = self._key(name, "gauge", labels)
        with self._lock:
            self._samples[name][key] = float(value)

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample, or None when it was never recorded."""
        with self._lock:
            return self._samples.get(name, {}).get(label_set(labels))

    def render(self) -> str:
        """The Prometheus text of every metric, names in sorted order."""
        with self._lock:
            families = [
                MetricFamily(name, self._kinds[name], self._help[name], dict(self._samples[name]))
                for name in sorted(self._kinds)
            ]
        return render(families)

    def _key(self, name: str, kind: MetricKind, labels: Mapping[str, str]) -> Labels:
        if name not in self._kinds:
            self.declare(name, kind, "")
        elif self._kinds[name] != kind:
            raise ValueError(f"metric {name} is a {self._kinds[name]}, not a {kind}")
        return label_set(labels)
