"""Length-aware runs inside the pipeline: the encoder reorders a batch's texts, the pipeline does not.

The encoder pool embeds a batch's texts sorted by token count, in runs cut by a token budget. Here
its session is a stand-in whose vectors are the hashing encoder's (so the conftest routes apply),
with a budget small enough that every batch is cut into several runs out of arrival order. What
must not change: one intent per query, each decided on its own text's vector, produced in
consumption order per partition (so per key), offsets committed to the end, every text tokenised
once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from aiokafka.structs import TopicPartition
from pipeline_fakes import DIM, FakeConsumer, FakeProducer, HashingEncoder
from test_pipeline_app import intents, query, running, until

from worker.config import Settings
from worker.contracts import RoutedIntent
from worker.embedding import EncoderPool, ModelSpec
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry


class _HashingTokens:
    """A token session: a word's id is its hashing bucket and sign, so vectors match HashingEncoder."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # the texts of each tokenize call
        self.runs: list[tuple[int, list[int]]] = []  # (call, token count of each row) of each run

    def tokenize(self, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]:
        self.calls.append(list(texts))
        ids = []
        for text in texts:
            digests = [hashlib.sha256(w.encode()).digest() for w in re.findall(r"\w+", text.lower())]
            ids.append(np.array([2 * (d[0] % DIM) + d[1] % 2 for d in digests], dtype=np.int64))
        return ids

    def embed_tokens(self, rows: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        self.runs.append((len(self.calls) - 1, [len(r) for r in rows]))
        out = np.zeros((len(rows), DIM), dtype=np.float32)
        for i, row in enumerate(rows):
            for token in row:
                out[i, token // 2] += 1.0 if token % 2 else -1.0
        return out


@pytest.fixture
def session() -> _HashingTokens:
    return _HashingTokens()


@pytest.fixture
def pool(session: _HashingTokens) -> Iterator[EncoderPool]:
    with EncoderPool(ModelSpec("fake"), run_tokens=24, session_factory=lambda: session) as made:
        session.calls.clear()
        session.runs.clear()
        yield made


TEXTS = [
    "play some jazz music please right now in the kitchen",
    "weather",
    "send money",
    "will it rain tomorrow or the day after tomorrow",
    "put on a song",
    "check my bank balance and transfer money to my account today",
    "what is the weather today",
    "music",
]


async def test_runs_out_of_arrival_order_leave_outputs_and_commits_in_consumption_order(
    settings: Settings,
    router: Router,
    telemetry: Telemetry,
    pool: EncoderPool,
    session: _HashingTokens,
) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    settings = settings.model_copy(update={"batch_size": 8})
    pipeline = QueryPipeline(
        settings, encoder=pool, router=router, telemetry=telemetry, consumer=consumer, producers=producer
    )
    texts: dict[str, str] = {}
    for i in range(32):
        text = f"{TEXTS[i % len(TEXTS)]} {'again ' * (i % 3)}"
        partition, key = i % 2, f"k{i % 4}".encode()
        consumer.append(partition, query(i, text), key=key)
        texts[f"q{i}"] = text
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)

    # each batch tokenised once, each of its texts once; its runs went shortest first, several
    # runs a batch, so out of arrival order
    words = [[len(re.findall(r"\w+", t)) for t in call] for call in session.calls]
    assert all(len(set(call)) == len(call) for call in session.calls)
    assert sum(map(len, session.calls)) <= len(texts)
    for call, counts in enumerate(words):
        in_runs = [n for c, run in session.runs if c == call for n in run]
        assert in_runs == sorted(counts)
    assert any(sorted(counts) != counts for counts in words)
    assert len(session.runs) > len(session.calls)

    # every query decided on its own text's vector
    reference = HashingEncoder()
    for intent in intents(producer):
        (alone,) = router.decide(reference.embed_sync([texts[intent.query_id]]), 2)
        assert intent.route == alone.route
        assert intent.score == pytest.approx(alone.score, abs=1e-6)

    # produced in consumption order within each partition, so within each key
    sent = [RoutedIntent.model_validate_json(s.value).query_id for s in producer.sent]
    for partition in (0, 1):
        ids = [q for q in sent if int(q[1:]) % 2 == partition]
        assert ids == [f"q{i}" for i in range(partition, 32, 2)]
    assert consumer.committed == {TopicPartition("queries", 0): 16, TopicPartition("queries", 1): 16}
