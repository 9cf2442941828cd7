"""Building the routed intent of a query from the router's decision (the DESIGN.md contract)."""

from __future__ import annotations

import time

from worker.contracts import CandidateScore, RoutedIntent, Timings
from worker.pipeline.decode import Accepted
from worker.routing import Decision, TableVersion


def render_version(version: TableVersion) -> dict[str, int]:
    """``((0, 17), (1, 4))`` -> ``{"0": 17, "1": 4}``: mutation-log partition -> next offset applied."""
    return {str(partition): offset for partition, offset in version}


def _ms(value: float) -> float:
    return round(max(value, 0.0), 3)


def build_intent(
    accepted: Accepted,
    decision: Decision,
    top_n: int,
    *,
    model: str,
    worker: str,
    batch_started_ms: float,
    embed_ms: float,
    search_ms: float,
    now_ms: float | None = None,
) -> RoutedIntent:
    """The routed intent of one query; ``top_n`` trims the (best-first) candidates."""
    produced = time.time() * 1000 if now_ms is None else now_ms
    made = accepted.record.timestamp_ms
    return RoutedIntent(
        query_id=accepted.query.id,
        route=decision.route,
        score=decision.score,
        candidates=[CandidateScore(route=c.route, score=c.score) for c in decision.candidates[:top_n]],
        routes_version=render_version(decision.routes_version),
        model=model,
        worker=worker,
        timings=Timings(
            queue_ms=_ms(batch_started_ms - made),
            embed_ms=_ms(embed_ms),
            search_ms=_ms(search_ms),
            total_ms=_ms(produced - made),
        ),
        metadata=accepted.query.metadata,
    )
