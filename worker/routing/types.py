"""Value types of the routing engine: routes, their vectors, decisions and the table version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from worker.routing.errors import DimensionMismatch, InvalidRoute, StoreError

Vectors = npt.NDArray[np.float32]
Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

#: The mutation-log position a route table reflects: sorted ``(partition, next_offset)`` pairs.
TableVersion = tuple[tuple[int, int], ...]


def make_version(offsets: Mapping[int, int]) -> TableVersion:
    """Turn a partition -> next offset mapping into the canonical, sorted ``TableVersion``."""
    return tuple(sorted((int(p), int(o)) for p, o in offsets.items()))


def merge_versions(older: TableVersion, newer: TableVersion) -> TableVersion:
    """Combine two versions; the newer position wins per partition."""
    merged = dict(older)
    merged.update(newer)
    return make_version(merged)


def l2_normalise(vectors: npt.ArrayLike) -> Vectors:
    """Return float32, C-contiguous, row-wise L2-normalised copies (zero rows stay zero)."""
    # float64, and each row scaled by its largest component first: squaring a tiny component
    # (3.5e-161, say) underflows to a subnormal even in float64 and the norm comes out wrong.
    wide = np.array(vectors, dtype=np.float64, ndmin=2)
    peaks = np.max(np.abs(wide), axis=1, keepdims=True) if wide.size else np.zeros((len(wide), 1))
    np.divide(wide, peaks, out=wide, where=peaks > 0)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    np.divide(wide, norms, out=wide, where=norms > 0)
    return np.ascontiguousarray(wide, dtype=np.float32)


def frozen_vectors(vectors: npt.ArrayLike, dim: int | None = None) -> Vectors:
    """Return a read-only float32 C-contiguous 2-D view or copy of ``vectors``."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim == 1 and array.size == 0 and dim is not None:
        array = array.reshape(0, dim)
    if array.ndim != 2:
        raise DimensionMismatch(f"expected a 2-D array of vectors, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise DimensionMismatch(f"expected vectors of dimension {dim}, got {array.shape[1]}")
    if array.flags.writeable:
        # A snapshot shares these arrays with concurrent searches: nobody may mutate them in place.
        # Copying (rather than freezing the caller's array) leaves the caller's data alone.
        array = array.copy()
        array.flags.writeable = False
    return array


@dataclass(frozen=True)
class Route:
    """A route as users define it: example utterances, optional negatives, threshold and metadata."""

    name: str
    utterances: tuple[str, ...]
    negative_utterances: tuple[str, ...] = ()
    threshold: float | None = None
    metadata: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidRoute("a route needs a non-empty name")
        for attribute in ("utterances", "negative_utterances"):
            value = getattr(self, attribute)
            if _is_text(value):
                raise InvalidRoute(f"route {self.name!r}: {attribute} must be a sequence of strings")
            if type(value) is not tuple:
                object.__setattr__(self, attribute, tuple(value))

    def definition(self) -> dict[str, object]:
        """The route as a JSON-ready mapping (the shape stored and published)."""
        return {
            "name": self.name,
            "utterances": list(self.utterances),
            "negative_utterances": list(self.negative_utterances),
            "threshold": self.threshold,
            "metadata": dict(self.metadata),
        }

    def canonical_json(self) -> str:
        """Deterministic JSON of the definition: equal routes give equal text on every replica."""
        return self._canonical

    @cached_property
    def _canonical(self) -> str:
        # made once: the digest and the store both want it (a quarter of a 200k-route replay's
        # decoding when it was made twice)
        return canonical_text(self.definition())

    @classmethod
    def from_definition(cls, definition: Mapping[str, object]) -> Route:
        """Build a route from the mapping produced by :meth:`definition`."""
        threshold = definition.get("threshold")
        metadata = definition.get("metadata") or {}
        return cls(
            name=str(definition["name"]),
            utterances=tuple(map(str, _strings(definition.get("utterances")))),
            negative_utterances=tuple(map(str, _strings(definition.get("negative_utterances")))),
            threshold=None if threshold is None else float(threshold),  # type: ignore[arg-type]
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        )

    @classmethod
    def stored(cls, definition: Mapping[str, Any]) -> Route:
        """:meth:`from_definition` of what :meth:`definition` wrote, read back (the store): its
        types are known, so the conversions and checks a restart paid 200k times are skipped."""
        made = object.__new__(cls)
        threshold = definition["threshold"]
        # one update of the instance's __dict__ (a frozen dataclass refuses setattr): five
        # object.__setattr__ calls were a quarter of a 200k-route store load
        made.__dict__.update(
            name=definition["name"],
            utterances=tuple(definition["utterances"]),
            negative_utterances=tuple(definition["negative_utterances"]),
            threshold=None if threshold is None else float(threshold),
            metadata=definition["metadata"],
        )
        return made

    @classmethod
    def stored_lazily(cls, name: str, definition: str, canonical: str | None = None) -> Route:
        """The route ``name`` whose :meth:`canonical_json` the store holds as ``definition``, read
        only when one of its other fields is first asked for (then as :meth:`stored` reads it).
        ``canonical``: its :meth:`canonical_json`, when ``definition`` is another JSON text of it
        (a replay's decode process hands over both: the fields in the order the record had them).

        A restart makes 200k routes and serves from their names and vectors; a decision reads the
        threshold of its winner alone. Parsing every definition up front was a fifth of a restart.
        The store checks every definition it hands out this way before they serve (see
        :meth:`worker.routing.store.RouteStore.load`); a read that fails all the same (the file
        changed under it) names the route (:class:`StoreError`).
        """
        made = object.__new__(cls)
        made.__dict__.update(name=name, _definition=definition)
        if canonical is not None:
            made.__dict__["_canonical"] = canonical  # what the cached property would have made
        return made

    def _read_definition(self) -> None:
        """Fill in the fields of a :meth:`stored_lazily` route from its definition."""
        held = self.__dict__
        definition = held.get("_definition")
        if definition is None:
            return  # read meanwhile by another thread (the fields go in before the text goes)
        try:
            try:
                fields = orjson.loads(definition)
            except orjson.JSONDecodeError:
                # what canonical_text left to json.dumps (NaN, nesting deeper than orjson reads)
                fields = json.loads(definition)
            if fields["name"] != held["name"]:
                raise ValueError(f"it names {fields['name']!r}")
            threshold = fields["threshold"]
            parsed = {
                "utterances": tuple(fields["utterances"]),
                "negative_utterances": tuple(fields["negative_utterances"]),
                "threshold": None if threshold is None else float(threshold),
                "metadata": fields["metadata"],
            }
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise StoreError(f"route {held['name']!r}: stored definition cannot be read: {error}") from error
        held.update(parsed)
        held.pop("_definition", None)


class _FromDefinition:
    """A :class:`Route` field of a route made by :meth:`Route.stored_lazily`: read from its
    definition on first access, then held in the instance (whose own attribute wins over this
    non-data descriptor, so routes made any other way never come here)."""

    def __init__(self, name: str, default: object) -> None:
        self.name = name
        self.default = default

    def __get__(self, route: Route | None, owner: type | None = None) -> object:
        if route is None:
            if self.default is MISSING:
                raise AttributeError(self.name)
            return self.default  # what the dataclass left on the class: the field's default
        route._read_definition()
        try:
            return route.__dict__[self.name]
        except KeyError:  # a route made bare some other way: as a missing attribute always was
            raise AttributeError(self.name) from None


for _field in fields(Route):
    if _field.name != "name":
        setattr(Route, _field.name, _FromDefinition(_field.name, Route.__dict__.get(_field.name, MISSING)))


def canonical_text(value: object) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, the same
    text, made by orjson when every value in it is one whose text the two agree on.

    orjson took a tenth of the time (10 us a route in a 200k-route replay). The two write strings,
    ints, booleans, null, lists and objects with string keys alike (sorted by code point, the same
    escapes); they differ on floats in exponent form (``1e-05`` and ``1e-5``), NaN, ints beyond 64
    bits, lone surrogates and types JSON has not: anything but plain JSON values, and any float
    whose two texts differ, goes to ``json.dumps``, so the text (and every digest over it) stays
    what it was.
    """
    if _same_text(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:
            pass  # a lone surrogate, or nested deeper than orjson goes
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same_text(value: object) -> bool:
    """Whether orjson writes ``value`` as ``json.dumps`` does (see :func:`canonical_text`)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -(2**63) <= value < 2**64  # type: ignore[operator]
    if kind is float:
        return orjson.dumps(value) == repr(value).encode()
    if kind is list or kind is tuple:
        return all(map(_same_text, value))  # type: ignore[call-overload]
    if kind is dict:
        return all(type(key) is str and _same_text(item) for key, item in value.items())  # type: ignore[attr-defined]
    return False


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _strings(value: object) -> Sequence[object]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    raise InvalidRoute(f"expected a list of utterances, got {type(value).__name__}")


@dataclass(frozen=True, eq=False)
class RouteVectors:
    """A route with the embeddings of its utterances and negatives, made by one model (fingerprint).

    Row ``i`` of ``utterance_vectors`` embeds ``route.utterances[i]``; vectors are expected to be
    L2-normalised (see :func:`l2_normalise`). Arrays are frozen (read-only) on construction.
    ``digest`` may be passed when it is already known (the store keeps it); otherwise it is computed.
    """

    route: Route
    utterance_vectors: Vectors
    negative_vectors: Vectors
    fingerprint: str
    digest: str = ""

    def __post_init__(self) -> None:
        utterances = frozen_vectors(self.utterance_vectors)
        dim = utterances.shape[1]
        negatives = frozen_vectors(self.negative_vectors, dim)
        if utterances.shape[0] != len(self.route.utterances):
            raise InvalidRoute(
                f"route {self.route.name!r}: {len(self.route.utterances)} utterances "
                f"but {utterances.shape[0]} vectors"
            )
        if negatives.shape[0] != len(self.route.negative_utterances):
            raise InvalidRoute(
                f"route {self.route.name!r}: {len(self.route.negative_utterances)} negative utterances "
                f"but {negatives.shape[0]} vectors"
            )
        object.__setattr__(self, "utterance_vectors", utterances)
        object.__setattr__(self, "negative_vectors", negatives)
        if not self.digest:
            object.__setattr__(
                self, "digest", route_digest(self.route, utterances, negatives, self.fingerprint)
            )

    @classmethod
    def trusted(
        cls, route: Route, utterances: Vectors, negatives: Vectors, fingerprint: str, digest: str
    ) -> RouteVectors:
        """A route read back from where this process wrote it (the store): no checks, no copies.

        The caller vouches for what ``__post_init__`` would check: read-only float32 C-contiguous
        2-D arrays of one dimension, one row per utterance, and ``digest`` of exactly these.
        A restart makes 200k of them, and the checks were a third of its time.
        """
        made = object.__new__(cls)
        made.__dict__.update(
            route=route,
            utterance_vectors=utterances,
            negative_vectors=negatives,
            fingerprint=fingerprint,
            digest=digest,
        )
        return made

    @property
    def name(self) -> str:
        """The route's name (its key in the mutation log)."""
        return self.route.name

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return int(self.utterance_vectors.shape[1])

    @cached_property
    def training_digest(self) -> str:
        """What a calibration of this route depends on: name, utterances, negatives and model.

        Unlike :attr:`digest` it holds no vector bytes, so replicas that embedded the route
        themselves (last bits may differ between CPUs) agree on it, and a threshold or metadata
        edit does not make a calibration forget the route.
        """
        return training_digest(self.route, self.fingerprint)


def training_digest(route: Route, fingerprint: str) -> str:
    """sha256 over a route's name, utterances, negative utterances and model fingerprint."""
    parts = {
        "name": route.name,
        "utterances": list(route.utterances),
        "negative_utterances": list(route.negative_utterances),
        "model": fingerprint,
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def route_digest(route: Route, utterances: Vectors, negatives: Vectors, fingerprint: str) -> str:
    """sha256 over a route's canonical definition, model fingerprint and vector bytes."""
    sha = hashlib.sha256()
    for part in (route.canonical_json().encode(), fingerprint.encode(), str(utterances.shape).encode()):
        sha.update(len(part).to_bytes(8, "little"))
        _hash_in(sha, memoryview(part))
    # the arrays' own buffers, not tobytes() copies (7.7 KB per route, 200k times in a replay)
    for vectors in (utterances, negatives):
        if vectors.size:  # a view with a zero in its shape cannot be cast to bytes (nothing to hash)
            contiguous: Any = np.ascontiguousarray(vectors, dtype="<f4")  # numpy's stubs: no buffer protocol
            _hash_in(sha, memoryview(contiguous).cast("B"))
    return sha.hexdigest()


#: hashlib lets go of the GIL for an update of 2,048 bytes or more (and for every later update of
#: that hash): pieces below it keep the GIL, the digest is the same
_HASH_PIECE = 2_040


def _hash_in(sha: Any, data: memoryview) -> None:
    """``sha.update(data)``, in pieces that keep the GIL.

    A replay digests 200k routes in a thread beside the event loop and the store writer: each
    release handed the GIL to one of them, and taking it back cost several times the hashing.
    """
    for start in range(0, len(data), _HASH_PIECE):
        sha.update(data[start : start + _HASH_PIECE])


@dataclass(frozen=True)
class Candidate:
    """One scored route among the top-n answers to a query."""

    route: str
    score: float


@dataclass(frozen=True)
class Decision:
    """The router's answer to one query: the winning route (None for no match) and its candidates."""

    route: str | None
    score: float
    candidates: tuple[Candidate, ...]
    routes_version: TableVersion


class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors, the same on every replica for the same model."""

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        ...

    @property
    def fingerprint(self) -> str:
        """Identity of the model that produced the vectors (name, variant, weights hash)."""
        ...

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` into an ``(len(texts), dim)`` array, blocking the caller."""
        ...
