"""A fresh replay's decode process: ``python -m worker.replication.decode_child SPEC_JSON``.

It reads batches of records from its standard input (:func:`worker.replication.decoder.encode_batch`)
and decodes each record as the replica would (the same functions: :func:`fold._decoded`, the
replica's resolver and :func:`unit_faults`). A record that comes out a usable route with shipped
vectors of the replica's model and no fields this version does not know has its vectors appended
to the spill file and is answered for; any other record is left out of the answer, for the
replica to decode itself (so its faults are skipped, counted and logged there, as always). It
stops at the end of its input, which the replica closes, or which ends when the replica is gone.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from worker.contracts import Limits, RouteDefinition
from worker.replication.decoder import (
    _ANNOUNCE,
    DecodedBatch,
    DecodedRoute,
    decode_batch_frame,
    encode_answer,
)
from worker.replication.fold import _decoded
from worker.replication.vectors import shipped_unchecked, unit_faults
from worker.routing.native import collector_paused
from worker.routing.spill import SpillPosition, SpillRows
from worker.routing.types import RouteVectors


@dataclass(frozen=True, slots=True)
class _Record:
    """What decoding reads of a record (its position is the replica's business)."""

    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp: int = -1


class BatchDecoder:
    """Decodes batches for one replay: its model, limits and spill file."""

    def __init__(self, spill: SpillRows, fingerprint: str, dim: int, limits: Limits) -> None:
        self.spill = spill
        self.fingerprint = fingerprint
        self.dim = dim
        self.limits = limits

    def decode(self, pairs: Sequence[tuple[bytes | None, bytes | None]], at: SpillPosition) -> DecodedBatch:
        """The records of ``pairs`` that decode to usable shipped routes, their vectors written to
        the spill file from ``at``, in its segment (set apart for this batch)."""
        fingerprint, dim, limits = self.fingerprint, self.dim, self.limits

        def resolve(definition: RouteDefinition) -> RouteVectors | None:
            return shipped_unchecked(definition, fingerprint, dim)

        usable: list[tuple[int, RouteVectors]] = []
        for index, (key, value) in enumerate(pairs):
            try:
                decoded = _decoded(_Record(key, value), limits, resolve)
            except Exception:  # noqa: BLE001 - the replica decodes it itself, and meets what it meets
                continue
            if (
                decoded is None
                or decoded.error is not None
                or decoded.vectors is None
                or decoded.unknown
                or decoded.mutation is None
                or decoded.mutation.definition is None
            ):
                continue
            usable.append((index, decoded.vectors))
        faults = unit_faults([rv for _, rv in usable])
        kept = [(index, rv) for (index, rv), fault in zip(usable, faults, strict=True) if fault is None]
        matrices = [rv.utterance_vectors for _, rv in kept]
        if not sum(int(m.shape[0]) for m in matrices):
            return DecodedBatch(at, [])
        at, first = self.spill.append(at, matrices, grow=False)
        routes: list[DecodedRoute] = []
        firsts: list[int] = []
        for index, rv in kept:
            rows = int(rv.utterance_vectors.shape[0])
            route = rv.route
            negatives = rv.negative_vectors.tobytes() if rv.negative_vectors.size else b""
            text = orjson.dumps(route.definition()).decode()
            canonical = route.canonical_json()
            routes.append(DecodedRoute(index, text, canonical, rv.digest, first, rows, negatives))
            firsts.append(first)
            first += rows
        self.spill.check(matrices, firsts, [rv.name for _, rv in kept])
        return DecodedBatch(at, routes)


def _read_exactly(source: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes of ``source``; None at its end before the first byte."""
    data = source.read(size)
    if not data:
        return None
    while len(data) < size:
        more = source.read(size - len(data))
        if not more:
            raise EOFError(f"input ended {size - len(data)} bytes into a frame")
        data += more
    return data


def _read_batch(slot: int, size: int) -> bytes:
    """The batch of ``size`` bytes the replica wrote to memory file ``slot``."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = os.pread(slot, size - got, got)
        if not part:
            raise EOFError(f"batch slot {slot} holds {got} bytes of {size}")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Decode batches from standard input until it ends; answers on standard output."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    # answers go to a descriptor of their own: anything printed goes to the error output instead
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    descriptor = os.open(spec["spill"], os.O_RDWR)
    try:
        spill = SpillRows(descriptor, Path(spec["spill"]), int(spec["dim"]))
        limits = Limits(**spec["limits"])
        decoder = BatchDecoder(spill, str(spec["fingerprint"]), int(spec["dim"]), limits)
        slots = [int(slot) for slot in spec["slots"]]
        source = sys.stdin.buffer
        gc.freeze()  # what the imports made: never scanned again
        while True:
            announced = _read_exactly(source, _ANNOUNCE.size)
            if announced is None:
                return 0
            slot, size, region_start, region_rows = _ANNOUNCE.unpack(announced)
            at = SpillPosition(region_start, region_rows, region_start)
            payload = _read_batch(slots[slot], size)
            pairs = decode_batch_frame(payload)
            del payload
            with collector_paused():  # a batch's objects go with it: the collector would only scan them
                answer = decoder.decode(pairs, at)
            answers.write(encode_answer(answer))
            answers.flush()
    finally:
        os.close(descriptor)


if __name__ == "__main__":
    sys.exit(main())
