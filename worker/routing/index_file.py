"""Persisting the main index beside the store, so a restart loads it instead of rebuilding.

A manifest (JSON) names the index file and lists its slots (route name, route digest, rows). On
load, slots whose route is unchanged in the store are reused; changed or deleted routes are masked
by the table and served from its overlay, so a few mutations after the last rebuild never force a
full rebuild at start-up. Files are written under temporary names and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from worker.routing.index import IndexKind, IndexSettings, MainIndex, faiss
from worker.routing.types import RouteVectors

logger = logging.getLogger(__name__)

MANIFEST = "main-index.json"
_FORMAT = 1


def save_main(main: MainIndex, directory: Path, fingerprint: str) -> Path | None:
    """Write ``main`` and its manifest into ``directory``; returns the index file (None if empty)."""
    if main.index is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    digest = main.digest
    index_path = directory / f"main-{main.kind}-{digest[:24]}.faiss"
    temporary = index_path.with_suffix(".faiss.tmp")
    faiss.write_index(main.index, str(temporary))
    os.replace(temporary, index_path)
    manifest = {
        "format": _FORMAT,
        "kind": main.kind,
        "dim": main.dim,
        "fingerprint": fingerprint,
        "digest": digest,
        "index_file": index_path.name,
        "slots": [[n, d, int(c)] for n, d, c in zip(main.names, main.digests, main.counts, strict=True)],
    }
    temporary_manifest = directory / (MANIFEST + ".tmp")
    temporary_manifest.write_text(json.dumps(manifest, separators=(",", ":")))
    os.replace(temporary_manifest, directory / MANIFEST)
    for old in directory.glob("main-*.faiss"):
        if old != index_path:
            old.unlink(missing_ok=True)
    logger.info("persisted %s index of %d vectors to %s", main.kind, main.rows, index_path)
    return index_path


def load_main(
    directory: Path,
    routes: Mapping[str, RouteVectors],
    dim: int,
    fingerprint: str,
    settings: IndexSettings,
) -> MainIndex | None:
    """Load the persisted main index if it fits this table, else None (the caller rebuilds).

    It fits when it was built with the same model and dimension and is of the kind ``settings``
    picks for its size. ``routes`` are the store's routes; slots whose digest matches reuse them.
    """
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable index manifest %s: %s", manifest_path, error)
        return None
    slots = [(str(n), str(d), int(c)) for n, d, c in manifest.get("slots", ())]
    rows = sum(c for _, _, c in slots)
    kind = cast(IndexKind, manifest.get("kind"))
    reason = None
    if manifest.get("format") != _FORMAT:
        reason = f"format {manifest.get('format')}"
    elif manifest.get("dim") != dim or manifest.get("fingerprint") != fingerprint:
        reason = "another model"
    elif kind != settings.kind_for(rows):
        reason = f"a {kind} index where settings want {settings.kind_for(rows)}"
    if reason is not None:
        logger.info("ignoring persisted index in %s: %s", directory, reason)
        return None
    index_path = directory / str(manifest["index_file"])
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        logger.warning("ignoring unreadable index %s: %s", index_path, error)
        return None
    if index.ntotal != rows or index.d != dim:
        logger.warning(
            "ignoring index %s: %d rows of dim %d, manifest says %d", index_path, index.ntotal, index.d, rows
        )
        return None
    known = {
        name: routes[name] for name, digest, _ in slots if name in routes and routes[name].digest == digest
    }
    logger.info(
        "loaded %s index of %d vectors (%d of %d routes unchanged) from %s",
        kind,
        rows,
        len(known),
        len(slots),
        index_path,
    )
    return MainIndex.assemble(dim, kind, index, slots, known, settings.ef_search)
