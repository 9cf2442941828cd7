"""The `queries` topic: what upstream systems produce."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.contracts.evolution import reader_config
from worker.contracts.limits import MAX_ID_CHARS, MAX_TOP_N


class Query(BaseModel):
    """One user query to route. The record key (optional) keeps per-conversation order."""

    model_config = reader_config("Query")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="Caller's id; echoed as query_id.")
    text: str = Field(min_length=1, description="The user's words; must be non-empty after stripping.")
    top_n: int | None = Field(
        default=None, ge=1, le=MAX_TOP_N, description="How many candidates to return (default: settings)."
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Passed through untouched to the routed intent."
    )
    explain: bool = Field(
        default=False, description="Ask for the routed intent's `explanation`: why it got its answer."
    )
