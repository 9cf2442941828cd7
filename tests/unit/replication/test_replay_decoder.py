"""A fresh replay's decode process: the routes it decodes fold exactly as the replica's own
decoding would have them, every other record is left to the replica (so its faults are skipped and
counted there, as always), and a process that dies or hangs stops the replay loudly."""

from __future__ import annotations

import base64
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from log_records import Record

from worker.contracts import RESERVED_KEY_PREFIX, Limits, RouteDefinition, encode
from worker.replication import decoder as decoder_module
from worker.replication.decoder import ReplayDecodeFailed, ReplayDecoder, routes_of, rows_at_most
from worker.replication.fold import FoldedMutations, fold
from worker.replication.vectors import attach_embeddings, route_of, shipped_unchecked, unit_faults
from worker.routing import RouteVectors, l2_normalise
from worker.routing.spill import SpillFile

DIM = 8
FP = "test-model@fp32:0123456789ab"
#: small enough that one record below is too large
LIMITS = Limits(max_mutation_bytes=4096)


def shipped(name: str, seed: int, *, negatives: int = 0, fingerprint: str = FP, dim: int = DIM,
            **fields: object) -> bytes:  # fmt: skip
    definition = RouteDefinition(
        name=name,
        utterances=[f"{name} {i}" for i in range(3)],
        negative_utterances=[f"not {name} {i}" for i in range(negatives)],
        **fields,  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(seed)
    route = route_of(definition)
    vectors = RouteVectors(
        route,
        l2_normalise(rng.normal(size=(3, dim))),
        l2_normalise(rng.normal(size=(negatives, dim))),
        fingerprint,
    )
    return encode(attach_embeddings(definition, vectors))


def mixed_batch() -> list[Record]:
    """Usable shipped routes among every kind of record the replica must decode itself."""
    good = shipped("alpha", 1)
    with_everything = shipped(
        "beta", 2, negatives=2, threshold=0.5, metadata={"z": 1, "a": [1.5, "x", None], "m": {"k": 1e-05}}
    )
    doc = orjson.loads(shipped("gamma", 3))
    doc["colour"] = "blue"  # a field this version does not know: validated in full by the replica
    unknown_field = orjson.dumps(doc)
    doc = orjson.loads(shipped("delta", 4))
    raw = np.frombuffer(base64.b64decode(doc["embeddings"]["utterances"]), dtype="<f4") * 3
    doc["embeddings"]["utterances"] = base64.b64encode(raw.astype("<f4").tobytes()).decode()
    not_unit = orjson.dumps(doc)  # rows three times too long
    values: list[tuple[bytes | None, bytes | None]] = [
        (b"alpha", good),
        (b"beta", with_everything),
        (b"gone", None),  # a tombstone
        (b"broken", b"{not json"),
        (b"wide", shipped("wide", 5, dim=DIM * 2)),  # this model's name, another dimension
        (b"other", shipped("other", 6, fingerprint="another-model@fp32:ffffffffffff")),  # re-embedded
        (b"gamma", unknown_field),
        (b"delta", not_unit),
        ((RESERVED_KEY_PREFIX + "unknown").encode(), b"{}"),
        (b"large", shipped("large", 7, metadata={"note": "x" * 5000})),
        (b"mismatch", shipped("someone-else", 8)),
        (None, good),
        (b"\xff", b"{}"),
        (b"alpha", shipped("alpha", 9)),  # again: the last one wins
    ]
    return [Record(i % 2, 100 + i, key, value) for i, (key, value) in enumerate(values)]


@pytest.fixture
def spill(tmp_path: Path) -> Iterator[SpillFile]:
    made = SpillFile(tmp_path / "index", DIM)
    yield made
    made.remove()


def resolve(definition: RouteDefinition) -> RouteVectors | None:
    return shipped_unchecked(definition, FP, DIM)


def test_routes_decoded_apart_fold_as_decoded_here(spill: SpillFile) -> None:
    records = mixed_batch()
    decoder = ReplayDecoder.start(spill.path, FP, DIM, LIMITS)
    try:
        decoder.submit(records, spill.reserve(rows_at_most(records, DIM)))
        decoder.submit(records[:1], spill.reserve(rows_at_most(records[:1], DIM)))  # a batch ahead
        answer = decoder.answer()
        ahead = decoder.answer()
    finally:
        decoder.close()
    # only the usable shipped routes were decoded there: alpha (twice), beta
    assert [r.index for r in answer.routes] == [0, 1, 13]
    elsewhere, placed = routes_of(answer, records, spill, FP, DIM)
    apart = fold(records, LIMITS, resolve, check=unit_faults, yield_gil=False, elsewhere=elsewhere)
    here = fold(records, LIMITS, resolve, check=unit_faults, yield_gil=False)
    assert_same_fold(apart, here)
    written = np.fromfile(spill.path, dtype="<f4").reshape(-1, DIM)
    for rv in elsewhere.values():
        first = placed[id(rv)]
        assert np.array_equal(written[first : first + 3], rv.utterance_vectors)
        assert not rv.utterance_vectors.flags.writeable
        assert not rv.negative_vectors.flags.writeable
    # the batch after took rows of its own, after these
    assert ahead.at.segment_start >= answer.at.segment_start + answer.at.segment_rows
    assert [r.first_row for r in ahead.routes] == [ahead.at.segment_start]


def assert_same_fold(apart: FoldedMutations, here: FoldedMutations) -> None:
    assert list(apart.changes) == list(here.changes)
    assert [d is None for d in apart.changes.values()] == [d is None for d in here.changes.values()]
    assert apart.skipped == here.skipped
    assert [(s.code, s.route) for s in here.skipped] == [
        ("invalid_json", "broken"),
        ("embedding_shape", "wide"),
        ("embedding_shape", "delta"),
        ("schema", None),
        ("too_large", "large"),
        ("key_mismatch", "mismatch"),
        ("missing_key", None),
        ("invalid_utf8", None),
    ]
    assert apart.unknown_fields == here.unknown_fields == {"colour": 1}
    assert (apart.offsets, apart.records, apart.positions) == (here.offsets, here.records, here.positions)
    assert list(apart.vectors) == list(here.vectors) == ["beta", "gamma", "alpha"]
    for name, rv in here.vectors.items():
        other = apart.vectors[name]
        assert other.digest == rv.digest
        assert other.fingerprint == rv.fingerprint
        assert other.route.canonical_json() == rv.route.canonical_json()
        assert other.route == rv.route
        assert list(other.route.metadata) == list(rv.route.metadata)  # in the record's order
        assert np.array_equal(other.utterance_vectors, rv.utterance_vectors)
        assert np.array_equal(other.negative_vectors, rv.negative_vectors)
        assert other.negative_vectors.shape == rv.negative_vectors.shape


def submit_and_answer(decoder: ReplayDecoder, spill: SpillFile) -> None:
    records = mixed_batch()
    decoder.submit(records, spill.reserve(rows_at_most(records, DIM)))
    decoder.answer()


def test_a_decode_process_that_dies_stops_the_replay_with_its_last_words(spill: SpillFile) -> None:
    decoder = ReplayDecoder.start(spill.path, FP, DIM, LIMITS)
    submit_and_answer(decoder, spill)
    decoder._process.kill()  # as the kernel's OOM killer would
    with pytest.raises(ReplayDecodeFailed, match=r"decode process \(pid \d+\) failed: .*exited with -9"):
        submit_and_answer(decoder, spill)
    decoder.close()
    assert decoder._process.returncode is not None  # reaped


def test_a_decode_process_that_cannot_start_names_why(tmp_path: Path) -> None:
    decoder = ReplayDecoder.start(tmp_path / "missing" / "replay.f32", FP, DIM, LIMITS)
    try:
        with pytest.raises(ReplayDecodeFailed, match="FileNotFoundError"):
            submit_and_answer(decoder, SpillFile(tmp_path, DIM))
    finally:
        decoder.close()


def test_a_decode_process_that_hangs_is_stopped_after_the_timeout(
    spill: SpillFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = ReplayDecoder.start(spill.path, FP, DIM, LIMITS)
    try:
        decoder._process.send_signal(signal.SIGSTOP)  # alive, answering nothing
        monkeypatch.setattr(decoder_module, "DECODE_TIMEOUT_S", 0.2)
        decoder.submit(mixed_batch(), spill.reserve(100))
        with pytest.raises(ReplayDecodeFailed, match="no answer within"):
            decoder.answer()
    finally:
        decoder.close()
    assert decoder._process.returncode is not None
