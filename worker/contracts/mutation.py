"""The `route-mutations` topic: key = route name, value = the route's full definition or null."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, field_validator, model_validator

from worker.contracts.calibration import RESERVED_KEY_PREFIX
from worker.contracts.evolution import reader_config
from worker.contracts.limits import MAX_ROUTE_NAME_CHARS

Utterance = str


class ShippedEmbeddings(BaseModel):
    """Vectors computed by the publisher, so replicas need not embed.

    Vectors are little-endian float32, row-major, base64: a tenth of the size of JSON numbers.
    Replicas use them only when ``fingerprint`` equals their own model's.
    """

    model_config = reader_config()

    fingerprint: str = Field(min_length=1, description="Model fingerprint the vectors were made with.")
    dim: int = Field(ge=1, le=8192)
    utterances: str = Field(description="base64 float32 [len(utterances) x dim].")
    negative_utterances: str = Field(default="", description="base64 float32 [len(negatives) x dim].")

    def matrix(self, field: str, rows: int) -> npt.NDArray[np.float32]:
        """Decode one of the vector fields into a (rows, dim) array, checking its size."""
        raw = base64.b64decode(getattr(self, field), validate=True)
        if len(raw) != rows * self.dim * 4:
            raise ValueError(f"embeddings.{field} holds {len(raw)} bytes, expected {rows}x{self.dim} float32")
        return np.frombuffer(raw, dtype="<f4").reshape(rows, self.dim).astype(np.float32)

    @staticmethod
    def encode_matrix(vectors: npt.NDArray[np.float32]) -> str:
        """base64 of a float32 matrix, the wire form of a vector field."""
        return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


class RouteDefinition(BaseModel):
    """A route's complete current definition: each record replaces the previous one for its key."""

    model_config = reader_config("RouteDefinition")

    name: str = Field(min_length=1, max_length=MAX_ROUTE_NAME_CHARS, pattern=r"^\S(.*\S)?$")
    utterances: list[Utterance] = Field(min_length=1, description="Examples of what users say.")
    negative_utterances: list[Utterance] = Field(
        default_factory=list, description="Near misses that must NOT match this route."
    )
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, description="Minimum score to match.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    embeddings: ShippedEmbeddings | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith(RESERVED_KEY_PREFIX):
            raise ValueError(
                f"names starting with {RESERVED_KEY_PREFIX!r} are reserved for routeworker's records"
            )
        return name

    @field_validator("utterances", "negative_utterances")
    @classmethod
    def _non_empty_utterances(cls, values: list[str]) -> list[str]:
        for i, text in enumerate(values):
            if not text.strip():
                raise ValueError(f"utterance {i} is empty")
        return values

    @model_validator(mode="after")
    def _embeddings_fit(self) -> Self:
        if self.embeddings is not None:
            try:
                self.embeddings.matrix("utterances", len(self.utterances))
                self.embeddings.matrix("negative_utterances", len(self.negative_utterances))
            except (ValueError, binascii.Error) as exc:
                raise ValueError(str(exc)) from exc
        return self


@dataclass(frozen=True, slots=True)
class RouteMutation:
    """One record of the mutation log: a definition to upsert, or ``None`` to delete ``name``."""

    name: str
    definition: RouteDefinition | None

    @property
    def is_tombstone(self) -> bool:
        return self.definition is None


def definition_without_embeddings(definition: RouteDefinition) -> dict[str, Any]:
    """The parts of a definition that decide routing, for diffs and digests."""
    return definition.model_dump(mode="json", exclude={"embeddings"})
