"""Background threads lower their own priority only; the rest of the process keeps its own."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from worker.background import background_executor, lower_this_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux")


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_only_the_calling_thread_is_lowered_and_never_raised() -> None:
    before = _niceness()
    seen: list[int] = []

    def work() -> None:
        lower_this_thread(5)
        seen.append(_niceness())

    def twice() -> None:
        lower_this_thread(7)
        lower_this_thread(5)  # already lower: stays where it is
        seen.append(_niceness())

    for target in (work, twice):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert seen == [max(before, 5), max(before, 7)]
    assert _niceness() == before


def test_the_background_executor_runs_lowered() -> None:
    before = _niceness()
    with background_executor("test-background", 3) as executor:
        assert executor.submit(_niceness).result() == max(before, 3)
    with background_executor("test-background", 0) as executor:
        assert executor.submit(_niceness).result() == before
