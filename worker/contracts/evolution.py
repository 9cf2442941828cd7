"""How the contracts evolve: readers tolerate fields they do not know, as Avro and Protobuf readers do.

A writer newer than its reader may add fields; the reader ignores them (they never reach the
message it builds, so nothing downstream of decoding, digests included, can depend on them), and
:func:`unknown_fields` names them so they can be counted. Strict mode (a setting) refuses them
instead: see :func:`worker.contracts.codec.decode_query`.

Every model's JSON Schema says ``additionalProperties: true`` to match: a field a writer adds is
valid against the schema of the version before.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict


def reader_config(title: str | None = None) -> ConfigDict:
    """The configuration of every contract model: frozen, fields it does not know ignored."""
    config = ConfigDict(extra="ignore", frozen=True, json_schema_extra={"additionalProperties": True})
    if title is not None:
        config["title"] = title
    return config


def unknown_fields(model: type[BaseModel], document: Mapping[str, Any]) -> list[str]:
    """Paths of the fields in ``document`` that ``model`` does not know, nested models included.

    Paths are dotted; list items read ``field[]`` (``routes[].colour``), so a field unknown in many
    items has one name. Free-form mappings (``metadata``) hold no unknown fields by definition.
    """
    return _unknown(model, document, "")


def _unknown(model: type[BaseModel], document: Mapping[str, Any], prefix: str) -> list[str]:
    known, nested = _shape(model)
    if not nested and document.keys() <= known:
        return []  # the common case (every query from a writer of this version): one set comparison
    found = [f"{prefix}{key}" for key in document if key not in known]
    for key, child in nested.items():
        value = document.get(key)
        if isinstance(value, dict):
            found += _unknown(child, value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found += _unknown(child, item, f"{prefix}{key}[].")
    return found


@cache
def _shape(model: type[BaseModel]) -> tuple[frozenset[str], dict[str, type[BaseModel]]]:
    """The keys ``model`` reads, and the model nested under each key that holds one."""
    known: set[str] = set()
    nested: dict[str, type[BaseModel]] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        known.add(key)
        child = _model_in(info.annotation)
        if child is not None:
            nested[key] = child
    return frozenset(known), nested


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds directly, optionally or as list items (``X``, ``X | None``,
    ``list[X]``); None for anything else (``dict[str, Any]`` is free-form)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, list, tuple):
        for argument in get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None


class FirstSightings:
    """Which unknown field paths are new to this process, so each is logged once, not per record.

    Remembers at most ``limit`` paths (a writer that invents a field per record cannot grow it
    without bound; past the limit nothing more is reported as new). Thread-safe.
    """

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def new(self, paths: Iterable[str]) -> list[str]:
        """The paths among ``paths`` not seen before (sorted), now remembered."""
        with self._lock:
            fresh = sorted(set(paths) - self._seen)[: max(self._limit - len(self._seen), 0)]
            self._seen.update(fresh)
            return fresh
