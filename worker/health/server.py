"""`/livez`, `/readyz` and `/metrics` over a tiny asyncio HTTP server (stdlib only).

It runs on the worker's own event loop, which is the point of a liveness probe: a loop that is
blocked cannot answer, so the probe times out and the orchestrator restarts the replica. Every
connection is bounded — head size, read and write timeouts, number of open connections — so a slow
or hostile client costs a few kilobytes and never stalls the worker. Callback failures become 503
or 500 answers with a log line; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType

from worker.health.http import HttpError, Response, error_response, parse_request_head
from worker.health.metrics import CONTENT_TYPE, SimpleMetrics

logger = logging.getLogger(__name__)

Liveness = Callable[[], bool]
Readiness = Callable[[], tuple[bool, str]]
MetricsText = Callable[[], str]

MAX_REQUEST_BYTES = 8 * 1024
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
LINGER_S = 1.0
LINGER_BYTES = 256 * 1024


class HealthServer:
    """Serves the probes and metrics of one replica.

    ``liveness`` says the worker's heartbeat is fresh; ``readiness`` returns ``(ready, reason)``
    (route table caught up, partitions assigned); ``metrics`` returns Prometheus text. When
    ``metrics`` is omitted the server renders its own :attr:`builtin_metrics` (process start time
    and the requests it answered). ``port=0`` binds a free port; read it from :attr:`port`.
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        liveness: Liveness,
        readiness: Readiness,
        metrics: MetricsText | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._requested_port = port
        self._host = host
        self._liveness = liveness
        self._readiness = readiness
        self.builtin_metrics = SimpleMetrics()
        self.builtin_metrics.declare(
            "routeworker_process_start_time_seconds", "gauge", "Start time of the process (unix seconds)."
        )
        self.builtin_metrics.set("routeworker_process_start_time_seconds", time.time())
        self.builtin_metrics.declare(
            "routeworker_health_requests_total", "counter", "Requests answered by the health server."
        )
        self.builtin_metrics.declare(
            "routeworker_health_rejected_total", "counter", "Connections refused: too many open at once."
        )
        self._metrics = metrics if metrics is not None else self.builtin_metrics.render
        self._max_request_bytes = max_request_bytes
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0); only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("HealthServer.port is known only after start()")
        return self._port

    @property
    def open_connections(self) -> int:
        """Connections being served right now (bounded by ``max_connections``)."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("HealthServer already started")
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port, limit=self._max_request_bytes
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("health server listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Stop accepting, drop open connections and wait until every handler has finished."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # closing the sockets wakes every handler (its read or write fails) so each task ends by
        # itself; cancelling them instead would make asyncio log the cancellation as an error
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=self._write_timeout_s)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await server.wait_closed()
        logger.info("health server on port %d stopped", self._port)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs every handler in its own task
        if len(self._connections) >= self._max_connections:
            # refuse like a full accept queue: nothing read, nothing buffered, nothing to write
            self.builtin_metrics.inc("routeworker_health_rejected_total")
            writer.transport.abort()
            return
        self._connections[task] = writer
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing to answer
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._write_timeout_s):
                    await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        unread_input = True  # until a whole head was read, the client may still be sending
        try:
            async with asyncio.timeout(self._read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_request_head(head)
        except asyncio.LimitOverrunError:
            response = Response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return  # connected and closed without a byte: a TCP probe, not an HTTP request
            response = Response(HTTPStatus.BAD_REQUEST, "incomplete request head\n")
        except TimeoutError:
            response = Response(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time\n")
        except HttpError as exc:
            response = error_response(exc)
        else:
            head_only = request.method == "HEAD"
            unread_input = False
            response = self._dispatch(request.path)
        if writer.is_closing():
            return  # the server is stopping: nobody to answer
        self.builtin_metrics.inc("routeworker_health_requests_total", code=str(response.status.value))
        await self._send(writer, response, head_only=head_only)
        if unread_input:
            await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends (bounded) before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        error answer before the client reads it; a short, bounded lingering close lets it arrive.
        """
        if writer.can_write_eof():
            writer.write_eof()
        budget = LINGER_BYTES
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER_S):
                while budget > 0 and (chunk := await reader.read(min(budget, 4096))):
                    budget -= len(chunk)

    def _dispatch(self, path: str) -> Response:
        if path == "/livez":
            return self._live()
        if path == "/readyz":
            return self._ready()
        if path == "/metrics":
            return self._render_metrics()
        return Response(HTTPStatus.NOT_FOUND, "not found: try /livez, /readyz or /metrics\n")

    def _live(self) -> Response:
        try:
            alive = self._liveness()
        except Exception:  # a failing callback is an unhealthy worker, and must be visible
            logger.exception("liveness callback raised")
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, "liveness check raised\n")
        if alive:
            return Response(HTTPStatus.OK, "ok\n")
        return Response(HTTPStatus.SERVICE_UNAVAILABLE, "worker heartbeat is stale\n")

    def _ready(self) -> Response:
        try:
            ready, reason = self._readiness()
        except Exception:  # an unknown state is not ready
            logger.exception("readiness callback raised")
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, "readiness check raised\n")
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return Response(status, (reason or ("ready" if ready else "not ready")) + "\n")

    def _render_metrics(self) -> Response:
        try:
            text = self._metrics()
        except Exception:  # the scrape fails loudly; the worker keeps going
            logger.exception("metrics renderer raised")
            return Response(HTTPStatus.INTERNAL_SERVER_ERROR, "metrics renderer raised\n")
        return Response(HTTPStatus.OK, text, content_type=CONTENT_TYPE)

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, *, head_only: bool = False
    ) -> None:
        writer.write(response.encode(head_only=head_only))
        async with asyncio.timeout(self._write_timeout_s):
            await writer.drain()
