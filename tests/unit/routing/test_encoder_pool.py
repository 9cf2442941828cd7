from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from worker.routing import EncoderPool


class _Session:
    """Stands in for a fastembed session: one vector per text, remembers its batches."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate

    def embed(self, documents: Iterable[str], batch_size: int = 256) -> Iterator[np.ndarray]:
        documents = list(documents)
        self.batches.append(documents)
        if self.gate is not None:
            self.gate.wait(5)
        for text in documents:
            yield np.array([len(text), 1.0, 0.0, 2.0], dtype=np.float32)


def test_embed_sync_is_ordered_normalised_and_chunked() -> None:
    session = _Session()
    pool = EncoderPool(None, "fake", batch_size=2, session_factory=lambda: session)
    with pool:
        vectors = pool.embed_sync(["a", "bbb", "cc"])
        assert pool.dim == 4
        assert vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1)
        assert vectors[1, 0] > vectors[2, 0] > vectors[0, 0]
        assert session.batches[-2:] == [["a", "bbb"], ["cc"]]
        assert pool.embed_sync([]).shape == (0, 4)
        assert pool.fingerprint == "fake@hub"


def test_int8_models_embed_each_text_alone(tmp_path: Path) -> None:
    model_dir = tmp_path / "int8"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(b"weights")
    session = _Session()
    with EncoderPool(model_dir, "fake", batch_size=32, session_factory=lambda: session) as pool:
        pool.embed_sync(["a", "b"])
        assert session.batches[-2:] == [["a"], ["b"]]
        assert pool.fingerprint.startswith("fake@int8:")
        assert len(pool.fingerprint.rsplit(":", 1)[1]) == 12


async def test_async_embed_is_bounded_by_max_pending() -> None:
    gate = threading.Event()
    session = _Session()
    pool = EncoderPool(None, "fake", pool_size=1, max_pending=2, session_factory=lambda: session)
    session.gate = gate  # from now on every embedding waits for the gate
    try:
        tasks = [asyncio.create_task(pool.embed([f"text {i}"])) for i in range(4)]
        await asyncio.sleep(0.05)
        assert pool._pending is not None
        assert pool._pending.locked()  # two in flight, the other two wait for a slot
        gate.set()
        results = await asyncio.gather(*tasks)
        assert [r.shape for r in results] == [(1, 4)] * 4
    finally:
        gate.set()
        pool.close()


def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EncoderPool(None, "fake", pool_size=0, session_factory=_Session)
