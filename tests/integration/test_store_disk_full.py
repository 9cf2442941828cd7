"""A `routeworker run` process whose route store's filesystem fills up stops with one line that names
the cause, and a non-zero exit; no exception-group traceback (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_harness import Topics, WorkerProcess, create_topics, publish_routes, route_definitions
from small_disk import SmallDisk

from worker.contracts import RouteDefinition
from worker.local.kafka import LocalKafka

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small-disk", "2m")
    refused = disk.mount()
    if refused is not None:  # mounting needs root (CAP_SYS_ADMIN): the machine, not the code
        pytest.skip(f"no tmpfs of the test's own on this machine: {refused}")
    try:
        yield disk
    finally:
        disk.unmount()


async def test_a_full_store_disk_stops_the_worker_with_one_line(
    kafka_broker: LocalKafka, small_disk: SmallDisk, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = Topics.fresh()
    await create_topics(bootstrap, topics)
    await publish_routes(bootstrap, topics.mutations, route_definitions())
    store = tmp_path / "store.sqlite3"
    store.symlink_to(small_disk.path / "store.sqlite3")  # SQLite (and the index files) follow it
    worker = WorkerProcess(topics.env(bootstrap, store, routing_head=False), tmp_path / "worker.log")
    try:
        await worker.wait_for_log("route table ready", within=120)
        small_disk.fill()
        extra = [
            RouteDefinition(name=f"extra-{i}", utterances=[f"extra route {i} phrase {j}" for j in range(4)])
            for i in range(20)
        ]
        await publish_routes(bootstrap, topics.mutations, extra)  # the replica must store them
        code = await worker.wait(within=90)
        log = worker.log()
    finally:
        worker.close()
    assert code == 1, log
    stops = [line for line in log.splitlines() if " ERROR worker.app.run: " in line]
    assert len(stops) == 1, log
    assert "routeworker stopped: the route store cannot be written: " in stops[0]
    assert f"(store {(small_disk.path / 'store.sqlite3').resolve()}, on a filesystem with " in stops[0]
    assert "Traceback" not in log, log
