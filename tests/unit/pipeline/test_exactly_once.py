"""The exactly-once output on in-memory transactions: fencing, committed offsets read after the
fence, stamps, cadence, revocation, rewinds and fatal errors."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, ProducerFenced, TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition
from pipeline_fakes import FakeConsumer
from txn_fakes import FakeTransactions

from worker.pipeline.cadence import CommitCadence
from worker.pipeline.exactly_once import ExactlyOnceOutput
from worker.pipeline.transaction_errors import TransactionFatal, is_fatal
from worker.pipeline.transactions import transactional_id
from worker.pipeline.types import Outbound

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)
GROUP = "routeworker"


def out(partition: TopicPartition, offset: int, topic: str = "routed-intents") -> Outbound:
    return Outbound(topic, None, f"{partition.partition}:{offset}".encode(), origin=partition)


@pytest.fixture
def consumer() -> FakeConsumer:
    made = FakeConsumer()
    made.assigned = {P0, P1}
    return made


@pytest.fixture
def cluster(consumer: FakeConsumer) -> FakeTransactions:
    return FakeTransactions(group_offsets=consumer.committed)


@pytest.fixture
def rewound() -> list[int]:
    return []


@pytest.fixture
def output(consumer: FakeConsumer, cluster: FakeTransactions, rewound: list[int]) -> ExactlyOnceOutput:
    return ExactlyOnceOutput(
        consumer,
        cluster.producer,
        GROUP,
        interval_s=0,
        on_rewind=lambda: rewound.append(1),
        backoff=lambda attempt: 0.0,
    )


async def deliver(output: ExactlyOnceOutput, offsets: dict[TopicPartition, range]) -> bool:
    """One batch: an output per offset, stamped now; True if it went into live transactions."""
    stamp = output.stamp(offsets)
    records = [out(tp, o) for tp, span in offsets.items() for o in span]
    nexts = {tp: span.stop for tp, span in offsets.items()}
    return await output.enqueue(stamp, records, nexts)


def test_transactional_ids_are_per_group_topic_and_partition() -> None:
    assert transactional_id("g", TopicPartition("queries", 3)) == "g/queries/3"
    # a group with a slash cannot collide with another group's topic: topic names have no slash
    assert transactional_id("a/b", TopicPartition("c", 0)) != transactional_id("a", TopicPartition("b", 0))


def test_the_cadence_waits_for_the_oldest_open_transaction() -> None:
    cadence = CommitCadence(0.1)
    assert cadence.wait_s([None, None], now=5.0) is None
    assert cadence.wait_s([4.95, None, 4.99], now=5.0) == pytest.approx(0.05)
    assert cadence.wait_s([4.0], now=5.0) == 0.0
    assert CommitCadence(0).wait_s([5.0], now=5.0) == 0.0
    with pytest.raises(ValueError, match="negative"):
        CommitCadence(-1)


async def test_owning_fences_the_previous_owner_and_reads_the_offset_after_its_commit_ended(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    # the previous owner of P0 has a transaction being committed (offsets up to 7) and one of P1
    # still open; the consumer's own view of the committed offset (as aiokafka fetched it on
    # assignment, concurrently) is older
    consumer.committed[P0] = 5
    zombie0 = cluster.producer(transactional_id(GROUP, P0))
    zombie1 = cluster.producer(transactional_id(GROUP, P1))
    for zombie in (zombie0, zombie1):
        await zombie.start()
        await zombie.begin_transaction()
    await (await zombie0.send("routed-intents", b"committed by the old owner"))
    await zombie0.send_offsets_to_transaction({P0: 7}, GROUP)
    await (await zombie1.send("routed-intents", b"left open by the old owner"))
    cluster.markers = asyncio.Event()
    committing = asyncio.create_task(zombie0.commit_transaction())
    async with asyncio.timeout(5):  # the old owner's commit is accepted, its markers not yet written
        while not cluster.open[zombie0.transactional_id].committing:  # noqa: ASYNC110 - fake's state
            await asyncio.sleep(0)
    consumer.positions[P0] = 5  # what aiokafka's own refresh found

    await output.assign({P0, P1})

    assert cluster.values("routed-intents") == [b"committed by the old owner"]
    assert cluster.aborted[-1].value == b"left open by the old owner"
    assert consumer.positions == {P0: 7, P1: 0}  # the offset read after the fence, not the stale 5
    assert output.admits(P0)
    assert output.admits(P1)
    assert consumer.paused() == set()
    cluster.markers.set()
    with pytest.raises(ProducerFenced):
        await committing
    with pytest.raises(ProducerFenced):
        await zombie1.commit_transaction()


async def test_outputs_and_offsets_are_committed_together_on_the_cadence(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    await output.assign({P0, P1})
    assert await deliver(output, {P0: range(0, 3), P1: range(0, 2)})
    assert cluster.visible == []  # not committed yet: nothing visible to read_committed readers
    committer = asyncio.create_task(output.run())
    try:
        async with asyncio.timeout(5):
            while consumer.committed != {P0: 3, P1: 2}:  # noqa: ASYNC110 - state of the fakes
                await asyncio.sleep(0.001)
        assert sorted(cluster.values("routed-intents")) == sorted([b"0:0", b"0:1", b"0:2", b"1:0", b"1:1"])
        assert {txn_id for txn_id, _ in cluster.commits} == {"routeworker/queries/0", "routeworker/queries/1"}
    finally:
        output.stop()
        await committer
    await output.close(commit=True)
    assert all(p.stopped for p in cluster.producers)


async def test_records_of_partitions_not_yet_owned_are_not_admitted(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    assert not output.admits(P0)
    assert output.stamp([P0]) == {}
    assert not await output.enqueue(output.stamp([P0]), [out(P0, 0)], {P0: 1})
    assert cluster.open == {}


async def test_a_failed_acknowledgement_aborts_and_rewinds_to_the_committed_offset(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions, rewound: list[int]
) -> None:
    await output.assign({P0, P1})
    assert await deliver(output, {P0: range(0, 2)})
    await output.commit("test")
    assert consumer.committed == {P0: 2}
    stale = output.stamp([P0, P1])  # a batch consumed before the failure, delivered after it
    cluster.fail = lambda sent: sent.value == b"0:3"
    consumer.positions[P0] = 10  # the consumer had fetched further
    assert await deliver(output, {P0: range(2, 4), P1: range(0, 1)})  # handed over
    await output.commit("test")  # finds the failed acknowledgement of P0's transaction

    assert rewound == [1]  # the batch being filled was dropped
    assert output.rewinds == 1
    # P1's transaction was whole and committed; P0's was aborted: both resume where committed
    assert consumer.committed == {P0: 2, P1: 1}
    assert consumer.positions == {P0: 2, P1: 1}
    assert {s.value for s in cluster.aborted} >= {b"0:2"}
    assert cluster.values("routed-intents") == [b"0:0", b"0:1", b"1:0"]
    # the stale batch's outputs go nowhere; a batch consumed now goes into the new transactions
    cluster.fail = lambda sent: False
    assert not await output.enqueue(stale, [out(P0, 4)], {P0: 5})
    assert await deliver(output, {P0: range(2, 4)})
    await output.commit("test")
    assert cluster.values("routed-intents") == [b"0:0", b"0:1", b"1:0", b"0:2", b"0:3"]
    assert consumer.committed == {P0: 4, P1: 1}


async def test_a_commit_refused_for_a_passing_reason_is_rewound(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    await output.assign({P0})
    failures = [KafkaTimeoutError("coordinator busy")]
    cluster.fail_commit = lambda txn_id: failures.pop() if failures else None
    assert await deliver(output, {P0: range(0, 3)})
    await output.commit("test")
    assert output.rewinds == 1
    assert cluster.visible == []
    assert consumer.committed == {}
    assert consumer.positions[P0] == 0
    assert await deliver(output, {P0: range(0, 3)})
    await output.commit("test")
    assert cluster.values("routed-intents") == [b"0:0", b"0:1", b"0:2"]


async def test_a_fenced_commit_stops_the_replica(
    output: ExactlyOnceOutput, cluster: FakeTransactions
) -> None:
    await output.assign({P0})
    assert await deliver(output, {P0: range(0, 1)})
    newer = cluster.producer(transactional_id(GROUP, P0))
    await newer.start()  # another replica took the partition over
    with pytest.raises(TransactionFatal, match="fenced"):
        await output.commit("test")


async def test_a_fenced_send_stops_the_replica(output: ExactlyOnceOutput, cluster: FakeTransactions) -> None:
    await output.assign({P0})
    assert await deliver(output, {P0: range(0, 1)})
    await output.commit("test")
    await cluster.producer(transactional_id(GROUP, P0)).start()
    with pytest.raises(TransactionFatal, match="fenced"):
        await deliver(output, {P0: range(1, 2)})  # the next transaction cannot begin


async def test_transactions_that_keep_failing_stop_the_replica(
    consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    output = ExactlyOnceOutput(
        consumer, cluster.producer, GROUP, interval_s=0, max_rewinds=2, backoff=lambda attempt: 0.0
    )
    await output.assign({P0})
    cluster.fail = lambda sent: True
    for _ in range(2):
        assert await deliver(output, {P0: range(0, 1)})
        await output.commit("test")
    assert output.rewinds == 2
    assert await deliver(output, {P0: range(0, 1)})
    with pytest.raises(TransactionFatal, match="3 times in a row"):
        await output.commit("test")


async def test_revoking_commits_finished_work_and_aborts_unfinished_work(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    await output.assign({P0, P1})
    assert await deliver(output, {P0: range(0, 2), P1: range(0, 2)})
    output.withdraw({P0})
    assert not output.admits(P0)
    assert output.admits(P1)
    await output.revoke({P0}, finished=True)
    await output.revoke({P1}, finished=False)
    assert cluster.values("routed-intents") == [b"0:0", b"0:1"]
    assert consumer.committed == {P0: 2}
    assert [s.value for s in cluster.aborted] == [b"1:0", b"1:1"]
    assert output.owned() == {}
    assert all(p.stopped for p in cluster.producers)


async def test_a_producer_that_cannot_start_is_fatal(
    consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    def refusing(transactional_id: str) -> object:
        made = cluster.producer(transactional_id)

        async def start() -> None:
            raise TopicAuthorizationFailedError("queries")

        made.start = start  # type: ignore[method-assign]
        return made

    output = ExactlyOnceOutput(consumer, refusing, GROUP, interval_s=0)  # type: ignore[arg-type]
    with pytest.raises(TransactionFatal, match="TopicAuthorizationFailedError"):
        await output.assign({P0})
    assert all(p.stopped for p in cluster.producers)


def test_which_errors_are_fatal() -> None:
    assert is_fatal(ProducerFenced())
    assert is_fatal(TopicAuthorizationFailedError())
    assert is_fatal(AssertionError("Invalid state transition"))
    assert not is_fatal(KafkaTimeoutError())
    assert not is_fatal(TimeoutError())


async def test_an_assignment_after_the_close_owns_nothing(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    await output.assign({P0})
    await output.close(commit=True)
    await output.assign({P0, P1})  # a rebalance that ends while the replica stops
    assert output.owned() == {}
    assert not output.admits(P1)
    assert all(p.stopped for p in cluster.producers)


async def test_records_handed_over_during_a_commit_wait_and_open_the_next_transaction(
    output: ExactlyOnceOutput, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    await output.assign({P0})
    assert await deliver(output, {P0: range(0, 2)})
    cluster.markers = asyncio.Event()  # the commit stays in its round trips until set
    committing = asyncio.create_task(output.commit("test"))
    async with asyncio.timeout(5):
        while not output.owned()[P0].lock.locked():  # noqa: ASYNC110 - state of the fakes
            await asyncio.sleep(0)
    # the batch does not wait for the commit: its records join the backlog
    assert await asyncio.wait_for(deliver(output, {P0: range(2, 4)}), 1)
    assert not committing.done()
    cluster.markers.set()
    await committing
    assert consumer.committed == {P0: 2}
    assert output.owned()[P0].is_open  # the backlog opened the next transaction
    await output.commit("test")
    assert cluster.values("routed-intents") == [b"0:0", b"0:1", b"0:2", b"0:3"]
    assert consumer.committed == {P0: 4}
