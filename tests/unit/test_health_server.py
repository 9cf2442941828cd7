"""The health server over real sockets: probe answers, metrics exposition, failures, a blocked loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from worker.health import probe
from worker.health.probe import main as probe_main
from worker.health.server import HealthServer


@dataclass
class WorkerState:
    """What the replica would report; tests flip it and watch the endpoints follow."""

    alive: bool = True
    ready: bool = False
    reason: str = "catching up with the route-mutation log"
    raises: set[str] = field(default_factory=set)

    def liveness(self) -> tuple[bool, str]:
        if "live" in self.raises:
            raise RuntimeError("progress source broke")
        return self.alive, "alive" if self.alive else "stalled: 12 records waiting"

    def readiness(self) -> tuple[bool, str]:
        if "ready" in self.raises:
            raise RuntimeError("readiness source broke")
        return self.ready, self.reason


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def send(port: int, data: bytes) -> Answer:
    """Send raw bytes on a fresh connection and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("ascii").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length and not data.startswith(b"HEAD") else b""
    finally:
        writer.close()
        await writer.wait_closed()
    return Answer(int(lines[0].split(" ")[1]), headers, body)


async def get(port: int, path: str, method: str = "GET", accept: str | None = None) -> Answer:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return await send(
        port, f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n".encode()
    )


@pytest.fixture
def state() -> WorkerState:
    return WorkerState()


@pytest.fixture
def requests() -> list[tuple[str, int]]:
    return []


@pytest.fixture
async def server(state: WorkerState, requests: list[tuple[str, int]]) -> AsyncIterator[HealthServer]:
    registry = CollectorRegistry()
    Counter("routeworker_queries_routed", "Queries answered with a route.", registry=registry).inc(7)
    health = HealthServer(
        0,
        "127.0.0.1",
        liveness=state.liveness,
        readiness=state.readiness,
        registry=registry,
        on_request=lambda path, code: requests.append((path, code)),
    )
    async with health:
        yield health


def test_port_unknown_before_start(state: WorkerState) -> None:
    health = HealthServer(0, liveness=state.liveness, readiness=state.readiness)
    with pytest.raises(RuntimeError, match="after start"):
        _ = health.port


async def test_liveness_answers_with_its_reason(server: HealthServer, state: WorkerState) -> None:
    ok = await get(server.port, "/livez")
    assert (ok.status, ok.body) == (200, b"alive\n")
    state.alive = False
    stalled = await get(server.port, "/livez")
    assert (stalled.status, stalled.body) == (503, b"stalled: 12 records waiting\n")
    assert stalled.headers["cache-control"] == "no-store"


async def test_readiness_reports_the_reason(server: HealthServer, state: WorkerState) -> None:
    waiting = await get(server.port, "/readyz")
    assert (waiting.status, waiting.body.decode().strip()) == (503, state.reason)
    state.ready, state.reason = True, "ready: route table caught up, 6 partitions assigned"
    ready = await get(server.port, "/readyz")
    assert (ready.status, ready.body) == (200, b"ready: route table caught up, 6 partitions assigned\n")


async def test_checks_that_raise_are_unhealthy_not_fatal(server: HealthServer, state: WorkerState) -> None:
    state.ready = True
    state.raises = {"live", "ready"}
    assert (await get(server.port, "/livez")).status == 503
    assert (await get(server.port, "/readyz")).status == 503
    state.raises = set()
    assert (await get(server.port, "/livez")).status == 200
    assert (await get(server.port, "/readyz")).status == 200


async def test_metrics_are_prometheus_text_or_openmetrics_as_asked(server: HealthServer) -> None:
    text = await get(server.port, "/metrics")
    assert text.status == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text.body.decode())}
    assert families["routeworker_queries_routed"].samples[0].value == 7
    open_metrics = await get(server.port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.body.endswith(b"# EOF\n")


async def test_a_failing_collector_is_a_500_and_the_server_lives_on(state: WorkerState) -> None:
    class Broken:
        def collect(self) -> list[object]:
            raise ValueError("collector broke")

    registry = CollectorRegistry()
    registry.register(Broken())  # type: ignore[arg-type]
    async with HealthServer(
        0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness, registry=registry
    ) as health:
        assert (await get(health.port, "/metrics")).status == 500
        assert (await get(health.port, "/livez")).status == 200


async def test_requests_are_counted_by_path_and_status(
    server: HealthServer, requests: list[tuple[str, int]]
) -> None:
    await get(server.port, "/livez")
    await get(server.port, "/readyz")
    await get(server.port, "/wp-admin/setup.php")
    await get(server.port, "/livez", method="POST")
    assert requests == [("/livez", 200), ("/readyz", 503), ("other", 404), ("/livez", 405)]


async def test_unknown_paths_head_and_other_methods(server: HealthServer) -> None:
    assert (await get(server.port, "/healthz")).status == 404
    assert (await get(server.port, "/livez?verbose=1")).status == 200
    head = await get(server.port, "/livez", method="HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (200, "6", b"")
    assert (await get(server.port, "/readyz", method="POST")).status == 405
    assert (await send(server.port, b"GARBAGE\r\n\r\n")).status == 400
    assert (await get(server.port, "/livez")).status == 200


async def test_stop_closes_the_port_and_is_idempotent(state: WorkerState) -> None:
    health = HealthServer(0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness)
    await health.start()
    port = health.port
    await health.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await health.stop()


def test_a_blocked_event_loop_fails_the_probe(state: WorkerState) -> None:
    """The server answers on the worker's loop: while that loop is blocked, the probe times out."""
    loop = asyncio.new_event_loop()
    health = HealthServer(0, "127.0.0.1", liveness=state.liveness, readiness=state.readiness)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(health.start(), loop).result(10)
        port = str(health.port)
        assert probe_main(["/livez", "--port", port, "--timeout", "2"]) == 0
        unblock = threading.Event()
        loop.call_soon_threadsafe(unblock.wait)  # what a CPU-bound call on the loop would do
        try:
            assert probe_main(["/livez", "--port", port, "--timeout", "0.5"]) == 1
        finally:
            unblock.set()
        assert probe_main(["/livez", "--port", port, "--timeout", "2"]) == 0
    finally:
        asyncio.run_coroutine_threadsafe(health.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


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


def test_the_probe_stays_a_standard_library_import() -> None:
    """The container health check runs every few seconds: no aiohttp, no settings, no telemetry."""
    code = (
        "import sys, worker.health.probe; "
        "heavy = ('aiohttp', 'prometheus_client', 'pydantic', 'opentelemetry'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_probe_reads_the_variable_the_settings_define() -> None:
    from worker.config import ENV_PREFIX, Settings
    from worker.health.probe import PORT_ENV

    assert "health_port" in Settings.model_fields
    assert f"{ENV_PREFIX}HEALTH_PORT" == PORT_ENV
