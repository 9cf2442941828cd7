"""The health server over real sockets: probe transitions, bad requests, bounds, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from worker.health import HealthServer, probe
from worker.health.probe import main as probe_main


@dataclass
class WorkerState:
    """What the pipeline would report; tests flip it and watch the endpoints follow."""

    alive: bool = True
    ready: bool = False
    reason: str = "route table catching up: 3 of 10 mutations applied"
    raises: set[str] = field(default_factory=set)

    def liveness(self) -> bool:
        if "live" in self.raises:
            raise RuntimeError("heartbeat source broke")
        return self.alive

    def readiness(self) -> tuple[bool, str]:
        if "ready" in self.raises:
            raise RuntimeError("readiness source broke")
        return self.ready, self.reason


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def send(port: int, data: bytes, *, close_write: bool = True) -> Answer:
    """Send raw bytes, read the whole answer (the server closes after one response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(status, headers, body)


async def get(port: int, path: str, method: str = "GET") -> Answer:
    return await send(port, f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())


@pytest.fixture
def state() -> WorkerState:
    return WorkerState()


@pytest.fixture
async def server(state: WorkerState) -> AsyncIterator[HealthServer]:
    health = HealthServer(
        0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness, read_timeout_s=0.3
    )
    await health.start()
    try:
        yield health
    finally:
        await health.stop()


async def test_port_zero_binds_a_free_port(server: HealthServer) -> None:
    assert server.port > 0
    assert (await get(server.port, "/livez")).status == 200


def test_port_unknown_before_start(state: WorkerState) -> None:
    health = HealthServer(0, liveness=state.liveness, readiness=state.readiness)
    with pytest.raises(RuntimeError, match="after start"):
        _ = health.port


async def test_liveness_follows_the_heartbeat(server: HealthServer, state: WorkerState) -> None:
    ok = await get(server.port, "/livez")
    assert (ok.status, ok.body) == (200, b"ok\n")
    state.alive = False
    stale = await get(server.port, "/livez")
    assert stale.status == 503
    assert b"heartbeat" in stale.body
    state.alive = True
    assert (await get(server.port, "/livez")).status == 200


async def test_readiness_reports_the_reason(server: HealthServer, state: WorkerState) -> None:
    waiting = await get(server.port, "/readyz")
    assert waiting.status == 503
    assert waiting.body.decode().strip() == state.reason
    state.ready, state.reason = True, "caught up; 6 partitions assigned"
    ready = await get(server.port, "/readyz")
    assert (ready.status, ready.body) == (200, b"caught up; 6 partitions assigned\n")
    state.ready, state.reason = False, "partitions revoked"
    assert (await get(server.port, "/readyz")).status == 503


async def test_callbacks_that_raise_are_unhealthy_not_fatal(server: HealthServer, state: WorkerState) -> None:
    state.ready = True
    state.raises = {"live", "ready"}
    assert (await get(server.port, "/livez")).status == 503
    assert (await get(server.port, "/readyz")).status == 503
    state.raises = set()
    assert (await get(server.port, "/livez")).status == 200
    assert (await get(server.port, "/readyz")).status == 200


async def test_default_metrics_are_prometheus_text(server: HealthServer) -> None:
    await get(server.port, "/nope")
    answer = await get(server.port, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    assert "# TYPE routeworker_process_start_time_seconds gauge" in text
    assert "# TYPE routeworker_health_requests_total counter" in text
    assert 'routeworker_health_requests_total{code="404"} 1' in text


async def test_custom_metrics_callback_and_its_failure(state: WorkerState) -> None:
    calls: list[int] = []

    def render() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("renderer broke")
        return "# TYPE routeworker_queries_total counter\nrouteworker_queries_total 7\n"

    async with HealthServer(
        0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness, metrics=render
    ) as health:
        first = await get(health.port, "/metrics")
        assert first.body == b"# TYPE routeworker_queries_total counter\nrouteworker_queries_total 7\n"
        assert (await get(health.port, "/metrics")).status == 500
        assert (await get(health.port, "/livez")).status == 200


async def test_unknown_path_is_404_and_query_strings_are_ignored(server: HealthServer) -> None:
    assert (await get(server.port, "/healthz")).status == 404
    assert (await get(server.port, "/")).status == 404
    assert (await get(server.port, "/livez?verbose=1")).status == 200


async def test_head_has_headers_but_no_body(server: HealthServer) -> None:
    answer = await get(server.port, "/livez", method="HEAD")
    assert answer.status == 200
    assert answer.headers["content-length"] == "3"
    assert answer.body == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /livez\r\n\r\n", 400),
        (b"GET  /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n", 400),
        (b"G(T /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /livez SPDY/3\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\n\r\n", 505),
        (b"POST /livez HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /livez HTTP/1.1\r\n", 400),  # head cut short by EOF
    ],
)
async def test_malformed_requests_get_an_error_and_the_server_lives_on(
    server: HealthServer, raw: bytes, status: int
) -> None:
    answer = await send(server.port, raw)
    assert answer.status == status
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD"
    assert (await get(server.port, "/livez")).status == 200


async def test_oversized_request_head_is_rejected(server: HealthServer) -> None:
    huge = b"GET /livez HTTP/1.1\r\nX-Padding: " + b"a" * 200 * 1024 + b"\r\n\r\n"
    answer = await send(server.port, huge, close_write=False)
    assert answer.status == 431
    assert (await get(server.port, "/livez")).status == 200


async def test_silent_client_times_out_with_408(server: HealthServer) -> None:
    answer = await send(server.port, b"GET /livez HTTP/1.1\r\n", close_write=False)
    assert answer.status == 408
    assert (await get(server.port, "/livez")).status == 200


async def test_connect_and_leave_is_not_an_error(server: HealthServer) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    assert (await get(server.port, "/livez")).status == 200


async def _wait_for_connections(server: HealthServer, n: int) -> None:
    # the accept happens in the server's own task: poll its count (bounded: 10 s)
    for _ in range(1000):
        if server.open_connections == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server has {server.open_connections} open connections, expected {n}")


async def test_connections_are_bounded(state: WorkerState) -> None:
    async with HealthServer(
        0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness, max_connections=1
    ) as health:
        _, idle = await asyncio.open_connection("127.0.0.1", health.port)
        try:
            await _wait_for_connections(health, 1)
            with pytest.raises(ConnectionError):  # refused like a full accept queue
                await get(health.port, "/livez")
        finally:
            idle.close()
            await idle.wait_closed()
        await _wait_for_connections(health, 0)
        assert (await get(health.port, "/livez")).status == 200
        assert health.builtin_metrics.value("routeworker_health_rejected_total") == 1


async def test_stop_closes_idle_connections(state: WorkerState) -> None:
    health = HealthServer(0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness)
    await health.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
    await _wait_for_connections(health, 1)
    await health.stop()
    assert health.open_connections == 0
    assert await reader.read() == b""  # closed by the server, without an answer
    writer.close()
    await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", health.port)
    await health.stop()  # idempotent


async def test_probe_client_and_command(server: HealthServer, state: WorkerState) -> None:
    assert await asyncio.to_thread(probe, server.port, "/readyz") == (503, state.reason + "\n")
    port = str(server.port)
    assert await asyncio.to_thread(probe_main, ["/livez", "--port", port]) == 0
    assert await asyncio.to_thread(probe_main, ["/readyz", "--port", port]) == 1
    state.ready = True
    assert await asyncio.to_thread(probe_main, ["/readyz", "--port", port]) == 0


async def test_probe_command_reads_the_port_from_the_environment(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTEWORKER_HEALTH_PORT", str(server.port))
    assert await asyncio.to_thread(probe_main, ["/livez"]) == 0
    monkeypatch.delenv("ROUTEWORKER_HEALTH_PORT")
    assert await asyncio.to_thread(probe_main, ["/livez"]) == 1
    assert "ROUTEWORKER_HEALTH_PORT is not set" in capsys.readouterr().err


async def test_probe_command_fails_when_nothing_listens(state: WorkerState) -> None:
    async with HealthServer(0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness) as health:
        port = health.port
    assert await asyncio.to_thread(probe_main, ["/livez", "--port", str(port), "--timeout", "1"]) == 1


def test_the_probe_reads_the_variable_the_settings_define() -> None:
    from worker.config import ENV_PREFIX, Settings
    from worker.health.probe import PORT_ENV

    assert "health_port" in Settings.model_fields
    assert f"{ENV_PREFIX}HEALTH_PORT" == PORT_ENV
