"""`/livez`, `/readyz` and `/metrics` of one replica, served by aiohttp on the worker's event loop.

Serving on the worker's own loop is the point of a liveness probe: a loop that is blocked cannot
answer, so the probe times out and the orchestrator restarts the replica. HTTP itself (parsing,
limits on request lines and headers, keep-alive, HEAD, 404 and 405 answers) is aiohttp's.
``/metrics`` is a ``prometheus_client`` registry, rendered in the Prometheus text format or in
OpenMetrics when the scraper asks for it (``Accept: application/openmetrics-text``).

A check that raises answers 503 and a renderer that raises answers 500, each with a log line:
nothing a client sends and no failing callback stops the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

#: ``() -> (ok, reason)``: the answer of one probe
Check = Callable[[], tuple[bool, str]]
#: called once per answered request with its path and status code
RequestHook = Callable[[str, int], None]

PATHS = ("/livez", "/readyz", "/metrics")
_SHUTDOWN_S = 2.0


class HealthServer:
    """Serves the probes and the metrics of one replica; ``port=0`` binds a free port (:attr:`port`).

    ``liveness`` and ``readiness`` return ``(ok, reason)``: 200 with the reason when ok, else 503.
    ``registry`` is what ``/metrics`` renders (an empty one by default). ``on_request`` counts the
    answers (the worker records them as ``routeworker_health_requests_total``).
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        liveness: Check,
        readiness: Check,
        registry: CollectorRegistry | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self._requested_port = port
        self._host = host
        self._liveness = liveness
        self._readiness = readiness
        self._registry = registry if registry is not None else CollectorRegistry()
        self._on_request = on_request
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0); only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("HealthServer.port is known only after start()")
        return self._port

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/livez", self._probe(self._liveness, "liveness"))
        app.router.add_get("/readyz", self._probe(self._readiness, "readiness"))
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._runner is not None:
            raise RuntimeError("HealthServer already started")
        # a probe every few seconds must not write an access-log line every few seconds
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=_SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info("health server listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Stop accepting, close open connections and wait for the handlers; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        logger.info("health server on port %d stopped", self._port)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as answer:  # aiohttp's own 404 and 405
            self._counted(request.path, answer.status)
            raise
        self._counted(request.path, response.status)
        return response

    def _counted(self, path: str, status: int) -> None:
        if self._on_request is None:
            return
        # unknown paths share one label value: a scanner must not create a series per path
        self._on_request(path if path in PATHS else "other", status)

    def _probe(self, check: Check, what: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(request: web.Request) -> web.Response:
            try:
                ok, reason = check()
            except Exception:  # an unknown state is not healthy, and must be visible
                logger.exception("%s check raised", what)
                return web.Response(status=503, text=f"{what} check raised\n")
            return web.Response(status=200 if ok else 503, text=reason + "\n", headers=_NO_STORE)

        return answer

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            # collection runs the instruments' callbacks: off the loop, which the probes need
            body = await asyncio.to_thread(encoder, self._registry)
        except Exception:  # the scrape fails loudly; the worker keeps going
            logger.exception("metrics collection raised")
            return web.Response(status=500, text="metrics collection raised\n")
        return web.Response(body=body, headers={"Content-Type": content_type, **_NO_STORE})


_NO_STORE = {"Cache-Control": "no-store"}
