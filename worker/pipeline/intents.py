"""Building the routed intent of a query from the router's decision (the DESIGN.md contract)."""

from __future__ import annotations

import time

from worker.contracts import CandidateScore, Explanation, NearUtterance, RoutedIntent, RouteReason, Timings
from worker.pipeline.decode import Accepted
from worker.routing import Decision, TableVersion
from worker.routing.explain import Explanation as EngineExplanation


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
    explanation: EngineExplanation | None = None,
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
        explanation=None if explanation is None else render_explanation(explanation),
    )


def render_explanation(explanation: EngineExplanation) -> Explanation:
    """The engine's explanation in the routed intent's contract."""
    return Explanation(
        rule=explanation.rule,
        threshold=explanation.threshold,
        margin=explanation.margin,
        gap_to_runner_up=explanation.gap_to_runner_up,
        head_weight=explanation.head_weight,
        routes=[
            RouteReason(
                route=r.route,
                score=r.score,
                knn_score=r.knn_score,
                threshold=r.threshold,
                head_probability=r.head_probability,
                head_share=r.head_share,
                nearest=[NearUtterance(utterance=n.utterance, similarity=n.similarity) for n in r.nearest],
            )
            for r in explanation.routes
        ],
        routes_version=render_version(explanation.routes_version),
    )
