"""Search step: the router decides on one dedicated thread, never on the event loop.

One thread, and one OpenMP thread inside it: Faiss would otherwise spread every search over all
cores, fighting the encoder sessions (which own a core each) and paying OpenMP's start-up cost on
every small batch. Concurrency comes from the pipeline instead: one batch is searched while the
next one is embedded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from worker.routing import Decision, RouteHead, Router, TableSnapshot
from worker.routing.explain import Explanation, explain
from worker.routing.native import use_faiss_threads
from worker.routing.types import Vectors


def _one_openmp_thread() -> None:
    # OpenMP's thread count is per calling thread: it must be set on the search thread itself.
    use_faiss_threads(1)


class SearchThread:
    """Runs ``Router.decide`` on its own thread; :meth:`close` when done."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="route-search", initializer=_one_openmp_thread
        )

    async def decide(self, router: Router, vectors: Vectors, top_n: Sequence[int]) -> list[Decision]:
        """The router's decisions for ``vectors`` (one row per query)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, router.decide, vectors, list(top_n))

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
