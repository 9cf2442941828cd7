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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worker.routing.errors import OffsetRegression, SchemaTooNew, StoreError
from worker.routing.native import collector_paused, spread_sample
from worker.routing.types import Route, RouteVectors, TableVersion, Vectors, make_version, route_digest

logger = logging.getLogger(__name__)

#: 2: the ``records`` table. A store of version 1 was written by a replica that skipped such
#: records, so it is emptied on opening and the log replayed from its start.
#: 3: utterance vectors in their own table (``route_vectors``), so a restart that has them from a
#: vectors file (:class:`KnownVectors`) reads the narrow ``routes`` rows without their pages.
#: A store of version 2 is converted in place, in one transaction (no replay needed).
SCHEMA_VERSION = 3

_ROUTES = """
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    digest TEXT NOT NULL,
    negative_vectors BLOB NOT NULL
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{_ROUTES};
CREATE TABLE IF NOT EXISTS route_vectors (name TEXT PRIMARY KEY, utterance_vectors BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

#: routes with a mapped view at most for which their vectors are checked against their digest
#: at load (a vectors file that does not hold what its manifest says is caught at once)
_SPOT_CHECKS = 16
#: at most this share of routes missing from the known vectors are read by name; more, by a scan
_LOOKUP_SHARE = 0.1


class KnownVectors(Protocol):
    """Utterance vectors a restart already has outside the store (a derived cache: the persisted
    index's vectors file), by route name and digest."""

    def utterance_vectors_of(self, names: Sequence[str], digests: Sequence[str]) -> list[Vectors | None]:
        """Read-only float32 rows of each route ``names[i]`` if the cache holds them for
        ``digests[i]``, else None."""
        ...


@dataclass(frozen=True)
class StoredState:
    """Everything a replica needs to rebuild its route table without re-embedding (routes unordered)."""

    routes: tuple[RouteVectors, ...]
    version: TableVersion
    #: unix ms when the replica last found ``version`` at (or past) the log's end; None: never
    caught_up_at_ms: int | None = None
    #: the log's records that are not routes, by key: the value last read for each
    records: Mapping[str, bytes] = field(default_factory=dict)
    #: routes whose utterance vectors came from the ``known`` vectors given to the load
    from_known: int = 0
    #: the (model fingerprint, dimension) of every route's vectors, each pair once
    models: frozenset[tuple[str, int]] = frozenset()
    #: ``routes`` by name (made as they were read: a restart's table wants them so)
    by_name: Mapping[str, RouteVectors] = field(default_factory=dict)
    #: waits for the check of the routes' definitions (see :meth:`RouteStore.load`), raising
    #: :class:`StoreError` for one that is not sound; at once when the load waited for it
    check: Callable[[], None] = field(default=lambda: None, compare=False)


class _DefinitionCheck:
    """:meth:`RouteStore.sound_definitions`, in a thread started with a load, compared with what
    the load read: a difference has every route read and checked in the caller's thread."""

    def __init__(self, store: RouteStore) -> None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="route-store-check")
        self._counted = pool.submit(store.sound_definitions)
        pool.shutdown(wait=False)  # its one task runs on; the thread ends with it

    def wait(self, routes: Sequence[RouteVectors], utterances: int, version: TableVersion) -> None:
        """Return once the routes a load read are known sound, else raise :class:`StoreError`."""
        # fewer sound routes, other counts, or another version (the store changed between the
        # two reads): the routes the load read are checked one by one
        try:
            counted = self._counted.result()
        except sqlite3.OperationalError:  # a JSON function's "malformed JSON"
            counted = None
        if counted != (len(routes), utterances, version):
            _check_each(routes)


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
            stored = SCHEMA_VERSION if row is None else int(row[0])
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif stored > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {row[0]}, this routeworker understands up to "
                    f"{SCHEMA_VERSION}: upgrade routeworker or point it at a fresh store"
                )
            if stored < 2:
                logger.warning(
                    "%s predates calibration records (schema %s): emptied to replay the log from its start",
                    self.path,
                    stored,
                )
                conn.execute("DELETE FROM routes")
                conn.execute("DELETE FROM offsets")
            if stored < 3:
                _split_vectors_out(conn, self.path)
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
                gone = [(name,) for name in deletes]
                conn.executemany("DELETE FROM routes WHERE name = ?", gone)
                conn.executemany("DELETE FROM route_vectors WHERE name = ?", gone)
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

    def load(self, known: KnownVectors | None = None, *, check_later: bool = False) -> StoredState:
        """Read every route with its vectors, and the offsets they reflect, in one consistent read.

        Utterance vectors ``known`` holds for a route's name and digest are taken from it (not read
        from the store, whose rows of them are then never touched); the others are read here. A
        few routes given such vectors have them checked against their digest: on a mismatch the
        cache is not what it claims, a warning says so and every route is read from the store.

        Routes are made without reading their definitions (:meth:`Route.stored_lazily`). That
        every definition is sound, and has as many utterances and negatives as its route has
        vectors, is checked in SQL meanwhile, in a thread of its own (SQLite's JSON functions run
        without the GIL); a store that fails it has each route read and checked, and the first
        that is not sound is named (:class:`StoreError`). The load waits for it unless
        ``check_later``: then :attr:`StoredState.check` does, and must be called before the
        routes serve.
        """
        check = _DefinitionCheck(self)
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                models = frozenset((str(fp), int(dim)) for fp, dim in conn.execute(_SELECT_MODELS))
                routes, by_name, given, utterances = self._load_routes(conn, models, known)
                if not _spot_checked(given):
                    logger.warning(
                        "vectors of %s do not match the routes' digests: reading every route's "
                        "vectors from %s instead",
                        known,
                        self.path,
                    )
                    routes, by_name, given, utterances = self._load_routes(conn, models, None)
                version = make_version(dict(conn.execute("SELECT partition, next_offset FROM offsets")))
                caught_up = _caught_up_at(conn)
                records = {
                    str(key): bytes(value) for key, value in conn.execute("SELECT key, value FROM records")
                }
            finally:
                conn.execute("COMMIT")
        checked = functools.partial(check.wait, routes, utterances, version)
        if not check_later:
            checked()
        logger.info("loaded %d routes at %s from %s", len(routes), version, self.path)
        return StoredState(
            routes,
            version,
            caught_up_at_ms=caught_up,
            records=records,
            from_known=len(given),
            models=models,
            by_name=by_name,
            check=checked,
        )

    @staticmethod
    def _load_routes(
        conn: sqlite3.Connection, models: frozenset[tuple[str, int]], known: KnownVectors | None
    ) -> tuple[tuple[RouteVectors, ...], dict[str, RouteVectors], list[RouteVectors], int]:
        """Every stored route (also by name), those of them whose utterance vectors ``known``
        gave, and how many utterance vectors they have between them."""
        if len(models) == 1:  # the usual case: one model made every route (one string shared)
            ((model, width),) = models
            fingerprints: Iterable[str] = repeat(model)
            dims: Iterable[int] = repeat(width)
        else:
            each = conn.execute(_SELECT_KINDS).fetchall()
            fingerprints, dims = [str(row[0]) for row in each], [int(row[1]) for row in each]
        # 200k rows read, then 600k+ new objects without cycles: collections while they are made,
        # or after, only re-scan them (the load took twice as long)
        with collector_paused(freeze=True):
            # table order, not name order: a sequential scan is what makes a cold start fast
            rows = conn.execute(_SELECT_ROUTES).fetchall()
            if known is None:
                mapped: list[Vectors | None] = [None] * len(rows)
            else:
                mapped = known.utterance_vectors_of([row[0] for row in rows], [row[2] for row in rows])
            missing = [row[0] for row, vectors in zip(rows, mapped, strict=True) if vectors is None]
            blobs = _utterance_blobs(conn, missing, len(rows))
            routes, by_name, utterances = _routes_from_rows(rows, fingerprints, dims, mapped, blobs)
        if known is None:
            return routes, by_name, [], utterances
        logger.info(
            "%d of %d routes' utterance vectors taken from %s, %d read from the store",
            len(rows) - len(missing),
            len(rows),
            known,
            len(missing),
        )
        given = [rv for rv, vectors in zip(routes, mapped, strict=True) if vectors is not None]
        return routes, by_name, given, utterances

    def sound_definitions(self) -> tuple[int, int, TableVersion]:
        """How many routes have a sound definition (see ``_SOUND``), how many utterances those
        have between them, and the offsets, in one read."""
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                sound, utterances = conn.execute(_COUNT_SOUND).fetchone()
                version = make_version(dict(conn.execute("SELECT partition, next_offset FROM offsets")))
            finally:
                conn.execute("COMMIT")
        return int(sound), int(utterances or 0), version

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
            conn.execute("DELETE FROM route_vectors")
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

_SELECT_ROUTES = "SELECT name, definition, digest, negative_vectors FROM routes ORDER BY rowid"
_SELECT_KINDS = "SELECT fingerprint, dim FROM routes ORDER BY rowid"
_SELECT_MODELS = "SELECT DISTINCT fingerprint, dim FROM routes"
#: a stored definition whose route can be made without reading it: what canonical_json writes
#: (JSON of these fields, of the row's name), with one negative vector per negative utterance
_SOUND = (
    "json_valid(definition)"
    " AND json_extract(definition, '$.name') = name"
    " AND json_type(definition, '$.utterances') = 'array'"
    " AND json_type(definition, '$.negative_utterances') = 'array'"
    " AND json_type(definition, '$.threshold') IN ('null', 'real', 'integer')"
    " AND json_type(definition, '$.metadata') = 'object'"
    " AND length(negative_vectors) = json_array_length(definition, '$.negative_utterances') * dim * 4"
)
#: the sound routes and their utterances (JSON functions of one row share one parse of its text)
_COUNT_SOUND = (
    "SELECT count(*), sum(json_array_length(definition, '$.utterances')) FROM routes WHERE " + _SOUND
)


#: routes written per INSERT statement at most (6 parameters each; fewer where the SQLite build
#: allows fewer parameters per statement: 999 before 3.32)
_ROWS_PER_STATEMENT = 2_048
_COLUMNS = 6
_INSERT = (
    "INSERT OR REPLACE INTO routes (name, definition, fingerprint, dim, digest, negative_vectors) VALUES "
)
_INSERT_VECTORS = "INSERT OR REPLACE INTO route_vectors (name, utterance_vectors) VALUES "


def _insert_routes(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` up to 2,048 per statement, not one by one (``executemany``): each row's
    step gave up the GIL and waited to take it back from the thread decoding the next batch,
    which made writing four times slower beside a busy thread (a 200k-route replay decodes the
    next batch meanwhile)."""
    step = max(1, min(_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        conn.execute(
            _INSERT + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(part)),
            [value for row in part for value in row[:_COLUMNS]],
        )
        conn.execute(
            _INSERT_VECTORS + ",".join(["(?, ?)"] * len(part)),
            [value for row in part for value in (row[0], row[_COLUMNS])],
        )


def _split_vectors_out(conn: sqlite3.Connection, path: Path) -> None:
    """Convert a ``routes`` table of schema 1 or 2 (utterance vectors in its rows) to schema 3."""
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(routes)")}
    if "utterance_vectors" not in columns:
        return
    logger.warning("%s: moving utterance vectors to their own table (schema 3), once", path)
    conn.execute("ALTER TABLE routes RENAME TO routes_v2")
    conn.execute(_ROUTES)
    conn.execute(
        "INSERT INTO routes (name, definition, fingerprint, dim, digest, negative_vectors) "
        "SELECT name, definition, fingerprint, dim, digest, negative_vectors FROM routes_v2"
    )
    conn.execute(
        "INSERT INTO route_vectors (name, utterance_vectors) SELECT name, utterance_vectors FROM routes_v2"
    )
    conn.execute("DROP TABLE routes_v2")


def _utterance_blobs(conn: sqlite3.Connection, names: Sequence[str], routes: int) -> dict[str, bytes]:
    """The stored utterance vectors of ``names``: looked up by name when they are few of the
    ``routes``, else in one scan (in table order, sequential on disk)."""
    if not names:
        return {}
    if len(names) > _LOOKUP_SHARE * routes:
        wanted = set(names)
        return {
            name: blob
            for name, blob in conn.execute("SELECT name, utterance_vectors FROM route_vectors")
            if name in wanted
        }
    found: dict[str, bytes] = {}
    step = max(1, min(500, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
    for start in range(0, len(names), step):
        part = names[start : start + step]
        marks = ",".join("?" * len(part))
        found.update(
            conn.execute(f"SELECT name, utterance_vectors FROM route_vectors WHERE name IN ({marks})", part)
        )
    return found


def _spot_checked(given: Sequence[RouteVectors]) -> bool:
    """Whether a few of the routes ``given`` vectors from outside (evenly spread) match their digests."""
    sample = [given[at] for at in spread_sample(len(given), _SPOT_CHECKS)]
    return all(
        route_digest(rv.route, rv.utterance_vectors, rv.negative_vectors, rv.fingerprint) == rv.digest
        for rv in sample
    )


def _caught_up_at(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_CAUGHT_UP_KEY,)).fetchone()
    return None if row is None else int(row[0])


def _route_row(rv: RouteVectors) -> tuple[str, str, str, int, str, memoryview, memoryview]:
    """The ``routes`` row of ``rv``, then its utterance vectors (for ``route_vectors``)."""
    return (
        rv.name,
        rv.route.canonical_json(),
        rv.fingerprint,
        rv.dim,
        rv.digest,
        # One contiguous little-endian blob per route: loading is a single np.frombuffer, no parsing.
        # Bound as buffers, not tobytes() copies (1.5 GB of copying in a 1M-vector replay).
        _blob(rv.negative_vectors),
        _blob(rv.utterance_vectors),
    )


def _blob(vectors: Vectors) -> memoryview:
    if not vectors.size:
        return memoryview(b"")  # a view with a zero in its shape cannot be cast to bytes
    contiguous: Any = np.ascontiguousarray(vectors, dtype="<f4")  # numpy's stubs lack the buffer protocol
    return memoryview(contiguous).cast("B")


def _routes_from_rows(
    rows: Sequence[tuple[str, str, str, bytes]],
    fingerprints: Iterable[str],
    dims: Iterable[int],
    mapped: Sequence[Vectors | None],
    blobs: Mapping[str, bytes],
) -> tuple[tuple[RouteVectors, ...], dict[str, RouteVectors], int]:
    """Routes from their ``routes`` rows (name, definition, digest, negative vectors), models
    and utterance vectors: rows of a vectors file (``mapped``, read-only float32 as the store
    would make them), else their stored blobs; also by name; and how many utterance vectors
    they have. (By name here, while each is at hand: a pass over 200k routes afterwards is a
    tenth of a second of cache misses.)

    Definitions are kept to be read when asked for (:meth:`Route.stored_lazily`, inlined);
    the load checks they match the vectors (see :class:`_DefinitionCheck`). One loop with
    everything in locals: it runs 200k times at a restart, and calls per route (a helper, a
    cached empty matrix) were a third of it.
    """
    new_route, set_field = functools.partial(object.__new__, Route), object.__setattr__
    new_route_vectors = functools.partial(object.__new__, RouteVectors)
    empty: dict[int, Vectors] = {}
    made: list[RouteVectors] = []
    add = made.append
    by_name: dict[str, RouteVectors] = {}
    counted = 0
    for (name, definition, digest, negatives), fingerprint, dim, got in zip(
        rows, fingerprints, dims, mapped, strict=False
    ):
        route = new_route()
        set_field(route, "__dict__", {"name": name, "_definition": definition})
        if got is None:
            utterances = _stored_vectors(blobs.get(name, b""), dim)
        else:
            utterances = got if got.shape[1] == dim else None
        if negatives:
            negative_vectors = _stored_vectors(negatives, dim)
        else:
            negative_vectors = empty.get(dim)
            if negative_vectors is None:
                negative_vectors = empty[dim] = _no_vectors(dim)
        if utterances is None or negative_vectors is None:
            raise StoreError(f"route {name!r}: stored vectors do not match its utterances")
        counted += len(utterances)
        # RouteVectors.trusted, inlined (its keyword arguments and dict update were a sixth of this)
        made_vectors = new_route_vectors()
        set_field(
            made_vectors,
            "__dict__",
            {
                "route": route,
                "utterance_vectors": utterances,
                "negative_vectors": negative_vectors,
                "fingerprint": fingerprint,
                "digest": digest,
            },
        )
        add(made_vectors)
        by_name[name] = made_vectors
    return tuple(made), by_name, counted


def _check_each(routes: Sequence[RouteVectors]) -> None:
    """Read every route's definition and check its vectors match it: the first that does not is
    named (:class:`StoreError`), as a route's construction would (a store that failed ``_SOUND``)."""
    for rv in routes:
        route = rv.route
        if rv.utterance_vectors.shape[0] != len(route.utterances) or rv.negative_vectors.shape[0] != len(
            route.negative_utterances
        ):
            raise StoreError(f"route {route.name!r}: stored vectors do not match its utterances")


def _stored_vectors(blob: bytes, dim: int) -> Vectors | None:
    """Rows of ``dim`` float32 over ``blob`` (no copy), None when it is not a whole number of rows."""
    rows, rest = divmod(len(blob), dim * 4)
    if rest:
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
