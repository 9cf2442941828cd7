"""The calibration record of the `route-mutations` topic: head and thresholds, made once, shipped.

It shares the topic with the route records under one reserved key (:data:`CALIBRATION_KEY`), so the
log orders it among the route changes and compaction keeps only the latest. A route name can never
be that key: names in the reserved namespace (:data:`RESERVED_KEY_PREFIX`) are refused. A replica
that predates this record reads it as a route definition that breaks its schema (it has no
``name`` or ``utterances``), skips it and counts it, like every replica of its version.

Weights are little-endian float16, row-major, base64: a head for 2,000 routes (hidden layer 512)
is about 3.3 MB of JSON, beyond Kafka's default 1 MB record limit, so `routeworker topics create`
raises ``max.message.bytes`` on the mutation topic (see ``worker.replication.topics``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, model_validator

from worker.contracts.evolution import reader_config
from worker.contracts.limits import MAX_ROUTE_NAME_CHARS

#: keys of records that are not routes start with this; route names may not
RESERVED_KEY_PREFIX = "__routeworker__/"
#: the key of the calibration record
CALIBRATION_KEY = RESERVED_KEY_PREFIX + "calibration"

_HEX_DIGEST = r"^[0-9a-f]{64}$"


class HalfMatrix(BaseModel):
    """A float16 matrix: ``rows x columns`` little-endian values, row-major, base64."""

    model_config = reader_config()

    rows: int = Field(ge=0, le=1 << 20)
    columns: int = Field(ge=0, le=1 << 20)
    float16: str = Field(description="base64 of rows x columns little-endian float16 values.")

    @model_validator(mode="after")
    def _size_fits(self) -> Self:
        try:
            raw = base64.b64decode(self.float16, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"float16 is not base64: {exc}") from exc
        if len(raw) != self.rows * self.columns * 2:
            raise ValueError(f"float16 holds {len(raw)} bytes, expected {self.rows}x{self.columns}x2")
        return self

    def array(self) -> npt.NDArray[np.float32]:
        """The matrix as float32 (exact: every float16 is a float32)."""
        raw = base64.b64decode(self.float16)
        return np.frombuffer(raw, dtype="<f2").reshape(self.rows, self.columns).astype(np.float32)

    @classmethod
    def of(cls, matrix: npt.ArrayLike) -> HalfMatrix:
        """The wire form of ``matrix`` (a vector becomes one row), rounded to float16."""
        array = np.asarray(matrix, dtype=np.float32)
        array = array.reshape(1, -1) if array.ndim == 1 else array
        half = np.ascontiguousarray(array, dtype="<f2")
        return cls(
            rows=half.shape[0], columns=half.shape[1], float16=base64.b64encode(half.tobytes()).decode()
        )


class ShippedHead(BaseModel):
    """The learned head: ``relu(scale * x @ hidden_weights + hidden_bias) @ weights + bias``, or
    ``scale * x @ weights + bias`` without a hidden layer; one output column per calibrated route."""

    model_config = reader_config()

    scale: float = Field(gt=0)
    hidden_weights: HalfMatrix | None = Field(default=None, description="dim x hidden")
    hidden_bias: HalfMatrix | None = Field(default=None, description="1 x hidden")
    weights: HalfMatrix = Field(description="(hidden or dim) x routes")
    bias: HalfMatrix = Field(description="1 x routes")

    @model_validator(mode="after")
    def _shapes_fit(self) -> Self:
        if (self.hidden_weights is None) != (self.hidden_bias is None):
            raise ValueError("hidden_weights and hidden_bias come together")
        if self.hidden_weights is not None and self.hidden_bias is not None:
            if self.hidden_bias.rows != 1 or self.hidden_bias.columns != self.hidden_weights.columns:
                raise ValueError("hidden_bias must be 1 x hidden")
            if self.weights.rows != self.hidden_weights.columns:
                raise ValueError("weights must have one row per hidden unit")
        if self.bias.rows != 1 or self.bias.columns != self.weights.columns:
            raise ValueError("bias must be 1 x routes")
        return self


class CalibratedRoute(BaseModel):
    """A route the calibration was made for, as it was then."""

    model_config = reader_config()

    name: str = Field(min_length=1, max_length=MAX_ROUTE_NAME_CHARS)
    training_digest: str = Field(
        pattern=_HEX_DIGEST, description="sha256 of its name, utterances, negatives and model."
    )
    threshold: float | None = Field(default=None, description="Its own fitted threshold, if any.")


class ShippedEstimate(BaseModel):
    """How the calibration did on held-out answers where it was made (for people and logs)."""

    model_config = reader_config()

    held_out: str
    examples: int = Field(ge=0)
    accuracy: float
    in_scope_accuracy: float
    refused: float | None = None
    no_match_recall: float | None = None
    top1: float | None = None
    nearest_utterance: float | None = None
    folds: int = Field(default=0, ge=0)


class RouteCalibrationRecord(BaseModel):
    """Value of the calibration record: everything a replica serves its route table with.

    Readers ignore fields they do not know, so a newer publisher may add some.
    """

    model_config = reader_config("RouteCalibration")

    record: Literal["calibration"] = "calibration"
    format: Literal[1] = 1
    fingerprint: str = Field(min_length=1, description="Model fingerprint of the vectors it was made with.")
    dim: int = Field(ge=1, le=8192)
    table_digest: str = Field(
        pattern=_HEX_DIGEST, description="sha256 over the sorted (name, training digest) of its routes."
    )
    routes: list[CalibratedRoute] = Field(description="Sorted by name; the head's columns, in order.")
    head: ShippedHead | None = None
    head_weight: float = Field(ge=0.0, le=1.0)
    default_threshold: float | None = Field(description="For the routes it covers; null accepts every score.")
    fallback_threshold: float | None = Field(
        description="For routes added or changed since (nearest-utterance scores); null accepts every score."
    )
    margin: float = Field(default=0.0, ge=0.0, le=2.0)
    method: str = Field(default="", max_length=500)
    estimate: ShippedEstimate | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [route.name for route in self.routes]
        if names != sorted(set(names)):
            raise ValueError("routes must be sorted by name, each once")
        head = self.head
        if head is not None:
            inputs = head.hidden_weights.rows if head.hidden_weights is not None else head.weights.rows
            if inputs != self.dim:
                raise ValueError(f"the head takes {inputs} inputs, vectors have {self.dim}")
            if head.weights.columns != len(self.routes):
                raise ValueError(f"the head has {head.weights.columns} outputs for {len(self.routes)} routes")
        return self
