"""The `routed-intents` topic: what downstream systems consume."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CandidateScore(BaseModel):
    """One of the top-n routes for a query, best first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str
    score: float


class Timings(BaseModel):
    """Where the time went for the batch that carried this query, in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_ms: float = Field(description="From the query's broker timestamp to the start of its batch.")
    embed_ms: float
    search_ms: float
    total_ms: float = Field(description="From the query's broker timestamp to the routed intent's creation.")


class RoutedIntent(BaseModel):
    """The decision for one query. ``route`` is null when nothing matched well enough."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RoutedIntent")

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
