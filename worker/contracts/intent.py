"""The `routed-intents` topic: what downstream systems consume."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.contracts.evolution import reader_config


class CandidateScore(BaseModel):
    """One of the top-n routes for a query, best first."""

    model_config = reader_config()

    route: str
    score: float


class Timings(BaseModel):
    """Where the time went for the batch that carried this query, in milliseconds."""

    model_config = reader_config()

    queue_ms: float = Field(description="From the query's broker timestamp to the start of its batch.")
    embed_ms: float
    search_ms: float
    total_ms: float = Field(description="From the query's broker timestamp to the routed intent's creation.")


class NearUtterance(BaseModel):
    """One of a route's utterances and its similarity with the query."""

    model_config = reader_config()

    utterance: str
    similarity: float


class RouteReason(BaseModel):
    """How one of the best routes got its score."""

    model_config = reader_config()

    route: str
    score: float = Field(description="The route's score as ranked (nearest utterances and head blended).")
    knn_score: float = Field(description="The score from the route's nearest utterances alone.")
    threshold: float = Field(description="The threshold this route would have to reach to win.")
    head_probability: float | None = Field(
        description="The learned head's probability; null when no head knows this route."
    )
    head_share: float | None = Field(description="Part of `score` that came from the head (0..1).")
    nearest: list[NearUtterance] = Field(description="The route's utterances nearest the query, best first.")


class Explanation(BaseModel):
    """Why the query got its answer (present when the query asked for it, or the worker explains all)."""

    model_config = reader_config()

    rule: Literal["matched", "below_threshold", "within_margin", "no_candidates"] = Field(
        description="What decided: the winner passed, or (no match) the rule that rejected the best route."
    )
    threshold: float | None = Field(description="Threshold the best route had to reach.")
    margin: float = Field(description="How much the best route had to beat the runner-up by.")
    gap_to_runner_up: float | None = Field(description="Best score minus the runner-up's.")
    head_weight: float = Field(description="Weight of the learned head in known routes' scores (0: none).")
    routes: list[RouteReason] = Field(description="The best routes, best first.")
    routes_version: dict[str, int] = Field(description="The route-table state explained.")


class RoutedIntent(BaseModel):
    """The decision for one query. ``route`` is null when nothing matched well enough."""

    model_config = reader_config("RoutedIntent")

    query_id: str
    route: str | None
    score: float
    candidates: list[CandidateScore]
    routes_version: dict[str, int] = Field(
        description="Route-table state that decided: mutation-log partition -> next offset applied."
    )
    model: str = Field(description="Fingerprint of the embedding model.")
    worker: str = Field(description="Replica id.")
    timings: Timings
    metadata: dict[str, Any] | None = None
    explanation: Explanation | None = Field(
        default=None,
        description="Why this answer, when the query set `explain` (or the worker explains all).",
    )
