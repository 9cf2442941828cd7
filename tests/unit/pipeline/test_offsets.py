"""The in-flight deque: only a finished head advances the committable offsets."""

from __future__ import annotations

import asyncio

from aiokafka.structs import TopicPartition

from worker.pipeline import InputRecord, OffsetTracker
from worker.pipeline.types import next_offsets

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)


def test_next_offsets_are_the_highest_offset_plus_one_per_partition() -> None:
    records = [InputRecord("queries", p, o, 0, None, b"") for p, o in [(0, 4), (1, 9), (0, 7), (0, 5)]]
    assert next_offsets(records) == {P0: 8, P1: 10}


def test_a_finished_batch_behind_an_unfinished_head_is_not_committable() -> None:
    tracker = OffsetTracker()
    first = tracker.start({P0: 10})
    second = tracker.start({P0: 20, P1: 5})
    tracker.finish(second)
    assert tracker.take_committable() == {}
    assert len(tracker) == 2
    tracker.finish(first)
    assert tracker.take_committable() == {P0: 20, P1: 5}
    assert len(tracker) == 0
    assert tracker.take_committable() == {}


def test_offsets_never_move_backwards_and_restore_keeps_newer_ones() -> None:
    tracker = OffsetTracker()
    tracker.finish(tracker.start({P0: 30}))
    tracker.finish(tracker.start({P0: 12}))  # e.g. a partition that came back at an older position
    taken = tracker.take_committable()
    assert taken == {P0: 30}
    tracker.finish(tracker.start({P0: 40}))
    tracker.restore(taken)
    assert tracker.take_committable() == {P0: 40}
    tracker.restore({P1: 3})
    tracker.forget([P1])
    assert tracker.take_committable() == {}


async def test_wait_until_wakes_on_change_and_on_poke() -> None:
    tracker = OffsetTracker()
    batch = tracker.start({P0: 1})
    drained = asyncio.create_task(tracker.wait_until(lambda: len(tracker) == 0))
    await asyncio.sleep(0)  # one turn of the loop (not a timed wait): the waiter is now waiting
    assert not drained.done()
    tracker.finish(batch)
    await asyncio.wait_for(drained, 1)

    flag = False
    poked = asyncio.create_task(tracker.wait_until(lambda: flag))
    await asyncio.sleep(0)
    flag = True
    tracker.poke()
    await asyncio.wait_for(poked, 1)
