"""Fault-injection hooks for the fault suite, in the manner of fail-rs and TiKV's failpoints: a named
point in the code that fails on demand inside a real ``routeworker run`` process.

They exist for failures no real input produces: no query makes the router raise (its input is a
normalised vector from the encoder), so without a hook the isolation of a poison query (search.py)
could be tested only in-process. ``benchmarks/faults.py`` sets one to run that path end to end on
Apache Kafka: the query becomes a dead letter, the rest of its batch and the stream go on.

Every hook is OFF unless its environment variable is set (it is not a setting: ``config show`` and
the settings file know nothing of it), and a replica that starts with one set logs a warning that
names it. Never set one in production.

- ``ROUTEWORKER_FAILPOINT_ROUTE_QUERY``: the router step raises :class:`FailpointHit` for every query
  whose text contains this string (on the search thread, before the router decides, so the
  pipeline handles it as it would a router bug on that query).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ROUTE_QUERY_ENV = "ROUTEWORKER_FAILPOINT_ROUTE_QUERY"


class FailpointHit(RuntimeError):
    """An active failpoint fired (fault injection, never a real failure)."""


@dataclass(frozen=True, slots=True)
class RouteFailpoint:
    """Routing fails for a query whose text contains ``marker``."""

    marker: str

    def check(self, texts: Iterable[str]) -> None:
        """Raise :class:`FailpointHit` if one of ``texts`` (the queries about to be decided) is poisoned."""
        for text in texts:
            if self.marker in text:
                raise FailpointHit(f"failpoint {ROUTE_QUERY_ENV}: the query text contains {self.marker!r}")


def route_failpoint(environ: Mapping[str, str] | None = None) -> RouteFailpoint | None:
    """The route failpoint the environment sets, or None (the default: off)."""
    marker = (os.environ if environ is None else environ).get(ROUTE_QUERY_ENV, "")
    if not marker:
        return None
    logger.warning(
        "fault injection is ON: %s=%r makes routing fail for queries containing it (never in production)",
        ROUTE_QUERY_ENV,
        marker,
    )
    return RouteFailpoint(marker)
