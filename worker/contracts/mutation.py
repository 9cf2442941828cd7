"""The `route-mutations` topic: key = route name, value = the route's full definition or null."""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt
import pybase64
from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

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
    #: matrices already decoded, by field: held by the model itself, not by a cache keyed on it
    #: (a dictionary keyed on a frozen model hashed and compared its 10 KB strings on every look-up:
    #: a tenth of a shipped route's decoding in a 1M-vector replay)
    _decoded: dict[str, npt.NDArray[np.float32]] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # the fields alone: whether a matrix was decoded yet (the private cache) changes nothing
        if not isinstance(other, ShippedEmbeddings):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple[str, int, str, str]:
        return (self.fingerprint, self.dim, self.utterances, self.negative_utterances)

    def matrix(self, field: str, rows: int) -> npt.NDArray[np.float32]:
        """Decode one of the vector fields into a read-only (rows, dim) array, checking its size.

        Decoded once: validation decodes every matrix, and a replica that then uses the vectors
        gets that same array (a 200k-route replay decoded each one twice).
        """
        # the private attributes' own dict: ``self._decoded`` goes through pydantic's __getattr__
        decoded: dict[str, npt.NDArray[np.float32]] = self.__pydantic_private__["_decoded"]  # type: ignore[index]
        matrix = decoded.get(field)
        if matrix is None:
            # pybase64 (SIMD): the standard library's decoder was a third of a shipped route's
            # decoding (45 us of 10 KB each, 200k of them in a 1M-vector replay); same errors
            raw = pybase64.b64decode(getattr(self, field), validate=True)
            if len(raw) % (self.dim * 4):
                raise ValueError(f"embeddings.{field} holds {len(raw)} bytes, not rows of {self.dim} float32")
            # read-only, no copy: one array over the bytes (frombuffer + reshape kept two arrays per
            # matrix alive, 200k routes long), and one shared empty matrix per dimension (most
            # routes have no negatives)
            shape = (len(raw) // (self.dim * 4), self.dim)
            matrix = decoded[field] = np.ndarray(shape, dtype="<f4", buffer=raw) if raw else _empty(self.dim)
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


@functools.cache
def _empty(dim: int) -> npt.NDArray[np.float32]:
    empty = np.zeros((0, dim), dtype="<f4")
    empty.flags.writeable = False
    return empty


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


_DEFINITION_KEYS = frozenset(RouteDefinition.model_fields)
_EMBEDDINGS_KEYS = frozenset(ShippedEmbeddings.model_fields)


def constructed_definition(document: dict[str, Any]) -> RouteDefinition | None:
    """``document`` as a :class:`RouteDefinition` made without pydantic's validation, when it has
    exactly the shape this version writes and passes every check the model makes; else None, and
    the caller validates it in full (which then accepts it, or names what is wrong).

    A 1M-vector replay decodes 200k definitions, and validation was a third of each. The checks
    here are stricter than the model's, never looser: only field names this version knows (so no
    unknown fields to count), exact JSON types (an ``int`` threshold is made a float, as
    validation does), names that are printable with no space at either end (these match the
    model's pattern under any regex engine), and the shipped matrices decoded and sized by the
    model's own :meth:`ShippedEmbeddings.matrix`. Whatever this accepts, validation accepts as an
    equal definition (a test checks both ways over generated documents).
    """
    if not document.keys() <= _DEFINITION_KEYS:
        return None
    name = document.get("name")
    if (
        type(name) is not str
        or not 0 < len(name) <= MAX_ROUTE_NAME_CHARS
        or not name.isprintable()
        or name[0] == " "
        or name[-1] == " "
        or name.startswith(RESERVED_KEY_PREFIX)
    ):
        return None
    utterances = document.get("utterances")
    negatives = document.get("negative_utterances", [])
    if not _texts(utterances) or not utterances or not _texts(negatives):
        return None
    threshold = document.get("threshold")
    if threshold is not None:
        if type(threshold) is int:
            threshold = float(threshold)
        if type(threshold) is not float or not -1.0 <= threshold <= 1.0:
            return None
    metadata = document.get("metadata", {})
    if type(metadata) is not dict:
        return None
    embeddings = document.get("embeddings")
    shipped = None
    if embeddings is not None:
        shipped = _constructed_embeddings(embeddings, len(utterances), len(negatives))
        if shipped is None:
            return None
    fields = {
        "name": name,
        "utterances": utterances,
        "negative_utterances": negatives,
        "threshold": threshold,
        "metadata": metadata,
        "embeddings": shipped,
    }
    return _made(RouteDefinition, fields, set(document), None)


_M = TypeVar("_M", bound=BaseModel)


def _made(
    model: type[_M], fields: dict[str, Any], fields_set: set[str], private: dict[str, Any] | None
) -> _M:
    """An instance of ``model`` holding ``fields``, as ``model_construct`` makes one (its generic
    path, defaults and aliases resolved per call, took 13 us; every field is given here)."""
    made = model.__new__(model)
    setattr_ = object.__setattr__
    setattr_(made, "__dict__", fields)
    setattr_(made, "__pydantic_fields_set__", fields_set)
    setattr_(made, "__pydantic_extra__", None)
    setattr_(made, "__pydantic_private__", private)
    return made


def _texts(values: object) -> bool:
    """Whether ``values`` is a list of strings none of which is blank (the model's utterance check)."""
    return type(values) is list and all(type(text) is str and text.strip() for text in values)


def _constructed_embeddings(document: object, utterances: int, negatives: int) -> ShippedEmbeddings | None:
    if type(document) is not dict or not document.keys() <= _EMBEDDINGS_KEYS:
        return None
    fingerprint, dim = document.get("fingerprint"), document.get("dim")
    vectors, negative_vectors = document.get("utterances"), document.get("negative_utterances", "")
    if (
        type(fingerprint) is not str
        or not fingerprint
        or type(dim) is not int
        or not 1 <= dim <= 8192
        or type(vectors) is not str
        or type(negative_vectors) is not str
    ):
        return None
    fields = {
        "fingerprint": fingerprint,
        "dim": dim,
        "utterances": vectors,
        "negative_utterances": negative_vectors,
    }
    shipped = _made(ShippedEmbeddings, fields, set(document), {"_decoded": {}})
    try:
        shipped.matrix("utterances", utterances)
        shipped.matrix("negative_utterances", negatives)
    except (ValueError, binascii.Error):
        return None  # validation names the fault
    return shipped


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
