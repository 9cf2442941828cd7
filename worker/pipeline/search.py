"""Search step: the router decides on one dedicated thread, never on the event loop; a query it
fails on is isolated so the rest of its batch goes on.

One thread, and one OpenMP thread inside it: Faiss would otherwise spread every search over all
cores, fighting the encoder sessions (which own a core each) and paying OpenMP's start-up cost on
every small batch. Concurrency comes from the pipeline instead: one batch is searched while the
next one is embedded.

A router exception on one query (a poison query) must not fail its batch: the same batch would
come back after the restart and stop every replica in turn. A batch that fails is split in halves
and each decided again, down to the queries that fail alone; those are reported as failed (the
pipeline dead-letters them). When every query of a batch fails, a probe query tells a poison batch
from a broken router: a broken router raises, and the replica stops loudly instead of
dead-lettering the whole stream.

The fault suite's poison query is :mod:`worker.pipeline.failpoints`' route failpoint: off unless
its environment variable is set, it makes the router step raise here, on the search thread, for the
queries whose texts it names (the texts come with the vectors; the probe has none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from worker.pipeline.errors import PipelineError
from worker.pipeline.failpoints import RouteFailpoint
from worker.routing import Decision, RouteHead, Router, TableSnapshot
from worker.routing.explain import Explanation, explain
from worker.routing.native import use_faiss_threads
from worker.routing.types import Vectors

logger = logging.getLogger(__name__)


def _one_openmp_thread() -> None:
    # OpenMP's thread count is per calling thread: it must be set on the search thread itself.
    use_faiss_threads(1)


class RouterBroken(PipelineError):
    """The router fails on any query, a probe included: the replica cannot route."""


@dataclass(frozen=True, slots=True)
class Searched:
    """Decisions by row; rows the router failed on alone are in ``failed`` with the reason."""

    decisions: dict[int, Decision]
    failed: dict[int, str]


class SearchThread:
    """Runs ``Router.decide`` on its own thread; :meth:`close` when done.

    ``failpoint``: the fault suite's poison query (:mod:`worker.pipeline.failpoints`), None in
    production.
    """

    def __init__(self, failpoint: RouteFailpoint | None = None) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="route-search", initializer=_one_openmp_thread
        )
        self._failpoint = failpoint

    async def decide(
        self, router: Router, vectors: Vectors, top_n: Sequence[int], texts: Sequence[str] = ()
    ) -> list[Decision]:
        """The router's decisions for ``vectors`` (one row per query; ``texts``, if given, theirs)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decide, router, vectors, list(top_n), texts)

    def _decide(
        self, router: Router, vectors: Vectors, top_n: list[int], texts: Sequence[str]
    ) -> list[Decision]:
        if self._failpoint is not None:
            self._failpoint.check(texts)
        return router.decide(vectors, top_n)

    async def decide_isolating(
        self, router: Router, vectors: Vectors, top_n: Sequence[int], texts: Sequence[str] = ()
    ) -> Searched:
        """Decide every row; rows that fail alone are reported, not raised (see the module doc).

        ``texts`` (one per row, or none) go with their rows to the route failpoint.
        """
        rows = list(range(len(top_n)))
        decisions: dict[int, Decision] = {}
        failed: dict[int, str] = {}
        first: list[BaseException] = []
        await self._bisect(router, vectors, list(top_n), list(texts), rows, decisions, failed, first)
        if failed:
            logger.warning("routing failed on %d of %d queries of a batch", len(failed), len(rows))
        if rows and len(failed) == len(rows):
            await self._probe(router, vectors.shape[1], first[0])
        return Searched(decisions, failed)

    async def _bisect(
        self,
        router: Router,
        vectors: Vectors,
        top_n: list[int],
        texts: list[str],
        rows: list[int],
        decisions: dict[int, Decision],
        failed: dict[int, str],
        first: list[BaseException],
    ) -> None:
        if not rows:
            return
        try:
            texts_of = [texts[r] for r in rows] if texts else []
            decided = await self.decide(router, vectors[rows], [top_n[r] for r in rows], texts_of)
        # a router bug on one input is any exception: it must cost that query only, never the
        # stream (a router that fails on everything is caught by the probe)
        except Exception as error:  # noqa: BLE001
            if len(rows) == 1:
                failed[rows[0]] = f"routing failed: {type(error).__name__}: {error}"
                first.append(error)
                return
            half = len(rows) // 2
            await self._bisect(router, vectors, top_n, texts, rows[:half], decisions, failed, first)
            await self._bisect(router, vectors, top_n, texts, rows[half:], decisions, failed, first)
            return
        decisions.update(zip(rows, decided, strict=True))

    async def _probe(self, router: Router, dim: int, seen: BaseException) -> None:
        probe = np.zeros((1, dim), dtype=np.float32)
        probe[0, 0] = 1.0
        try:
            await self.decide(router, probe, [1])
        except Exception as error:  # any failure here means the router is broken
            raise RouterBroken(f"the router fails on any query: {error} (batch: {seen})") from error

    async def explain(
        self,
        router: Router,
        snapshot: TableSnapshot,
        head: RouteHead | None,
        vectors: Vectors,
        decisions: Sequence[Decision],
    ) -> list[Explanation]:
        """Why each of ``decisions`` was made, derived from the snapshot and head that made them."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: explain(router, snapshot, head, vectors, decisions)
        )

    def close(self) -> None:
        """Stop the thread after the running search (if any)."""
        self._executor.shutdown(wait=True)
