"""Ask and wait over Kafka: produce a query, wait for its routed intent by id.

A service that wants request/reply semantics on top of the routers uses one :class:`RouteClient`
for its whole life: one producer, one shared reply reader (:class:`ReplyReader`) whose answers are
matched to waiting calls by query id, a timeout per call and a bound on calls in flight (beyond it,
callers wait for a slot: backpressure rather than an unbounded backlog).

Every client reads every intent on the topic (skipping other clients' cheaply), which suits
interactive use and moderate rates; a high-volume consumer of intents reads the topic itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.client.errors import RouteClientError, RouteTimeout
from worker.client.replies import ReplyReader
from worker.config import Settings, load_settings
from worker.contracts import Query, RoutedIntent
from worker.kafka_client import client_options

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_IN_FLIGHT = 256


class RouteClient:
    """Routes texts through the worker replicas and returns their routed intents.

    ``settings`` name the brokers and topics (default: :func:`worker.config.load_settings`, so the
    ``ROUTEWORKER_*`` environment). Use it as an async context manager::

        async with RouteClient() as client:
            intent = await client.route("my card was charged twice")
            print(intent.route, intent.score)

    :meth:`route` raises :class:`RouteTimeout` when no answer comes in time and
    :class:`QueryRejected` when the query was dead-lettered.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        name: str = "routeclient",
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.settings = settings if settings is not None else load_settings()
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        #: query ids are ``<prefix>-<n>``: unique to this client, and what its reply reader looks for
        self.prefix = f"{name}-{uuid.uuid4().hex[:12]}"
        self._numbers = itertools.count(1)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting = 0
        self._pending: dict[str, asyncio.Future[RoutedIntent]] = {}
        options = client_options(self.settings)
        self._producer = AIOKafkaProducer(enable_idempotence=False, linger_ms=1, **options)
        consumer = AIOKafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=50, **options)
        self._reader = ReplyReader(
            consumer,
            options,
            self.settings.topic_intents,
            self.settings.topic_dlq,
            self.prefix,
            self._deliver,
        )
        self._reading: asyncio.Task[None] | None = None
        self._broken: BaseException | None = None

    @property
    def in_flight(self) -> int:
        """Calls waiting for their answer now (at most ``max_in_flight``)."""
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot because ``max_in_flight`` are already out."""
        return self._waiting

    async def start(self) -> None:
        """Connect, and position the reply reader at the topics' ends."""
        try:
            await self._reader.start()
            await self._producer.start()
        except BaseException:
            await self._close_clients()
            raise
        self._reading = asyncio.create_task(self._read(), name="route-client-replies")

    async def close(self) -> None:
        """Stop reading and producing; calls still waiting raise :class:`RouteClientError`."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
            self._reading = None
        self._fail_pending(RouteClientError("the route client was closed"))
        await self._close_clients()

    async def __aenter__(self) -> RouteClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def route(
        self,
        text: str,
        *,
        top_n: int | None = None,
        metadata: dict[str, Any] | None = None,
        key: bytes | None = None,
        explain: bool = False,
        timeout_s: float | None = None,
    ) -> RoutedIntent:
        """Produce one query and wait for its routed intent (the timeout covers the produce too)."""
        if self._reading is None:
            raise RouteClientError("RouteClient.start() has not been called")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        query_id = f"{self.prefix}-{next(self._numbers)}"
        query = Query(id=query_id, text=text, top_n=top_n, metadata=metadata, explain=explain)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        answer: asyncio.Future[RoutedIntent] = asyncio.get_running_loop().create_future()
        self._pending[query_id] = answer
        try:
            self._raise_if_broken()
            async with asyncio.timeout(timeout):
                await self._producer.send_and_wait(self.settings.topic_queries, _wire(query), key=key)
                return await answer
        except TimeoutError:
            raise RouteTimeout(query_id, timeout) from None
        finally:
            self._pending.pop(query_id, None)
            self._slots.release()

    async def route_many(self, texts: Sequence[str], **options: Any) -> list[RoutedIntent | RouteClientError]:
        """Route ``texts`` concurrently (within ``max_in_flight``); an answer or an error for each."""

        async def one(text: str) -> RoutedIntent | RouteClientError:
            try:
                return await self.route(text, **options)
            except RouteClientError as error:
                return error

        return list(await asyncio.gather(*(one(text) for text in texts)))

    def _deliver(self, query_id: str, answer: RoutedIntent | Exception) -> None:
        waiting = self._pending.get(query_id)
        if waiting is None or waiting.done():
            return  # a duplicate (at-least-once), or a call that already gave up
        if isinstance(answer, Exception):
            waiting.set_exception(answer)
        else:
            waiting.set_result(answer)

    async def _read(self) -> None:
        try:
            await self._reader.run()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the reader's task boundary: every waiting call learns of it
            logger.exception("route client reply reader stopped")
            self._broken = error
            self._fail_pending(RouteClientError(f"reply reader stopped: {error}"))

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise RouteClientError(f"reply reader stopped: {self._broken}")

    def _fail_pending(self, error: RouteClientError) -> None:
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(error)

    async def _close_clients(self) -> None:
        await self._producer.stop()
        await self._reader.stop()


def _wire(query: Query) -> bytes:
    # `explain` is sent only when asked for, so the queries stay readable by replicas that predate it
    return orjson.dumps(query.model_dump(mode="json", exclude=None if query.explain else {"explain"}))
