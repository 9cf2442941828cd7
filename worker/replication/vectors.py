"""From route definitions to route vectors: shipped embeddings when they fit, else the encoder pool.

A route is always embedded on its own (its utterances, then its negatives, in one call), whether by
a publisher shipping vectors or by a replica: the vectors of a route then depend only on the route
and the model, never on which other routes shared a batch, so every replica holds identical bytes.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.contracts import RouteDefinition, ShippedEmbeddings
from worker.embedding import EncoderPool
from worker.errors import ContractError, ErrorCode
from worker.routing import EncoderError, Route, RouteVectors
from worker.routing.types import Vectors, route_digest

#: routes embedded concurrently; the pool's own ``max_pending`` bounds the threads' queue
_CONCURRENT_ROUTES = 16
#: shipped vectors must be unit length (model output is L2-normalised) within this tolerance
_NORM_TOLERANCE = 1e-3


def route_of(definition: RouteDefinition) -> Route:
    """The routing engine's view of a published definition."""
    # Route.stored: a definition's fields have the types a Route's own checks would ensure (its
    # model validated them, or constructed_definition checked them), and the checks were a twentieth
    # of a shipped route's decoding in a 200k-route replay
    return Route.stored(
        {
            "name": definition.name,
            "utterances": definition.utterances,
            "negative_utterances": definition.negative_utterances,
            "threshold": definition.threshold,
            "metadata": dict(definition.metadata),
        }
    )


def shipped_vectors(definition: RouteDefinition, fingerprint: str, dim: int) -> RouteVectors | None:
    """The route with its shipped vectors if they were made by this model (``fingerprint``), else None.

    Raises :class:`ContractError` when vectors of this model are unusable (not finite, not unit
    length): such a record is malformed, not a reason to trust or re-embed it.
    """
    vectors = shipped_unchecked(definition, fingerprint, dim)
    if vectors is not None:
        (error,) = unit_faults([vectors])
        if error is not None:
            raise error
    return vectors


def shipped_unchecked(definition: RouteDefinition, fingerprint: str, dim: int) -> RouteVectors | None:
    """:func:`shipped_vectors` but for the unit-length check, which the caller makes for many routes
    at once with :func:`unit_faults` (a replay folds thousands of records a batch).

    Raises :class:`ContractError` when the vectors are of this model but of the wrong shape.
    """
    shipped = definition.embeddings
    if shipped is None or shipped.fingerprint != fingerprint:
        return None
    if shipped.dim != dim:
        raise ContractError(
            ErrorCode.EMBEDDING_SHAPE,
            f"route {definition.name!r}: vectors of dimension {shipped.dim} from model {fingerprint!r} "
            f"whose dimension is {dim}",
        )
    # The definition's validator has decoded and checked them already: these are its arrays.
    try:
        utterances = shipped.matrix("utterances", len(definition.utterances))
        negatives = shipped.matrix("negative_utterances", len(definition.negative_utterances))
    except (ValueError, binascii.Error) as error:  # a definition made without validation
        raise ContractError(ErrorCode.EMBEDDING_SHAPE, f"route {definition.name!r}: {error}") from error
    route = route_of(definition)
    # the matrices are ShippedEmbeddings.matrix's: read-only float32 C-contiguous, one row per
    # utterance (checked above), which is all RouteVectors' own checks and copies would ensure
    digest = route_digest(route, utterances, negatives, fingerprint)
    return RouteVectors.trusted(route, utterances, negatives, fingerprint, digest)


_LOW, _HIGH = 1.0 - 2 * _NORM_TOLERANCE, 1.0 + 2 * _NORM_TOLERANCE


def unit_faults(routes: Sequence[RouteVectors]) -> list[ContractError | None]:
    """For each route, the :class:`ContractError` its shipped vectors deserve if they are not finite
    unit vectors (utterances checked before negatives), else None.

    Squared norms of all the routes' rows in one numpy call, in float64 (NaN and inf fail the
    comparison): one call per route cost 5 us, and gave up the GIL each time, which the event loop
    or the store writer then held (a replay's decoding runs beside both).
    """
    faults: list[ContractError | None] = [None] * len(routes)
    for label in ("utterances", "negative_utterances"):
        matrices = [rv.utterance_vectors if label == "utterances" else rv.negative_vectors for rv in routes]
        counts = np.fromiter((m.shape[0] for m in matrices), dtype=np.int64, count=len(matrices))
        if not counts.any():
            continue
        squares = _squared_norms([m for m in matrices if m.shape[0]])
        # good rows per route: a running count of rows within tolerance, differenced at route ends
        within = np.concatenate(([0], np.cumsum((squares >= _LOW) & (squares <= _HIGH), dtype=np.int64)))
        ends = np.cumsum(counts)
        good = within[ends] - within[ends - counts]
        for i in np.flatnonzero(good != counts).tolist():
            if faults[i] is None:
                faults[i] = ContractError(
                    ErrorCode.EMBEDDING_SHAPE,
                    f"route {routes[i].name!r}: embeddings.{label} are not finite unit vectors",
                )
    return faults


#: routes whose rows are converted to float64 at a time by :func:`_squared_norms`
_NORM_ROUTES = 256


def _squared_norms(matrices: Sequence[Vectors]) -> npt.NDArray[np.float64]:
    """The squared norm of every row of ``matrices``, in order, in float64.

    A few hundred routes at a time: a batch of a replay is 10k routes, whose rows in float64 (34 MB)
    were a fresh mapping of the C heap each time, paid for in page faults (3 s of a 1M-vector
    replay); a few MB are reused. Each row's sum is the same however the rows are split.
    """
    parts = [
        np.einsum("ij,ij->i", rows, rows)
        for rows in (
            np.concatenate(matrices[start : start + _NORM_ROUTES], dtype=np.float64)
            for start in range(0, len(matrices), _NORM_ROUTES)
        )
    ]
    return np.concatenate(parts)


async def embed_route(pool: EncoderPool, route: Route) -> RouteVectors:
    """Embed one route's utterances and negatives in the pool (one call: deterministic bytes)."""
    vectors = await pool.embed([*route.utterances, *route.negative_utterances])
    count = len(route.utterances)
    return RouteVectors(route, vectors[:count], vectors[count:], pool.fingerprint)


async def embed_routes(pool: EncoderPool, routes: Sequence[Route]) -> list[RouteVectors]:
    """Embed many routes, a few at a time, in order."""
    embedded: list[RouteVectors] = []
    for start in range(0, len(routes), _CONCURRENT_ROUTES):
        chunk = routes[start : start + _CONCURRENT_ROUTES]
        embedded.extend(await asyncio.gather(*(embed_route(pool, route) for route in chunk)))
    return embedded


#: embedded when a route fails to embed: if this fails too, the encoder is broken, not the route
ENCODER_PROBE = "routeworker encoder probe"


async def embed_isolated(
    pool: EncoderPool, routes: Sequence[Route]
) -> tuple[list[RouteVectors], list[tuple[Route, str]]]:
    """Embed many routes like :func:`embed_routes`, keeping a route that cannot be embedded apart.

    A route whose embedding fails is tried once more on its own; failing again while the encoder
    still embeds :data:`ENCODER_PROBE`, it is returned in the second list with the reason: the
    failure is the route's (a text the model cannot take, vectors of the wrong shape), so every
    replica with this model fails on it the same way. When the probe fails too, the encoder itself
    is broken and :class:`~worker.routing.EncoderError` is raised: skipping would make this
    replica alone drop routes.
    """
    embedded: list[RouteVectors] = []
    failed: list[tuple[Route, str]] = []
    for start in range(0, len(routes), _CONCURRENT_ROUTES):
        chunk = routes[start : start + _CONCURRENT_ROUTES]
        results = await asyncio.gather(*(embed_route(pool, route) for route in chunk), return_exceptions=True)
        for route, result in zip(chunk, results, strict=True):
            if isinstance(result, RouteVectors):
                embedded.append(result)
                continue
            if not isinstance(result, Exception):
                raise result  # cancelled, or the process is going down
            try:
                embedded.append(await embed_route(pool, route))
            except Exception as error:  # noqa: BLE001 - kept with its route; a broken encoder raises below
                await _check_encoder(pool, error)
                failed.append((route, f"{type(error).__name__}: {error}"))
    return embedded, failed


async def _check_encoder(pool: EncoderPool, cause: Exception) -> None:
    try:
        await pool.embed([ENCODER_PROBE])
    except Exception as error:  # noqa: BLE001 - any failure here means the encoder is unusable
        raise EncoderError(
            f"the encoder fails on a probe text too ({type(error).__name__}: {error}): it cannot embed "
            f"routes (first failure: {type(cause).__name__}: {cause})"
        ) from cause


async def with_embeddings(pool: EncoderPool, definitions: Sequence[RouteDefinition]) -> list[RouteDefinition]:
    """Copies of ``definitions`` carrying their vectors and the model fingerprint (``--with-embeddings``)."""
    embedded = await embed_routes(pool, [route_of(d) for d in definitions])
    return [attach_embeddings(d, rv) for d, rv in zip(definitions, embedded, strict=True)]


def attach_embeddings(definition: RouteDefinition, vectors: RouteVectors) -> RouteDefinition:
    """``definition`` with ``vectors`` as its shipped embeddings."""
    shipped = ShippedEmbeddings(
        fingerprint=vectors.fingerprint,
        dim=vectors.dim,
        utterances=ShippedEmbeddings.encode_matrix(vectors.utterance_vectors),
        negative_utterances=ShippedEmbeddings.encode_matrix(vectors.negative_vectors),
    )
    return definition.model_copy(update={"embeddings": shipped})
