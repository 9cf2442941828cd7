"""Route files (YAML or JSON): a list of routes, validated in full before anything is published.

Every problem names its route (by name, or by position when the name itself is at fault) and the
field, so a CI job that rejects a file says exactly what to fix. A field this version does not know
is a problem here (a typo such as ``treshold`` would otherwise vanish): replicas tolerate unknown
fields in published records, the tool that writes them does not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from worker.contracts import Limits, RouteDefinition, encode
from worker.contracts.evolution import unknown_fields
from worker.replication.errors import FILE, RouteFileError, RouteProblem


def load_route_file(path: Path, limits: Limits | None = None) -> list[RouteDefinition]:
    """Read and validate ``path``: a YAML or JSON list of routes (or a mapping with ``routes:``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RouteFileError(str(path), [RouteProblem(FILE, "file", str(error))]) from None
    try:
        document: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        problem = RouteProblem(FILE, "syntax", " ".join(str(error).split()))
        raise RouteFileError(str(path), [problem]) from None
    return parse_routes(document, str(path), limits)


def parse_routes(document: Any, source: str, limits: Limits | None = None) -> list[RouteDefinition]:
    """Validate a parsed route document; raises :class:`RouteFileError` listing every problem."""
    limits = limits or Limits()
    if isinstance(document, dict) and set(document) == {"routes"}:
        document = document["routes"]
    if not isinstance(document, list):
        found = type(document).__name__ if document is not None else "nothing"
        raise RouteFileError(
            source, [RouteProblem(FILE, "document", f"expected a list of routes, got {found}")]
        )
    problems: list[RouteProblem] = []
    routes: list[RouteDefinition] = []
    first_seen: dict[str, int] = {}
    for position, item in enumerate(document, start=1):
        label = _label(item, position)
        raw_name = item.get("name") if isinstance(item, dict) else None
        if isinstance(raw_name, str) and raw_name in first_seen:
            problems.append(
                RouteProblem(label, "name", f"duplicate: route #{first_seen[raw_name]} has the same name")
            )
            continue
        if isinstance(raw_name, str):
            first_seen[raw_name] = position
        if not isinstance(item, dict):
            problems.append(RouteProblem(label, "(route)", f"expected a mapping, got {type(item).__name__}"))
            continue
        unknown = [
            RouteProblem(label, path, "unknown field") for path in unknown_fields(RouteDefinition, item)
        ]
        try:
            route = RouteDefinition.model_validate(item)
        except ValidationError as error:
            problems.extend(_problems(label, error) + unknown)
            continue
        if unknown:
            problems.extend(unknown)
            continue
        size = len(encode(route))
        if size > limits.max_mutation_bytes:
            problems.append(
                RouteProblem(
                    label, "(route)", f"{size} bytes, the mutation limit is {limits.max_mutation_bytes}"
                )
            )
            continue
        routes.append(route)
    if problems:
        raise RouteFileError(source, problems)
    return routes


def check_sizes(routes: Sequence[RouteDefinition], limits: Limits, source: str) -> None:
    """Fail if any encoded route exceeds the mutation size limit (e.g. once vectors are attached)."""
    problems = [
        RouteProblem(
            repr(r.name), "embeddings", f"record of {size} bytes exceeds {limits.max_mutation_bytes}"
        )
        for r in routes
        if (size := len(encode(r))) > limits.max_mutation_bytes
    ]
    if problems:
        raise RouteFileError(source, problems)


def dump_routes(routes: Sequence[RouteDefinition]) -> str:
    """Routes as a YAML document a person can edit and apply again (embeddings left out)."""
    plain = [orjson.loads(orjson.dumps(r.model_dump(mode="json", exclude={"embeddings"}))) for r in routes]
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def _label(item: object, position: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and name.strip():
        return f"{name!r} (#{position})"
    return f"#{position}"


def _problems(label: str, error: ValidationError) -> list[RouteProblem]:
    found = []
    for detail in error.errors(include_url=False):
        field = ".".join(str(part) for part in detail["loc"]) or "(route)"
        found.append(RouteProblem(label, field, detail["msg"]))
    return found
