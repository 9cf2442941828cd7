"""Persisting the main index beside the store, so a restart maps it instead of rebuilding.

A manifest (JSON) names the index file and lists its slots (route names, digests and row counts,
column by column). On load, slots whose route is unchanged in the store are reused; changed or
deleted routes are masked by the table and served from its overlay, so a few mutations after the
last rebuild never force a full rebuild at start-up. The index file is mapped into memory (pages
are read on first use and shared with the page cache), so loading takes milliseconds whatever its
size. Files are written under temporary names and renamed into place; the file of the index being
replaced is kept until the next rebuild (see :func:`place_index`).
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from worker.routing.build_job import JOB_PREFIX
from worker.routing.calibration import searched_lists
from worker.routing.index import MainIndex, codes_label, map_index
from worker.routing.index_settings import IndexKind, IndexSettings
from worker.routing.native import faiss, pause
from worker.routing.store import RouteStore, StoredState
from worker.routing.types import RouteVectors
from worker.routing.vectors_file import SUFFIX as VECTORS_SUFFIX
from worker.routing.vectors_file import MappedVectors, map_vectors, vectors_beside

logger = logging.getLogger(__name__)

MANIFEST = "main-index.json"
#: 4: IVF lists may hold float16 codes ("codes" in the header); 5: or 4-bit PQ codes of residuals
#: beside 8-bit codes of every row (a faiss IndexRefine over an IndexIVFPQFastScan, "pq4xM")
_FORMAT = 5
#: manifest entries serialised between two pauses
_COLUMN_SLICE = 4_096


def place_index(main: MainIndex, directory: Path, keep: Path | None = None) -> MainIndex:
    """Give ``main``'s index its own file in ``directory``; returns ``main`` naming that file.

    An index built by a child process is moved there (it stays mapped), one in memory is written.
    Older index files are deleted except ``keep``: the file of the index being replaced, which
    searches may still hold. It goes at the next placement, unmapped by then: unlinking a file
    first and unmapping it later frees its pages while the GIL is held (30 ms for 384 MB), while
    ``os.unlink`` of a file nobody maps frees them without it.
    """
    if main.index is None:
        return main
    directory.mkdir(parents=True, exist_ok=True)
    placed = main.path
    if placed is None or placed.parent != directory:
        placed = directory / f"main-{main.kind}-{uuid.uuid4().hex[:16]}.faiss"
        _move_or_write(main, placed)
    vectors = _place_vectors(main, vectors_beside(placed))
    kept = (placed, keep, vectors, None if keep is None else vectors_beside(keep))
    for old in (*directory.glob("main-*.faiss"), *directory.glob("main-*" + VECTORS_SUFFIX)):
        if old not in kept:
            old.unlink(missing_ok=True)
    for job in directory.glob(JOB_PREFIX + "*"):
        shutil.rmtree(job, ignore_errors=True)
    if placed == main.path and vectors == main.vectors_path:
        return main
    return dataclasses.replace(main, path=placed, vectors_path=vectors)


def _place_vectors(main: MainIndex, target: Path) -> Path | None:
    """Move ``main``'s vectors file to ``target`` (a rename: its mapping and the views stay valid)."""
    if main.vectors_path is None or main.vectors_path == target:
        return main.vectors_path
    try:
        os.replace(main.vectors_path, target)
    except OSError as error:
        # the routes keep their views of the file where it is; a restart reads them from the store
        logger.info("not keeping vectors file %s beside the index: %s", main.vectors_path, error)
        return None
    return target


def write_manifest(main: MainIndex, directory: Path, fingerprint: str) -> None:
    """Describe ``main`` (placed by :func:`place_index`) in ``directory``'s manifest."""
    if main.index is None or main.path is None or main.path.parent != directory:
        raise ValueError("write_manifest needs an index placed in the same directory")
    header = {
        "format": _FORMAT,
        "kind": main.kind,
        "lists": _lists(main.index, main.kind),
        "codes": _codes(main.index, main.kind),
        "dim": main.dim,
        "fingerprint": fingerprint,
        "index_file": main.path.name,
    }
    if main.vectors_path is not None and main.vectors_path.parent == directory:
        header["vectors_file"] = main.vectors_path.name
    temporary = directory / (MANIFEST + ".tmp")
    with open(temporary, "wb") as out:
        # Column by column, in slices: this runs beside the searches, and one orjson call over 50k
        # digests holds the GIL for ~3 ms (a list of per-slot tuples took 15 ms to build).
        out.write(orjson.dumps(header)[:-1])
        for key, column in (
            ("names", main.names),
            ("digests", main.digests),
            ("counts", main.counts.tolist()),
        ):
            out.write(b',"' + key.encode() + b'":[')
            for start in range(0, len(column), _COLUMN_SLICE):
                if start:
                    pause()
                    out.write(b",")
                out.write(orjson.dumps(column[start : start + _COLUMN_SLICE])[1:-1])
            out.write(b"]")
        out.write(b"}")
    os.replace(temporary, directory / MANIFEST)
    logger.info("persisted %s index of %d vectors to %s", main.kind, main.rows, main.path)


def _move_or_write(main: MainIndex, index_path: Path) -> None:
    if main.path is not None:
        try:
            os.replace(main.path, index_path)  # same file system: a rename, the mapping stays valid
            return
        except OSError as error:
            logger.info("copying index %s instead of moving it: %s", main.path, error)
    temporary = index_path.with_suffix(".faiss.tmp")
    faiss.write_index(main.index, str(temporary))
    os.replace(temporary, index_path)


def _lists(index: Any, kind: IndexKind) -> int:
    return int(faiss.extract_index_ivf(index).nlist) if kind == "ivf" else 0


def _codes(index: Any, kind: IndexKind) -> str | None:
    return codes_label(index) if kind == "ivf" else None


@dataclass(frozen=True, eq=False)
class Persisted:
    """A manifest read from an index folder: its header and slot columns, and the vectors file it
    names, mapped (None when it names none, or the file is missing or of another size)."""

    directory: Path
    header: Mapping[str, Any]
    names: tuple[str, ...]
    digests: tuple[str, ...]
    counts: list[int]
    vectors: MappedVectors | None


def read_persisted(directory: Path, dim: int, fingerprint: str) -> Persisted | None:
    """The manifest in ``directory`` with its vectors file mapped if they are of this model, else
    None (no manifest, or one that cannot be read). Says in a log line why a vectors file is not used."""
    manifest_path = directory / MANIFEST
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
        names = tuple(map(str, manifest.get("names", ())))
        digests = tuple(map(str, manifest.get("digests", ())))
        counts = [int(count) for count in manifest.get("counts", ())]
        if not len(names) == len(digests) == len(counts):
            raise ValueError("columns of different lengths")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as error:
        logger.warning("ignoring unreadable index manifest %s: %s", manifest_path, error)
        return None
    header = {key: value for key, value in manifest.items() if key not in ("names", "digests", "counts")}
    vectors = None
    named = header.get("vectors_file")
    if manifest.get("dim") != dim or manifest.get("fingerprint") != fingerprint:
        pass  # of another model: load_main says so
    elif not isinstance(named, str):
        logger.info(
            "index manifest %s names no vectors file: the store has every route's vectors", manifest_path
        )
    else:
        path = directory / named
        mapped = map_vectors(path, sum(counts), dim)
        if mapped is None:
            logger.warning(
                "vectors file %s is missing or not of %d rows of dim %d: reading every route's vectors "
                "from the store",
                path,
                sum(counts),
                dim,
            )
        else:
            vectors = MappedVectors(path, mapped, names, digests, np.array(counts, dtype=np.int64))
    return Persisted(directory, header, names, digests, counts, vectors)


def load_stored(
    store: RouteStore, directory: Path, dim: int, fingerprint: str, *, check_later: bool = False
) -> tuple[StoredState, Persisted | None]:
    """The store's state, with the utterance vectors of routes unchanged since the persisted index
    was built taken from its vectors file (not read from the store), and the manifest read.

    ``check_later``: as :meth:`RouteStore.load` takes it (then call ``state.check()`` before serving).
    """
    persisted = read_persisted(directory, dim, fingerprint)
    state = store.load(None if persisted is None else persisted.vectors, check_later=check_later)
    if persisted is not None and persisted.vectors is not None and not state.from_known:
        # not used (nothing matched, or it failed the store's check): nobody may read rows from it
        persisted = dataclasses.replace(persisted, vectors=None)
    return state, persisted


def load_main(
    directory: Path,
    routes: Mapping[str, RouteVectors],
    dim: int,
    fingerprint: str,
    settings: IndexSettings,
    persisted: Persisted | None = None,
) -> MainIndex | None:
    """Load the persisted main index if it fits this table, else None (the caller rebuilds).

    It fits when it was built with the same model and dimension and is of the kind (and list
    count) ``settings`` pick for its size. ``routes`` are the store's; slots whose digest matches
    reuse them. ``persisted`` is the manifest as :func:`load_stored` returned it: its vectors file
    (if it has one) then serves the exact re-scoring; read here, the vectors file is not used.
    """
    if persisted is None:
        persisted = read_persisted(directory, dim, fingerprint)
        if persisted is None:
            return None
        # its vectors file is used only as :func:`load_stored` found it (checked against the routes)
        persisted = dataclasses.replace(persisted, vectors=None)
    manifest, names, digests, counts = persisted.header, persisted.names, persisted.digests, persisted.counts
    rows = sum(counts)
    kind = manifest.get("kind")
    reason = None
    if manifest.get("format") != _FORMAT:
        reason = f"format {manifest.get('format')}"
    elif manifest.get("dim") != dim or manifest.get("fingerprint") != fingerprint:
        reason = "another model"
    elif kind != settings.kind_for(rows):
        reason = f"a {kind} index where settings want {settings.kind_for(rows)}"
    elif kind == "ivf" and manifest.get("lists") != settings.lists_for(rows):
        reason = f"{manifest.get('lists')} lists where settings want {settings.lists_for(rows)}"
    elif kind == "ivf" and manifest.get("codes") != settings.codes_label(dim, rows):
        reason = f"{manifest.get('codes')} codes where settings want {settings.codes_label(dim, rows)}"
    # in one C pass: nothing searches yet (is_sorted's pauses for them were 97 sleeps at 200k)
    elif not all(map(operator.lt, names, names[1:])):
        reason = "slots out of name order"
    if reason is not None:
        logger.info("ignoring persisted index in %s: %s", directory, reason)
        return None
    index_path = directory / str(manifest["index_file"])
    try:
        index = map_index(index_path)
    except RuntimeError as error:
        logger.warning("ignoring unreadable index %s: %s", index_path, error)
        return None
    if (
        index.ntotal != rows
        or index.d != dim
        or _lists(index, cast(IndexKind, kind)) != manifest.get("lists")
        or _codes(index, cast(IndexKind, kind)) != manifest.get("codes")
    ):
        logger.warning(
            "ignoring index %s: %d rows of dim %d, manifest says %d", index_path, index.ntotal, index.d, rows
        )
        return None
    # in C, without a Python call per slot (200k at a restart)
    held = tuple(map(routes.get, names))
    same = list(map(operator.eq, map(getattr, held, repeat("digest"), repeat(None)), digests))
    slot_routes = (
        held if all(same) else tuple(rv if alike else None for rv, alike in zip(held, same, strict=True))
    )
    main = MainIndex.assemble(
        dim,
        cast(IndexKind, kind),
        index,
        names,
        digests,
        counts,
        slot_routes,
        searched_lists(index, cast(IndexKind, kind), settings),
        index_path,
        threads=settings.faiss_threads,
        vectors_path=None if persisted.vectors is None else persisted.vectors.path,
    )
    logger.info(
        "loaded %s index of %d vectors (%d of %d routes unchanged) from %s",
        kind,
        rows,
        int(main.known.sum()),
        len(names),
        index_path,
    )
    return main
