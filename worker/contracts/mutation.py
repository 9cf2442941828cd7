"""The `route-mutations` topic: key = route name, value = the route's full definition or null."""

from __future__ import annotations

import base64
import binascii
import weakref
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pybase64
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
        """Decode one of the vector fields into a read-only (rows, dim) array, checking its size.

        Decoded once: validation decodes every matrix, and a replica that then uses the vectors
        gets that same array (a 200k-route replay decoded each one twice).
        """
        decoded = _DECODED.get(self)
        if decoded is None:
            decoded = _DECODED.setdefault(self, {})
        matrix = decoded.get(field)
        if matrix is None:
            # pybase64 (SIMD): the standard library's decoder was a third of a shipped route's
            # decoding (45 us of 10 KB each, 200k of them in a 1M-vector replay); same errors
            raw = pybase64.b64decode(getattr(self, field), validate=True)
            if len(raw) % (self.dim * 4):
                raise ValueError(f"embeddings.{field} holds {len(raw)} bytes, not rows of {self.dim} float32")
            # read-only, no copy
            matrix = decoded[field] = np.frombuffer(raw, dtype="<f4").reshape(-1, self.dim)
        if matrix.shape[0] != rows:
            raise ValueError(
                f"embeddings.{field} holds {matrix.shape[0] * self.dim * 4} bytes, "
                f"expected {rows}x{self.dim} float32"
            )
        return matrix

    @staticmethod
    def encode_matrix(vectors: npt.NDArray[np.float32]) -> str:
        """base64 of a float32 matrix, the wire form of a vector field."""
        return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


#: matrices already decoded, by the embeddings they came from (equal embeddings, equal matrices)
_DECODED: weakref.WeakKeyDictionary[ShippedEmbeddings, dict[str, npt.NDArray[np.float32]]] = (
    weakref.WeakKeyDictionary()
)


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
