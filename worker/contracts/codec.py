"""Bytes <-> messages. Every malformed input becomes one :class:`ContractError` with a code.

Fields a message's model does not know are ignored (see :mod:`worker.contracts.evolution`); a
caller that passes ``unknown`` (a :class:`~collections.Counter`) gets their paths added to it, to
count them. Only queries can be strict about them (``Limits.contract_mode``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from worker.contracts.calibration import RouteCalibrationRecord
from worker.contracts.evolution import unknown_fields
from worker.contracts.limits import Limits
from worker.contracts.mutation import RouteDefinition, RouteMutation, constructed_definition
from worker.contracts.query import Query
from worker.errors import ContractError, ErrorCode

M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    """Serialise a message for the wire (UTF-8 JSON; nulls kept, so the schema stays explicit)."""
    return orjson.dumps(message.model_dump(mode="json"))


def _load_object(raw: bytes | None, max_bytes: int, what: str) -> dict[str, Any]:
    if raw is None:
        raise ContractError(ErrorCode.SCHEMA, f"{what} has no value")
    # checked before parsing: a huge document must not cost a parse
    if len(raw) > max_bytes:
        raise ContractError(ErrorCode.TOO_LARGE, f"{what} is {len(raw)} bytes, limit {max_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses input that is not UTF-8 before parsing it: only then is it checked
        # apart, to name the fault (decoding every record first was 2 us of a shipped route's 10 KB)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise ContractError(
                ErrorCode.INVALID_UTF8, f"{what} is not UTF-8: {utf8.reason} at byte {utf8.start}"
            ) from None
        raise ContractError(ErrorCode.INVALID_JSON, f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ContractError(
            ErrorCode.NOT_AN_OBJECT, f"{what} must be a JSON object, got {type(doc).__name__}"
        )
    return doc


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _validate(model: type[M], doc: dict[str, Any], what: str) -> M:
    try:
        message = model.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        kind = first["type"]
        code = ErrorCode.SCHEMA
        if kind == "string_too_long":
            code = ErrorCode.TOO_LARGE
        elif kind == "string_too_short" and first["loc"] == ("text",):
            code = ErrorCode.EMPTY_TEXT
        details = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors[:3])
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ContractError(code, f"{what} breaks its schema: {details}{more}") from None
    return message


def _count_unknown(model: type[BaseModel], doc: dict[str, Any], unknown: Counter[str] | None) -> None:
    # after every other check: only accepted records count (a rejected one is dead-lettered whole)
    if unknown is not None:
        unknown.update(unknown_fields(model, doc))


def _refuse_unknown(model: type[BaseModel], doc: dict[str, Any], what: str) -> None:
    found = unknown_fields(model, doc)
    if found:
        shown = ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        raise ContractError(
            ErrorCode.UNKNOWN_FIELD,
            f"{what} has fields this version does not know: {shown} (contract mode strict)",
        )


def decode_query(raw: bytes | None, limits: Limits, unknown: Counter[str] | None = None) -> Query:
    """Parse and validate one ``queries`` record value.

    Fields :class:`Query` does not know are ignored (and added to ``unknown``), or, in strict
    contract mode, make the query a :class:`ContractError` of code ``unknown_field``. They never
    reach the routed intent: ``metadata`` is the field that passes through.
    """
    doc = _load_object(raw, limits.max_message_bytes, "query")
    query = _validate(Query, doc, "query")
    if limits.contract_mode == "strict":
        _refuse_unknown(Query, doc, "query")
    if not query.text.strip():
        raise ContractError(ErrorCode.EMPTY_TEXT, "query text is empty after stripping white space")
    if len(query.text) > limits.max_text_chars:
        raise ContractError(
            ErrorCode.TOO_LARGE, f"query text is {len(query.text)} characters, limit {limits.max_text_chars}"
        )
    if query.top_n is not None and query.top_n > limits.max_top_n:
        raise ContractError(ErrorCode.SCHEMA, f"top_n is {query.top_n}, limit {limits.max_top_n}")
    _count_unknown(Query, doc, unknown)
    return query


def decode_mutation(
    key: bytes | None, raw: bytes | None, limits: Limits, unknown: Counter[str] | None = None
) -> RouteMutation:
    """Parse one ``route-mutations`` record. A null value is a tombstone for the key's route.

    Always tolerant, whatever ``limits.contract_mode``: fields this version does not know are
    left out of the definition (added to ``unknown``), so a replica of any version or mode builds
    the same route from the same record (refusing it would delete the route on some replicas only).
    """
    if not key:
        raise ContractError(ErrorCode.MISSING_KEY, "mutation record has no key (the route name)")
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError(ErrorCode.INVALID_UTF8, "mutation key is not UTF-8") from None
    if raw is None:
        return RouteMutation(name=name, definition=None)
    doc = _load_object(raw, limits.max_mutation_bytes, f"route {name!r}")
    # the shape this version writes, checked without pydantic (a third of a shipped route's
    # decoding); anything else is validated in full, and only then can it hold unknown fields
    definition = constructed_definition(doc)
    checked = definition is None
    if definition is None:
        definition = _validate(RouteDefinition, doc, f"route {name!r}")
    if definition.name != name:
        raise ContractError(
            ErrorCode.KEY_MISMATCH, f"record key {name!r} differs from the route's name {definition.name!r}"
        )
    if checked:
        _count_unknown(RouteDefinition, doc, unknown)
    return RouteMutation(name=name, definition=definition)


def decode_calibration(
    raw: bytes, limits: Limits, unknown: Counter[str] | None = None
) -> RouteCalibrationRecord:
    """Parse and validate the value of the calibration record of the ``route-mutations`` topic
    (always tolerant, as :func:`decode_mutation`)."""
    doc = _load_object(raw, limits.max_mutation_bytes, "calibration")
    record = _validate(RouteCalibrationRecord, doc, "calibration")
    _count_unknown(RouteCalibrationRecord, doc, unknown)
    return record
