"""SQLite store of routes, their vectors and the mutation-log offsets they reflect.

State and offsets are written in one transaction, so after a crash the store resumes the log exactly
where its state stops. Besides routes it keeps the log's other records by key (the calibration
record), as they were read, in the same transaction, and when its replica last saw its offsets at the
log's end (:meth:`RouteStore.mark_caught_up`): whether a resume from them can be trusted depends on it
(see :mod:`worker.replication.resume`). Every call opens its own connection: a store object may be
used from any thread, SQLite's WAL journal lets readers run while one writer commits.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from worker.routing.errors import OffsetRegression, SchemaTooNew, StoreError
from worker.routing.native import collector_paused
from worker.routing.types import Route, RouteVectors, TableVersion, Vectors, make_version

logger = logging.getLogger(__name__)

#: 2: the ``records`` table. A store of version 1 was written by a replica that skipped such
#: records, so it is emptied on opening and the log replayed from its start.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    utterance_vectors BLOB NOT NULL,
    negative_vectors BLOB NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


@dataclass(frozen=True)
class StoredState:
    """Everything a replica needs to rebuild its route table without re-embedding (routes unordered)."""

    routes: tuple[RouteVectors, ...]
    version: TableVersion
    #: unix ms when the replica last found ``version`` at (or past) the log's end; None: never
    caught_up_at_ms: int | None = None
    #: the log's records that are not routes, by key: the value last read for each
    records: Mapping[str, bytes] = field(default_factory=dict)


class RouteStore:
    """Routes with their vectors and the applied mutation-log offsets, in one SQLite file.

    All methods are synchronous and do file I/O: call them from a worker thread, never the event loop.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # Vectors are kilobytes per route: bigger pages mean fewer overflow pages to chase on load.
            # (Only takes effect while the file is new, before WAL is switched on.)
            conn.execute("PRAGMA page_size=16384")
            conn.execute("PRAGMA journal_mode=WAL")
            self._migrate(conn)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call keeps every connection on the thread that made it.
        with closing(sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)) as conn:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn

    def held_open(self) -> sqlite3.Connection:
        """An idle connection to hold over many transactions (a replay), closed by the caller.

        SQLite checkpoints and deletes the WAL file when its last connection closes: a replay
        committing one batch at a time made and removed a 20 MB file for each (a fifth of its
        store writes' time). While this is open the file stays and is written over. Any thread
        may close it.
        """
        conn = sqlite3.connect(self.path, timeout=self._timeout, check_same_thread=False)
        conn.execute("SELECT count(*) FROM meta").fetchall()  # a read opens the WAL: now it counts
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {row[0]}, this routeworker understands up to "
                    f"{SCHEMA_VERSION}: upgrade routeworker or point it at a fresh store"
                )
            elif int(row[0]) < 2:
                logger.warning(
                    "%s predates calibration records (schema %s): emptied to replay the log from its start",
                    self.path,
                    row[0],
                )
                conn.execute("DELETE FROM routes")
                conn.execute("DELETE FROM offsets")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def apply(
        self,
        upserts: Sequence[RouteVectors],
        deletes: Sequence[str],
        offsets: Mapping[int, int],
        records: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Write route upserts, deletions, other records and the new log offsets in ONE transaction.

        Offsets are next offsets (last applied + 1) per partition; moving one backwards raises
        :class:`OffsetRegression` and writes nothing. ``records`` maps a key to its new value, or
        to None to forget it.
        """
        records = records or {}
        # in name order: neighbouring keys land on neighbouring pages of the name index
        rows = sorted(map(_route_row, upserts), key=itemgetter(0))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_offsets(conn, offsets)
                _insert_routes(conn, rows)
                conn.executemany("DELETE FROM routes WHERE name = ?", [(name,) for name in deletes])
                conn.executemany(
                    "INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)",
                    [(key, value) for key, value in records.items() if value is not None],
                )
                conn.executemany(
                    "DELETE FROM records WHERE key = ?",
                    [(key,) for key, value in records.items() if value is None],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO offsets (partition, next_offset) VALUES (?, ?)",
                    [(int(p), int(o)) for p, o in offsets.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        logger.debug("stored %d upserts, %d deletes, offsets %s", len(rows), len(deletes), dict(offsets))

    @staticmethod
    def _check_offsets(conn: sqlite3.Connection, offsets: Mapping[int, int]) -> None:
        stored = dict(conn.execute("SELECT partition, next_offset FROM offsets").fetchall())
        for partition, offset in offsets.items():
            if offset < stored.get(partition, 0):
                raise OffsetRegression(
                    f"partition {partition}: offset {offset} is behind the stored {stored[partition]}"
                )

    def load(self) -> StoredState:
        """Read every route with its vectors, and the offsets they reflect, in one consistent read."""
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                cursor = conn.execute(
                    "SELECT definition, fingerprint, dim, utterance_vectors, negative_vectors, digest "
                    # table order, not name order: a sequential scan is what makes a cold start fast
                    "FROM routes"
                )
                # 200k routes are 1M+ new objects without cycles: collections while they are
                # made only re-scan them (the load took twice as long)
                with collector_paused():
                    routes = tuple(_route_from_row(*row) for row in cursor)
                version = make_version(dict(conn.execute("SELECT partition, next_offset FROM offsets")))
                caught_up = _caught_up_at(conn)
                records = {
                    str(key): bytes(value) for key, value in conn.execute("SELECT key, value FROM records")
                }
            finally:
                conn.execute("COMMIT")
        logger.info("loaded %d routes at %s from %s", len(routes), version, self.path)
        return StoredState(routes, version, caught_up_at_ms=caught_up, records=records)

    def version(self) -> TableVersion:
        """The stored mutation-log position."""
        with self._connect() as conn:
            return make_version(dict(conn.execute("SELECT partition, next_offset FROM offsets")))

    def mark_caught_up(self, at_ms: int) -> None:
        """Record that at ``at_ms`` the stored offsets were at (or past) the log's end.

        Offsets only move forward, so the mark stays true of every later state: every record after
        the stored offsets was appended after ``at_ms``. An older mark is never written over a newer.
        """
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                "excluded.value WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)",
                (_CAUGHT_UP_KEY, str(int(at_ms))),
            )

    def caught_up_at_ms(self) -> int | None:
        """The last :meth:`mark_caught_up` (None: never, or cleared since)."""
        with self._connect() as conn:
            return _caught_up_at(conn)

    def clear(self) -> None:
        """Forget every route and offset (a replica that must replay its log from the start)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM routes")
            conn.execute("DELETE FROM offsets")
            conn.execute("DELETE FROM meta WHERE key = ?", (_CAUGHT_UP_KEY,))
            conn.execute("DELETE FROM records")
            conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no schema version")
        return int(row[0])


_CAUGHT_UP_KEY = "caught_up_at_ms"

#: routes written per INSERT statement at most (7 parameters each; fewer where the SQLite build
#: allows fewer parameters per statement: 999 before 3.32)
_ROWS_PER_STATEMENT = 2_048
_COLUMNS = 7
_INSERT = (
    "INSERT OR REPLACE INTO routes (name, definition, fingerprint, dim, utterance_vectors, "
    "negative_vectors, digest) VALUES "
)


def _insert_routes(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` up to 2,048 per statement, not one by one (``executemany``): each row's
    step gave up the GIL and waited to take it back from the thread decoding the next batch,
    which made writing four times slower beside a busy thread (a 200k-route replay decodes the
    next batch meanwhile)."""
    step = max(1, min(_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        placeholders = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(part))
        conn.execute(_INSERT + placeholders, [value for row in part for value in row])


def _caught_up_at(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_CAUGHT_UP_KEY,)).fetchone()
    return None if row is None else int(row[0])


def _route_row(rv: RouteVectors) -> tuple[str, str, str, int, memoryview, memoryview, str]:
    return (
        rv.name,
        rv.route.canonical_json(),
        rv.fingerprint,
        rv.dim,
        # One contiguous little-endian blob per route: loading is a single np.frombuffer, no parsing.
        # Bound as buffers, not tobytes() copies (1.5 GB of copying in a 1M-vector replay).
        _blob(rv.utterance_vectors),
        _blob(rv.negative_vectors),
        rv.digest,
    )


def _blob(vectors: Vectors) -> memoryview:
    if not vectors.size:
        return memoryview(b"")  # a view with a zero in its shape cannot be cast to bytes
    contiguous: Any = np.ascontiguousarray(vectors, dtype="<f4")  # numpy's stubs lack the buffer protocol
    return memoryview(contiguous).cast("B")


def _route_from_row(
    definition: str, fingerprint: str, dim: int, utterances: bytes, negatives: bytes, digest: str
) -> RouteVectors:
    route = Route.stored(orjson.loads(definition))
    utterance_vectors = _stored_vectors(utterances, len(route.utterances), dim)
    negative_vectors = _stored_vectors(negatives, len(route.negative_utterances), dim)
    if utterance_vectors is None or negative_vectors is None:
        raise StoreError(f"route {route.name!r}: stored vectors do not match its utterances")
    # read-only float32 rows over bytes, as RouteVectors would make them
    return RouteVectors.trusted(route, utterance_vectors, negative_vectors, fingerprint, digest)


def _stored_vectors(blob: bytes, rows: int, dim: int) -> Vectors | None:
    """``rows`` x ``dim`` float32 over ``blob`` (no copy), None when its size differs."""
    if len(blob) != rows * dim * 4:
        return None
    if not rows:
        return _no_vectors(dim)
    # one constructor call over the bytes (frombuffer + reshape was two, 200k times a restart)
    return np.ndarray((rows, dim), dtype="<f4", buffer=blob)


@functools.cache
def _no_vectors(dim: int) -> Vectors:
    """One shared read-only empty matrix per dimension (most routes have no negatives)."""
    empty = np.zeros((0, dim), dtype=np.float32)
    empty.flags.writeable = False
    return empty
