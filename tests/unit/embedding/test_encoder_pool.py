"""The encoder pool: ordered, normalised output; length-aware runs of token sessions; bounded async calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from worker.config import Settings
from worker.embedding import EncoderPool, ModelSpec, encoder_pool, model_fingerprint, resolve_model


class _Session:
    """Stands in for a fastembed session: one vector per text, remembers its batches.

    With a ``gate``, every batch sets ``entered`` and then waits for the gate.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()

    def embed(self, documents: Iterable[str], batch_size: int = 256) -> Iterator[np.ndarray]:
        documents = list(documents)
        self.batches.append(documents)
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(5)
        for text in documents:
            yield np.array([len(text), 1.0, 0.0, 2.0], dtype=np.float32)


def _export(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    return folder


def test_embed_sync_is_ordered_normalised_and_chunked() -> None:
    session = _Session()
    pool = EncoderPool(ModelSpec("fake"), batch_size=2, session_factory=lambda: session)
    with pool:
        vectors = pool.embed_sync(["a", "bbb", "cc"])
        assert pool.dim == 4
        assert vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1)
        assert vectors[1, 0] > vectors[2, 0] > vectors[0, 0]
        assert session.batches[-2:] == [["a", "bbb"], ["cc"]]
        assert pool.embed_sync([]).shape == (0, 4)
        assert pool.fingerprint == "fake@hub"


class _TokenSession:
    """Stands in for the ONNX session: a text's ids are its words' lengths; remembers its runs."""

    def __init__(self) -> None:
        self.tokenized: list[list[str]] = []
        self.runs: list[list[int]] = []  # the token count of each row of each run

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        self.tokenized.append(list(texts))
        return [np.array([len(w) for w in text.split()], dtype=np.int64) for text in texts]

    def embed_tokens(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        self.runs.append([len(r) for r in rows])
        return np.array([[len(r), float(r.sum()), 1.0] for r in rows], dtype=np.float32)


def test_token_sessions_get_a_call_tokenised_once_and_run_in_length_order() -> None:
    session = _TokenSession()
    with EncoderPool(ModelSpec("fake"), run_tokens=6, session_factory=lambda: session) as pool:
        session.runs.clear()
        texts = ["a b c", "a", "a b c d e f g", "a bb", "a b c d"]
        vectors = pool.embed_sync(texts)
        assert session.tokenized[-1] == texts  # the whole call, tokenised once
        # ascending token counts; each run padded (rows x longest) within 6; the 7-token text alone
        assert session.runs == [[1], [2, 3], [4], [7]]
        # rows come back in the caller's order, normalised
        counts, sums = [3, 1, 7, 2, 4], [3, 1, 7, 3, 4]
        want = np.array([[n, t, 1.0] for n, t in zip(counts, sums, strict=True)])
        assert np.allclose(vectors, want / np.linalg.norm(want, axis=1, keepdims=True))
        assert pool.stats.texts == 1 + len(texts)  # the dimension probe, then the call
        assert pool.stats.tokens == 2 + sum(counts)
        assert pool.stats.padded_tokens == 2 + (1 + 2 * 3 + 4 + 7)


class _GatedTokenSession(_TokenSession):
    """A token session whose runs all wait at one barrier: returns only if the sessions run at once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def embed_tokens(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        if self.barrier.parties > 1:
            self.barrier.wait(5)
        return super().embed_tokens(rows)


async def test_an_async_call_is_shared_by_every_session_at_once() -> None:
    barrier = threading.Barrier(1)  # the dimension probe runs alone
    sessions: list[_GatedTokenSession] = []

    def make() -> _GatedTokenSession:
        sessions.append(_GatedTokenSession(barrier))
        return sessions[-1]

    texts = [" ".join(["w" * (1 + i)] * 4) for i in range(8)]  # 4 tokens each: one run of 8
    with EncoderPool(ModelSpec("fake"), pool_size=1, session_factory=_TokenSession) as one:
        want = one.embed_sync(texts)
    with EncoderPool(ModelSpec("fake"), pool_size=2, session_factory=make) as pool:
        for session in sessions:
            session.runs.clear()
            session.tokenized.clear()
        barrier = threading.Barrier(2)  # each run of the call waits for a run on the other session
        for session in sessions:
            session.barrier = barrier
        got = await pool.embed(texts)
        assert np.array_equal(got, want)  # the same bits as one session, in the caller's order
        assert [len(s.runs) for s in sessions] == [1, 1]  # one run of 8 cut in two, one per session
        assert sorted(len(run) for s in sessions for run in s.runs) == [4, 4]
        assert sum(len(s.tokenized) for s in sessions) == 1  # tokenised once
        assert pool.stats.texts == 1 + len(texts)


class _PoisonedTokenSession(_TokenSession):
    """Fails on any run holding a row of exactly 9 tokens (the poison text)."""

    def embed_tokens(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        if any(len(row) == 9 for row in rows):
            raise RuntimeError("cannot embed the poison text")
        return super().embed_tokens(rows)


async def test_a_run_failing_in_a_shared_call_fails_the_call_and_frees_every_session() -> None:
    with EncoderPool(ModelSpec("fake"), pool_size=2, session_factory=_PoisonedTokenSession) as pool:
        poison = " ".join(["p"] * 9)
        texts = [" ".join(["w"] * 4)] * 6 + [poison]
        with pytest.raises(RuntimeError, match="poison"):
            await pool.embed(texts)
        # both sessions went back to the pool: further calls, shared or not, do not wait forever
        for _ in range(3):
            assert (await asyncio.wait_for(pool.embed(texts[:6]), 5)).shape == (6, 3)
        assert pool.embed_sync(texts[:1]).shape == (1, 3)


async def test_text_sessions_share_a_call_in_contiguous_chunks() -> None:
    sessions: list[_Session] = []

    def make() -> _Session:
        sessions.append(_Session())
        return sessions[-1]

    with EncoderPool(ModelSpec("fake"), pool_size=2, batch_size=2, session_factory=make) as pool:
        for session in sessions:
            session.batches.clear()
        texts = ["a", "bb", "ccc", "dddd", "eeeee"]
        vectors = await pool.embed(texts)
        assert np.array_equal(vectors, pool.embed_sync(texts))
        calls = sorted(batch for s in sessions for batch in s.batches[:2])
        assert calls == [["a", "bb"], ["ccc"], ["dddd", "eeeee"]]  # 3 texts, then 2, each in batches of 2


def test_the_configured_variant_names_the_fingerprint_whatever_the_folder_is_called(tmp_path: Path) -> None:
    # An explicit model path with variant int8: the variant comes from the settings, not from the
    # folder's name (the pool once took "my-export" for the variant and published a fingerprint
    # that matched no other replica's).
    settings = Settings(model_path=_export(tmp_path / "my-export"), model_variant="int8", batch_size=32)
    session = _Session()
    with encoder_pool(settings, session_factory=lambda: session) as pool:
        pool.embed_sync(["a", "b"])
        assert session.batches[-1] == ["a", "b"]  # static int8 is batched like fp32
        assert pool.fingerprint == resolve_model(settings).fingerprint
        assert pool.fingerprint.startswith(f"{settings.model_name}@int8:")
        assert len(pool.fingerprint.rsplit(":", 1)[1]) == 12


def test_fp32_exports_batch_and_the_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    folder = _export(tmp_path / "fp32")
    session = _Session()
    with EncoderPool(
        ModelSpec("fake", folder, "fp32"), batch_size=32, session_factory=lambda: session
    ) as pool:
        pool.embed_sync(["a", "b"])
        assert session.batches[-1] == ["a", "b"]
        assert pool.fingerprint == model_fingerprint("fake", "fp32", folder)
    (folder / "model.onnx").write_bytes(b"other weights")
    assert model_fingerprint("fake", "fp32", folder) != pool.fingerprint


async def test_async_embed_is_bounded_by_max_pending() -> None:
    gate = threading.Event()
    session = _Session()
    pool = EncoderPool(ModelSpec("fake"), pool_size=1, max_pending=2, session_factory=lambda: session)
    session.gate = gate  # from now on every embedding waits for the gate
    try:
        tasks = [asyncio.create_task(pool.embed([f"text {i}"])) for i in range(4)]
        # The first call is inside the only session: by then every task has reached its semaphore.
        assert await asyncio.to_thread(session.entered.wait, 5)
        assert pool._pending is not None
        assert pool._pending.locked()  # two in flight, the other two wait for a slot
        assert session.batches[-1:] == [["text 0"]]
        gate.set()
        results = await asyncio.gather(*tasks)
        assert [r.shape for r in results] == [(1, 4)] * 4
    finally:
        gate.set()
        pool.close()


def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EncoderPool(ModelSpec("fake"), pool_size=0, session_factory=_Session)
