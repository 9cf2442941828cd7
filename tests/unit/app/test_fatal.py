"""A replica that stops on a cause fixed outside the code (the store's disk full, a permission taken
away) says so in one line, not in an exception-group traceback (issue 13)."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from worker.app import run_worker
from worker.app.fatal import StopCause, leaves, stop_cause
from worker.config import Settings, load_settings
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.pipeline.produce_policy import ProduceError
from worker.routing import RouteTable
from worker.telemetry import Telemetry


def disk_full(path: Path) -> sqlite3.OperationalError:
    """SQLite's own error for a full disk: a database allowed two pages, written past them."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA max_page_count = 2")
        connection.execute("CREATE TABLE routes (definition BLOB)")
        with pytest.raises(sqlite3.OperationalError) as raised:
            connection.execute("INSERT INTO routes VALUES (?)", (b"x" * 65536,))
        return raised.value
    finally:
        connection.close()


def grouped(error: BaseException) -> ExceptionGroup[Exception]:
    """``error`` as the worker's nested task groups deliver it."""
    return ExceptionGroup("replica", [ExceptionGroup("pipeline", [error])])  # type: ignore[list-item]


def test_leaves_unwrap_nested_groups_in_order() -> None:
    first, second, third = ValueError("a"), KeyError("b"), OSError("c")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [first, second]), third])
    assert leaves(group) == [first, second, third]
    assert leaves(first) == [first]


def test_a_full_store_disk_is_named_with_the_store_and_its_free_space(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite3"
    cause = stop_cause(grouped(disk_full(tmp_path / "full.db")), store)
    assert cause.known
    assert cause.line.startswith(
        "the route store cannot be written: sqlite3.OperationalError: database or disk is full ("
    )
    assert f"store {store.resolve()}, on a filesystem with " in cause.line
    assert "bytes free" in cause.line


def test_an_index_file_that_cannot_be_written_is_the_store_too(tmp_path: Path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "index.faiss"))
    cause = stop_cause(grouped(error), tmp_path / "store.sqlite3")
    assert cause.known
    assert "the route store cannot be written: OSError: [Errno 28] No space left on device" in cause.line


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (TopicAuthorizationFailedError("queries"), "TopicAuthorizationFailedError: queries"),
        (GroupAuthorizationFailedError("routeworker"), "GroupAuthorizationFailedError: routeworker"),
    ],
)
def test_a_permission_taken_away_is_named_once(tmp_path: Path, error: Exception, named: str) -> None:
    cause = stop_cause(grouped(error), tmp_path / "store.sqlite3")
    assert cause.known
    assert cause.line == f"Kafka refuses access while running: [Error {error.errno}] {named}"


def test_a_refusal_behind_another_error_is_found_in_the_chain(tmp_path: Path) -> None:
    try:
        try:
            raise TopicAuthorizationFailedError("route-mutations")
        except TopicAuthorizationFailedError as refused:
            raise RuntimeError("the mutation log cannot be read") from refused
    except RuntimeError as error:
        cause = stop_cause(grouped(error), tmp_path / "store.sqlite3")
    assert cause.known
    assert "TopicAuthorizationFailedError: route-mutations" in cause.line


def test_output_that_cannot_be_delivered_is_one_line(tmp_path: Path) -> None:
    error = ProduceError("an output record for topic routed-intents was refused: UnknownTopicOrPartition")
    cause = stop_cause(grouped(error), tmp_path / "store.sqlite3")
    assert cause == StopCause(f"the output cannot be delivered: {error}", True, error)


def test_any_other_error_is_named_and_not_known(tmp_path: Path) -> None:
    bug = ZeroDivisionError("division by zero")
    cause = stop_cause(grouped(bug), tmp_path / "store.sqlite3")
    assert not cause.known
    assert cause.line == "ZeroDivisionError: division by zero"
    assert cause.error is bug


def test_of_several_failures_the_known_one_is_named_and_the_others_listed(tmp_path: Path) -> None:
    group = ExceptionGroup("replica", [ZeroDivisionError("x"), TopicAuthorizationFailedError("queries")])
    cause = stop_cause(group, tmp_path / "store.sqlite3")
    assert cause.known
    assert cause.line.startswith("Kafka refuses access while running: [Error 29] TopicAuthorization")
    assert cause.line.endswith("(also failed: ZeroDivisionError: x)")


# --- run_worker: the replica's own task boundary -------------------------------------------------


class FailingReplica:
    """A replica whose route store fails on its first write, before the table is ready."""

    def __init__(self, error: Exception, encoder: EncoderPool) -> None:
        self.ready = asyncio.Event()
        self._error = error
        self._table = RouteTable(encoder.dim, encoder.fingerprint)

    @property
    def table(self) -> RouteTable:
        return self._table

    async def open(self) -> None:
        return None

    async def run(self) -> None:
        raise self._error

    async def stop(self) -> None:
        return None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(store_path=tmp_path / "store.sqlite3", health_port=None)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry(replica_id="test")
    yield made
    made.shutdown()


async def stopped(settings: Settings, telemetry: Telemetry, error: Exception) -> int:
    return await run_worker(
        settings,
        telemetry,
        replica_factory=lambda s, encoder: FailingReplica(error, encoder),
        encoder_factory=lambda s: hashing_pool(16),
    )


async def test_a_full_disk_stops_the_worker_with_one_line_and_no_traceback(
    settings: Settings, telemetry: Telemetry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        assert await stopped(settings, telemetry, disk_full(tmp_path / "full.db")) == 1
    (record,) = [r for r in caplog.records if r.name == "worker.app.run"]
    assert record.exc_info is None
    assert record.getMessage().startswith(
        "routeworker stopped: the route store cannot be written: "
        "sqlite3.OperationalError: database or disk is full (store "
    )
    alive, reason = telemetry.health.liveness()
    assert not alive
    assert "database or disk is full" in reason


async def test_a_permission_taken_away_stops_the_worker_with_one_line(
    settings: Settings, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        assert await stopped(settings, telemetry, TopicAuthorizationFailedError("route-mutations")) == 1
    (record,) = [r for r in caplog.records if r.name == "worker.app.run"]
    assert record.exc_info is None
    assert record.getMessage() == (
        "routeworker stopped: Kafka refuses access while running: "
        "[Error 29] TopicAuthorizationFailedError: route-mutations"
    )


async def test_a_bug_still_logs_its_traceback_after_the_line_naming_it(
    settings: Settings, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        assert await stopped(settings, telemetry, ZeroDivisionError("division by zero")) == 1
    (record,) = [r for r in caplog.records if r.name == "worker.app.run"]
    assert record.getMessage() == "routeworker stopped on an error: ZeroDivisionError: division by zero"
    assert record.exc_info is not None


def test_output_refused_by_a_permission_taken_away_names_the_refusal(tmp_path: Path) -> None:
    refused = TopicAuthorizationFailedError("routed-intents")
    error = ProduceError("an output record for topic routed-intents was refused: ...", refused)
    try:
        raise error from None  # how the producer raises it again: no cause to follow
    except ProduceError as raised:
        cause = stop_cause(grouped(raised), tmp_path / "store.sqlite3")
    assert cause.known
    assert cause.line.startswith("Kafka refuses access while running: ")
    assert "TopicAuthorizationFailedError: routed-intents" in cause.line
