"""The garbage collector around a replica's start-up replay (``_collector_off_until_ready``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from worker.replication.replica import _collector_off_until_ready


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.enable()
    # earlier tests' store loads froze their objects (process-wide): start from none frozen
    gc.unfreeze()
    yield
    gc.unfreeze()
    if not enabled:
        gc.disable()


def test_the_collector_is_off_during_the_replay_and_on_after_it() -> None:
    with _collector_off_until_ready(lambda: False):
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_large_replay_freezes_what_it_made() -> None:
    kept = [[n] for n in range(1_000)]  # long-lived containers, as a replay's routes
    with _collector_off_until_ready(lambda: True):
        kept.extend([n] for n in range(1_000))
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)


def test_the_collector_is_on_again_when_the_replay_fails() -> None:
    with pytest.raises(RuntimeError), _collector_off_until_ready(lambda: False):
        raise RuntimeError("broker gone")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with _collector_off_until_ready(lambda: True):
        pass
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
