"""A fresh replay's decode process, seen from the replica: records in, decoded routes back.

A fresh replica replaying a large log spends most of its replay decoding records (JSON, base64
vectors, digests), and in one process that work and the event loop's handling of the fetch
responses take turns on the GIL: one CPU's worth, however many the machine has. Decoded in a
process of its own (:mod:`worker.replication.decode_child`), the two run side by side. That
process writes the vectors it decodes straight into the replay's spill file
(:mod:`worker.routing.spill`) and hands back only the rest of each usable route: its definition
as JSON text (read when first asked for, :meth:`Route.stored_lazily`), its canonical text and
digest, and where its rows are. Every other record (tombstones, reserved keys, anything malformed,
vectors of another model, unknown fields) is left to the replica, which decodes it as it always
did: whatever a record's fault, it is skipped, counted and logged exactly as without the process.

The process is a child that is always reaped (:meth:`ReplayDecoder.close`); if it dies, answers
wrongly, or takes longer than :data:`DECODE_TIMEOUT_S` for a batch, :class:`ReplayDecodeFailed`
stops the replay: a replica never serves a table that is missing part of its log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np

from worker.contracts import Limits
from worker.replication.fold import LogRecord
from worker.routing.native import pwrite_all
from worker.routing.spill import SpillFile, SpillPosition
from worker.routing.types import Route, RouteVectors, Vectors

logger = logging.getLogger(__name__)

#: the module the decode process runs (``python -m worker.replication.decode_child SPEC``)
CHILD_MODULE = "worker.replication.decode_child"
#: longest wait for the decode process to take a batch and answer it (a batch is a few MB:
#: well under a second of work); past it the process is taken for hung and the replay stops
DECODE_TIMEOUT_S = 300.0
#: an answer frame: its length, then the payload
_LENGTH = struct.Struct("<Q")
#: a batch is written to one of these many memory files in turn, and announced on the process's
#: input by its slot and length: the process reads it in one call, whatever holds its GIL (through
#: a pipe it took a read per 64 KB, each waiting for the GIL: most of a second per batch)
SLOTS = 2
_ANNOUNCE = struct.Struct("<QQqq")
#: a batch's payload starts with the number of records
_BATCH = struct.Struct("<I")
#: bytes per read or write of a pipe
_CHUNK = 1 << 20


class ReplayDecodeFailed(RuntimeError):
    """The replay's decode process died, answered something else than a batch, or hung."""


@dataclass(frozen=True, slots=True)
class DecodedRoute:
    """A record the decode process decoded into a usable route, its vectors in the spill file."""

    #: the record's index in its batch
    index: int
    #: the route's definition as JSON, its fields in the record's order (see Route.stored_lazily)
    definition: str
    canonical: str
    digest: str
    first_row: int
    rows: int
    #: the negative utterances' vectors, little-endian float32 rows (empty: none)
    negatives: bytes


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The decode process's answer to one batch: where the spill file's next rows go, and the
    records it decoded (the others are the replica's to decode)."""

    at: SpillPosition
    routes: list[DecodedRoute]


def encode_batch(records: Sequence[LogRecord]) -> bytes:
    """A batch as the process reads it: the number of records, each record's key and value
    lengths (-1: none), then the keys and values themselves."""
    lengths: list[int] = []
    data: list[bytes] = []
    for record in records:
        for part in (record.key, record.value):
            lengths.append(-1 if part is None else len(part))
            if part:
                data.append(part)
    header = _BATCH.pack(len(records))
    return b"".join([header, struct.pack(f"<{len(lengths)}q", *lengths), *data])


def decode_batch_frame(payload: bytes) -> list[tuple[bytes | None, bytes | None]]:
    """The (key, value) pairs of a batch (:func:`encode_batch`)."""
    (count,) = _BATCH.unpack_from(payload)
    lengths = struct.unpack_from(f"<{2 * count}q", payload, _BATCH.size)
    at = _BATCH.size + 16 * count
    parts: list[bytes | None] = []
    for length in lengths:
        if length < 0:
            parts.append(None)
            continue
        parts.append(payload[at : at + length])
        at += length
    if at != len(payload):
        raise ValueError(f"batch frame of {len(payload)} bytes holds {at}")
    return list(zip(parts[0::2], parts[1::2], strict=True))


def encode_answer(answer: DecodedBatch) -> bytes:
    """An answer frame (pickled: both ends are this package, in processes of one replica)."""
    at = answer.at
    routes = [
        (r.index, r.definition, r.canonical, r.digest, r.first_row, r.rows, r.negatives)
        for r in answer.routes
    ]
    payload = pickle.dumps(((at.segment_start, at.segment_rows, at.rows), routes), protocol=5)
    return _LENGTH.pack(len(payload)) + payload


def decode_answer(payload: bytes) -> DecodedBatch:
    """The :class:`DecodedBatch` of an answer frame's payload."""
    (segment_start, segment_rows, rows), routes = pickle.loads(payload)
    return DecodedBatch(SpillPosition(segment_start, segment_rows, rows), [DecodedRoute(*r) for r in routes])


def rows_at_most(records: Sequence[LogRecord], dim: int) -> int:
    """How many rows of utterance vectors ``records`` can hold at most: a row of ``dim`` float32 is
    ``dim * 16 / 3`` characters of base64 in a record's value."""
    return sum(len(record.value) for record in records if record.value) * 3 // (16 * dim) + 1


def routes_of(
    answer: DecodedBatch, records: Sequence[LogRecord], spill: SpillFile, fingerprint: str, dim: int
) -> tuple[dict[int, RouteVectors], dict[int, int]]:
    """The routes of ``answer`` (to ``records``), their vectors views of ``spill`` (which takes the
    answer's position): by record index (what ``fold`` takes as ``elsewhere``), and each one's
    first row by its ``id`` (what ``SpillFile.spill`` takes as ``placed``)."""
    spill.adopt(answer.at)
    elsewhere: dict[int, RouteVectors] = {}
    placed: dict[int, int] = {}
    stored_lazily, trusted, row_bytes = Route.stored_lazily, RouteVectors.trusted, dim * 4
    for decoded in answer.routes:
        key = records[decoded.index].key
        if key is None or len(decoded.negatives) % row_bytes:
            raise ReplayDecodeFailed(f"the decode process answered record {decoded.index} wrongly")
        # the process decoded this key and checked it names the route
        route = stored_lazily(key.decode("utf-8"), decoded.definition, decoded.canonical)
        negatives = _negatives(decoded.negatives, dim)
        utterances = spill.rows(decoded.first_row, decoded.rows)
        vectors = trusted(route, utterances, negatives, fingerprint, decoded.digest)
        elsewhere[decoded.index] = vectors
        placed[id(vectors)] = decoded.first_row
    return elsewhere, placed


def _negatives(data: bytes, dim: int) -> Vectors:
    """Negative utterances' vectors sent by the decode process: read-only rows over ``data``."""
    if not data:
        return _no_rows(dim)
    return np.ndarray((len(data) // (dim * 4), dim), dtype="<f4", buffer=data)


@functools.cache
def _no_rows(dim: int) -> Vectors:
    empty = np.zeros((0, dim), dtype="<f4")
    empty.flags.writeable = False
    return empty


class ReplayDecoder:
    """The replica's handle on its replay's decode process.

    Use :meth:`start`, then :meth:`submit` batches and take their :meth:`answer` in the same order
    (the process decodes the next batch while the replica folds the last answer), and always
    :meth:`close`. Both block: call them from worker threads, one at a time.
    """

    def __init__(self, process: subprocess.Popen[bytes], errors: IO[bytes], slots: Sequence[int]) -> None:
        self._process = process
        self._slots = list(slots)
        self._submitted = 0
        self._errors = errors
        assert process.stdin is not None
        assert process.stdout is not None
        self._to = process.stdin.fileno()
        self._from = process.stdout.fileno()
        os.set_blocking(self._to, False)
        os.set_blocking(self._from, False)
        #: the records in each batch submitted and not yet answered
        self._sizes: list[int] = []
        #: held while a batch is sent or an answer read: the pipes are closed only after that
        self._io = threading.Lock()

    @classmethod
    def start(cls, spill: Path, fingerprint: str, dim: int, limits: Limits) -> ReplayDecoder:
        """Start a decode process for a replay spilling into ``spill``, with this replica's model
        (``fingerprint``, ``dim``) and limits."""
        spec: dict[str, object] = {
            "spill": str(spill),
            "fingerprint": fingerprint,
            "dim": dim,
            "limits": asdict(limits),
        }
        slots = [os.memfd_create(f"routeworker-replay-batch-{i}", os.MFD_CLOEXEC) for i in range(SLOTS)]
        spec["slots"] = slots
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, json.dumps(spec)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                pass_fds=slots,
            )
        except BaseException:
            errors.close()
            for slot in slots:
                os.close(slot)
            raise
        logger.info("decoding the replay in process %d", process.pid)
        return cls(process, errors, slots)

    def submit(self, records: Sequence[LogRecord], region: SpillPosition) -> None:
        """Send a batch to be decoded, its vectors to be written in the spill file's segment
        ``region`` (:meth:`SpillFile.reserve`, for at least :func:`rows_at_most` rows). At most
        :data:`SLOTS` unanswered: the process takes it in once it has decoded the one before."""
        if len(self._sizes) >= SLOTS:
            raise RuntimeError(f"ReplayDecoder.submit() with {len(self._sizes)} batches unanswered")
        batch = encode_batch(records)
        slot = self._submitted % SLOTS
        try:
            with self._io:
                # the batch that was in this slot is answered: the process is done reading it
                pwrite_all(self._slots[slot], [memoryview(batch)], 0, "the replay's batch slot")
                announce = _ANNOUNCE.pack(slot, len(batch), region.segment_start, region.segment_rows)
                self._send(announce, time.monotonic() + DECODE_TIMEOUT_S)
        except OSError as error:
            raise self._failed(f"{type(error).__name__}: {error}") from error
        self._sizes.append(len(records))
        self._submitted += 1

    def answer(self) -> DecodedBatch:
        """The answer to the oldest batch submitted and not yet answered."""
        if not self._sizes:
            raise RuntimeError("ReplayDecoder.answer() without a batch submitted")
        deadline = time.monotonic() + DECODE_TIMEOUT_S
        try:
            with self._io:
                (length,) = _LENGTH.unpack(self._receive(_LENGTH.size, deadline))
                payload = self._receive(length, deadline)
            answer = decode_answer(payload)
        except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
            raise self._failed(f"{type(error).__name__}: {error}") from error
        size = self._sizes.pop(0)
        if answer.routes and answer.routes[-1].index >= size:
            raise self._failed(f"it answered for record {answer.routes[-1].index} of {size}")
        return answer

    def close(self) -> None:
        """Stop the process (whatever it is doing: every answer it gave is complete) and reap it.

        Safe while another thread sends or reads (a cancelled replay): that ends at once, the
        process being gone, and the pipes are closed after it.
        """
        process = self._process
        if process.poll() is None:
            process.kill()
        process.wait()
        with self._io:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):  # a write the process never read (it was killed)
                        pipe.close()
            self._errors.close()
            for slot in self._slots:
                os.close(slot)
            self._slots = []

    def _send(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        while view:
            self._wait(self._to, deadline, writing=True)
            try:
                written = os.write(self._to, view[:_CHUNK])
            except BlockingIOError:
                continue
            view = view[written:]

    def _receive(self, size: int, deadline: float) -> bytes:
        received = bytearray()
        while len(received) < size:
            self._wait(self._from, deadline, writing=False)
            try:
                chunk = os.read(self._from, min(_CHUNK, size - len(received)))
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the decode process closed its output")
            received += chunk
        return bytes(received)

    def _wait(self, descriptor: int, deadline: float, *, writing: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._failed(f"no answer within {DECODE_TIMEOUT_S:.0f} s")
        if writing:
            select.select([], [descriptor], [], left)
        else:
            select.select([descriptor], [], [], left)

    def _failed(self, what: str) -> ReplayDecodeFailed:
        """The error that stops the replay: ``what`` happened, with the process's exit and last words."""
        process = self._process
        if process.poll() is None:
            process.kill()
        code = process.wait()
        self._errors.seek(0)
        tail = self._errors.read().decode(errors="replace").strip().splitlines()[-5:]
        return ReplayDecodeFailed(
            f"the replay's decode process (pid {process.pid}) failed: {what}; it exited with {code}"
            + (f": {' | '.join(tail)}" if tail else "")
        )
