"""Folding mutation records: last value per key, tombstones as deletes, unusable records skipped.

A record that cannot be applied (malformed, rejected by this version's contract, shipped vectors
of the wrong shape) is skipped, counted and logged with its position, and its route is absent
afterwards, as after a tombstone. Not "keeps its last valid definition": compaction keeps only the
last record per key, so a replica replaying after a cleaning would never see that earlier
definition and would disagree with one that kept it. A route's state depends only on its last
record, on every replica, whatever it read before.

Fields this version does not know are left out of the definitions, identically on every replica
whatever its version or contract mode (see ``worker.contracts.evolution``), and counted in
``unknown_fields``: a newer admin tool that adds one never makes an older replica skip the record.

Keys in routeworker's reserved namespace are not routes: the calibration record is folded apart
(its last value wins), any other reserved key is a record type this version does not know, skipped
and counted like a malformed record. Pure and synchronous (decoding is CPU work): replicas call it
from a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.contracts import (
    CALIBRATION_KEY,
    RESERVED_KEY_PREFIX,
    Limits,
    RouteDefinition,
    RouteMutation,
    decode_calibration,
    decode_mutation,
)
from worker.errors import ContractError, ErrorCode
from worker.replication.calibrations import CalibrationChange
from worker.routing import RouteVectors
from worker.routing.native import collector_paused

#: turns a decoded definition into its vectors when it can (shipped ones), raising ContractError when
#: the record is unusable; None means "embed it"
Resolver = Callable[[RouteDefinition], RouteVectors | None]
#: finds fault with resolved vectors, many at once: for each, the error that makes its record
#: skipped, or None
BatchCheck = Callable[[Sequence[RouteVectors]], Sequence[ContractError | None]]

logger = logging.getLogger(__name__)

_YIELD_EVERY = 4
_RESERVED = RESERVED_KEY_PREFIX.encode("utf-8")
_CALIBRATION = CALIBRATION_KEY.encode("utf-8")


class LogRecord(Protocol):
    """What folding needs from a consumed record (aiokafka's ``ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch (the producer's or the broker's clock; -1 when unknown)."""
        ...


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A mutation record that could not be applied: where it is, which route, and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    #: machine-readable reason (an :class:`~worker.errors.ErrorCode` value)
    code: str = ErrorCode.SCHEMA.value
    #: the route it was for (None: the key names no route)
    route: str | None = None


@dataclass(slots=True)
class FoldedMutations:
    """The net effect of a run of records: each route's last valid definition, or None if deleted."""

    changes: dict[str, RouteDefinition | None] = field(default_factory=dict)
    #: vectors of changed routes that came resolved (shipped embeddings of this replica's model)
    vectors: dict[str, RouteVectors] = field(default_factory=dict)
    #: partition -> next offset (last record's offset + 1)
    offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    #: route -> (partition, offset) of its last record here (to name a record that fails later)
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the last valid calibration record among these records (None: there was none)
    calibration: CalibrationChange | None = None
    #: paths of fields this version does not know, ignored in the records folded in, with counts
    unknown_fields: Counter[str] = field(default_factory=Counter)

    def add(self, record: LogRecord, limits: Limits, resolve: Resolver | None = None) -> None:
        """Fold one record in; an unusable record is logged with its position and skipped, and
        its route is absent afterwards (see the module's docstring)."""
        self._fold_in(record, limits, _decoded(record, limits, resolve))

    def add_checked(
        self,
        records: Sequence[LogRecord],
        limits: Limits,
        resolve: Resolver,
        check: BatchCheck,
        elsewhere: Mapping[int, RouteVectors] | None = None,
    ) -> None:
        """Fold ``records`` in as :meth:`add` each, with the vectors ``resolve`` made checked by one
        call of ``check`` for them all (a record it finds fault with is skipped, as if ``resolve``
        had raised).

        ``elsewhere`` holds the records (by their index in ``records``) that another process has
        decoded, resolved and checked already, as this would have: each a usable route with shipped
        vectors of this model and no unknown fields (see :mod:`worker.replication.decode_child`).
        They are folded in as such, in their place; every other record is decoded here.
        """
        elsewhere = elsewhere or {}
        decoded = [
            _decoded(record, limits, resolve) if i not in elsewhere else _decoded_elsewhere(elsewhere[i])
            for i, record in enumerate(records)
        ]
        resolved = [
            d for i, d in enumerate(decoded) if d is not None and d.vectors is not None and i not in elsewhere
        ]
        vectors = [d.vectors for d in resolved if d.vectors is not None]
        for checked, fault in zip(resolved, check(vectors), strict=True):
            if fault is not None:
                checked.error, checked.vectors = fault, None
        for record, entry in zip(records, decoded, strict=True):
            self._fold_in(record, limits, entry)

    def _fold_in(self, record: LogRecord, limits: Limits, decoded: _Decoded | None) -> None:
        self.records += 1
        self.offsets[record.partition] = max(self.offsets.get(record.partition, 0), record.offset + 1)
        if decoded is None:
            self._add_reserved(record, limits)
            return
        if decoded.error is not None:
            self.skip(record.topic, record.partition, record.offset, decoded.error, _route_name(record.key))
            return
        mutation = decoded.mutation
        assert mutation is not None  # decoded without an error
        self._set(mutation.name, mutation.definition, (record.partition, record.offset))
        self.unknown_fields.update(decoded.unknown)
        if decoded.vectors is not None:
            self.vectors[mutation.name] = decoded.vectors

    def skip(
        self, topic: str, partition: int, offset: int, error: ContractError, route: str | None
    ) -> SkippedRecord:
        """Record that the record at ``partition``/``offset`` cannot be applied: logged, counted,
        and its ``route`` (if the key names one) is deleted."""
        skipped = SkippedRecord(topic, partition, offset, str(error), error.code.value, route)
        self.skipped.append(skipped)
        logger.warning(
            "skipped mutation at %s[%d] offset %d (route %s absent until a usable record): %s",
            topic,
            partition,
            offset,
            "-" if route is None else repr(route),
            error,
        )
        if route is not None:
            self._set(route, None, (partition, offset))
        return skipped

    def _set(self, name: str, definition: RouteDefinition | None, position: tuple[int, int]) -> None:
        # re-inserting moves the key to the end: changes keep the order of their last record
        self.changes.pop(name, None)
        self.changes[name] = definition
        self.vectors.pop(name, None)
        self.positions[name] = position

    def _add_reserved(self, record: LogRecord, limits: Limits) -> None:
        unknown: Counter[str] = Counter()
        try:
            if record.key != _CALIBRATION:
                raise ContractError(
                    ErrorCode.SCHEMA, f"record type {record.key!r} is unknown to this version"
                )
            decoded = None if record.value is None else decode_calibration(record.value, limits, unknown)
        except ContractError as error:
            self.skip(record.topic, record.partition, record.offset, error, None)  # not a route
            return
        self.calibration = CalibrationChange(record.value, decoded)
        self.unknown_fields.update({f"calibration.{path}": n for path, n in unknown.items()})

    def merge(self, later: FoldedMutations) -> None:
        """Fold ``later`` (records after these) into this one."""
        for name, definition in later.changes.items():
            self.changes.pop(name, None)
            self.changes[name] = definition
            self.vectors.pop(name, None)
        self.vectors.update(later.vectors)
        for partition, offset in later.offsets.items():
            self.offsets[partition] = max(self.offsets.get(partition, 0), offset)
        self.records += later.records
        self.skipped.extend(later.skipped)
        self.positions.update(later.positions)
        self.unknown_fields.update(later.unknown_fields)
        if later.calibration is not None:
            self.calibration = later.calibration


@dataclass(slots=True)
class _Decoded:
    """One route record decoded (and its vectors resolved), not yet folded in."""

    mutation: RouteMutation | None
    vectors: RouteVectors | None
    unknown: Counter[str]
    #: why the record cannot be applied (None: it can)
    error: ContractError | None = None


def _decoded(record: LogRecord, limits: Limits, resolve: Resolver | None) -> _Decoded | None:
    """``record`` decoded and resolved; None for a key in the reserved namespace (folded apart)."""
    if record.key is not None and record.key.startswith(_RESERVED):
        return None
    unknown: Counter[str] = Counter()
    try:
        mutation = decode_mutation(record.key, record.value, limits, unknown)
        vectors = None
        if mutation.definition is not None and resolve is not None:
            vectors = resolve(mutation.definition)
    except ContractError as error:
        return _Decoded(None, None, unknown, error)
    return _Decoded(mutation, vectors, unknown)


#: the definition folded in for a route decoded in another process (``add_checked``'s ``elsewhere``):
#: only its vectors (``FoldedMutations.vectors``) are known here, which is all that is asked of
#: a route with shipped vectors (see :func:`~worker.replication.resolve.resolve_changes`)
DECODED_ELSEWHERE = RouteDefinition.model_construct(name="(decoded in another process)", utterances=["-"])
_NO_UNKNOWN: Counter[str] = Counter()


def _decoded_elsewhere(vectors: RouteVectors) -> _Decoded:
    return _Decoded(RouteMutation(name=vectors.name, definition=DECODED_ELSEWHERE), vectors, _NO_UNKNOWN)


def _route_name(key: bytes | None) -> str | None:
    """The route a record's key names, if it names one (a key that is not UTF-8 names none)."""
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def fold(
    records: Iterable[LogRecord],
    limits: Limits,
    resolve: Resolver | None = None,
    *,
    check: BatchCheck | None = None,
    yield_gil: bool = True,
    elsewhere: Mapping[int, RouteVectors] | None = None,
) -> FoldedMutations:
    """Fold ``records`` (in log order per partition) into their net effect.

    With ``check``, the vectors ``resolve`` made are checked by it for the whole batch at once
    (see :meth:`FoldedMutations.add_checked`). ``yield_gil`` lets other threads run every few
    records (see below); a replica replaying its log before it is ready turns it off: nothing is
    searching yet, and on a busy machine each voluntary switch cost milliseconds (a 20k-route replay
    spent 19 s of its 30 s in them). It then also pauses the cyclic garbage collector for the batch.
    ``elsewhere`` (with ``check`` and ``yield_gil`` off only): records decoded in another process
    (see :meth:`FoldedMutations.add_checked`).
    """
    folded = FoldedMutations()
    if elsewhere and (yield_gil or check is None or resolve is None):
        raise ValueError("records decoded elsewhere are folded with check and resolve, yield_gil off")
    if not yield_gil:
        # replaying before ready: the routes decoded here live until the table is built, and the
        # cyclic collector's passes meanwhile only re-scan them (and the replay's growing heap):
        # a sixth of a shipped route's decoding
        with collector_paused():
            if check is not None and resolve is not None:
                folded.add_checked(list(records), limits, resolve, check, elsewhere)
            else:
                for record in records:
                    folded.add(record, limits, resolve)
        return folded
    # live records come a few at a time: each checked on its own, between voluntary switches
    resolve_checked = _checked(resolve, check)
    for count, record in enumerate(records, start=1):
        folded.add(record, limits, resolve_checked)
        if count % _YIELD_EVERY == 0:
            # Decoding is pure Python and holds the GIL; without a voluntary release, threads that
            # take the GIL back after each C call (searches, the event loop) wait a whole switch
            # interval (5 ms) every time, and query throughput collapses while mutations apply.
            time.sleep(0)
    return folded


def _checked(resolve: Resolver | None, check: BatchCheck | None) -> Resolver | None:
    """``resolve`` followed by ``check`` of what it made, raising the fault ``check`` finds."""
    if resolve is None or check is None:
        return resolve

    def resolve_checked(definition: RouteDefinition) -> RouteVectors | None:
        vectors = resolve(definition)
        if vectors is not None:
            (fault,) = check([vectors])
            if fault is not None:
                raise fault
        return vectors

    return resolve_checked
