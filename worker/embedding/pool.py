"""The encoder pool of the configured model: one factory for the worker, the CLI and the replicas."""

from __future__ import annotations

from worker.config import Settings
from worker.embedding.model import resolve_model
from worker.routing import EncoderPool


def encoder_pool(settings: Settings) -> EncoderPool:
    """``encoder_threads`` sessions of the configured model (blocking: loads ONNX; call in a thread)."""
    model = resolve_model(settings)
    return EncoderPool(
        model.path,
        model.name,
        settings.encoder_threads,
        settings.encoder_max_pending,
        batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
    )
