"""Which model a replica embeds with, where its files are, and its fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from worker.config import DEFAULT_MODEL, Settings
from worker.embedding.prepare import find_prepared


class ModelNotPreparedError(RuntimeError):
    """The default model has no verified export yet."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A loadable model: fastembed name, local ONNX directory (None = fetched by fastembed), variant."""

    name: str
    path: Path | None
    variant: str

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this model makes: replicas reuse shipped vectors only on equality.

        For a local export it includes a checksum of the ONNX graph, so two exports that differ in
        any weight never share vectors.
        """
        if self.path is None:
            return f"{self.name}@hub"
        digest = hashlib.sha256()
        with (self.path / "model.onnx").open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"{self.name}@{self.variant}:{digest.hexdigest()[:12]}"


def resolve_model(settings: Settings) -> ModelSpec:
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
