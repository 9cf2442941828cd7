"""`routeworker dev`: services up, topics made, next commands printed, everything gone after Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from pipeline_harness import ROOT

pytestmark = pytest.mark.integration


def start_dev(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli.main", "dev", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:  # blocks until the next line or EOF
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"exited with {process.wait()} before {marker!r}:\n" + "\n".join(lines))


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def exported(lines: list[str], name: str) -> str:
    prefix = f"export {name}="
    return next(line.strip()[len(prefix) :] for line in lines if line.strip().startswith(prefix))


@pytest.mark.parametrize("broker", [[], ["--broker", "tansu"]], ids=["kafka", "tansu"])
async def test_dev_starts_broker_and_redis_prints_the_next_commands_and_stops_on_ctrl_c(
    broker: list[str],
) -> None:
    process = start_dev(*broker, "--partitions", "3")
    try:
        lines = await asyncio.wait_for(asyncio.to_thread(read_until, process, "Ctrl-C"), 120)
        bootstrap = exported(lines, "ROUTEWORKER_KAFKA_BOOTSTRAP")
        redis_url = exported(lines, "ROUTEWORKER_REDIS_URL")
        text = "\n".join(lines)
        assert "routeworker routes apply examples/routes.yaml --with-embeddings" in text
        assert "routeworker run" in text
        assert 'routeworker route "' in text
        expected = {"queries", "routed-intents", "queries.dlq", "route-mutations"}
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            assert expected <= set(await admin.list_topics())  # listed before the commands are printed
            (queries,) = await admin.describe_topics(["queries"])
            assert len(queries["partitions"]) == 3
        finally:
            await admin.close()
        client = aioredis.from_url(redis_url)
        assert await client.ping()
        await client.aclose()

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(asyncio.to_thread(process.wait), 60) == 0
        broker_port = int(bootstrap.rsplit(":", 1)[1])
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        assert not listening(broker_port)
        assert not listening(redis_port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
