"""Which model a replica embeds with, where its files are, and the fingerprint of its vectors.

The one default model and the one fingerprint function of the project live here. The fingerprint
names the model, its variant and a checksum of its ONNX graph: vectors are shared (shipped in
mutation records, cached in Redis, reused from the store) only between equal fingerprints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from worker.embedding.prepare import find_prepared
from worker.routing import EncoderError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: both are deterministic whatever the batch (int8 is statically quantised: worker/embedding/quantize.py)
Variant = Literal["fp32", "int8"]


class ModelNotPreparedError(RuntimeError):
    """The default model has no verified export yet."""


def model_fingerprint(name: str, variant: str, path: Path | None) -> str:
    """Identity of the vectors a model makes: ``name@hub``, or ``name@variant:<sha256 prefix>``
    of the local export's ``model.onnx`` (two exports that differ in any weight never share)."""
    if path is None:
        return f"{name}@hub"
    digest = hashlib.sha256()
    weights = path / "model.onnx"
    try:
        with weights.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise EncoderError(f"cannot read {weights}: {error}") from error
    return f"{name}@{variant}:{digest.hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A loadable model: fastembed name, local ONNX directory (None = fetched by fastembed), variant."""

    name: str
    path: Path | None = None
    variant: Variant = "fp32"

    @property
    def fingerprint(self) -> str:
        """See :func:`model_fingerprint` (reads the weights: cache it where it is used often)."""
        return model_fingerprint(self.name, self.variant, self.path)


class ModelChoice(Protocol):
    """The settings that choose the model (:class:`worker.config.Settings` has them)."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_variant(self) -> Variant: ...
    @property
    def model_path(self) -> Path | None: ...
    @property
    def cache_dir(self) -> Path: ...


def resolve_model(settings: ModelChoice) -> ModelSpec:
    """The model named by settings: an explicit path, the prepared default, or a hub name."""
    if settings.model_path is not None:
        return ModelSpec(settings.model_name, settings.model_path, settings.model_variant)
    if settings.model_name == DEFAULT_MODEL:
        prepared = find_prepared(settings.cache_dir)
        if prepared is None:
            raise ModelNotPreparedError(
                f"{DEFAULT_MODEL} is not prepared in {settings.cache_dir}: run `routeworker model prepare`"
            )
        return ModelSpec(
            settings.model_name, prepared.variant_dir(settings.model_variant), settings.model_variant
        )
    return ModelSpec(settings.model_name, None, settings.model_variant)
