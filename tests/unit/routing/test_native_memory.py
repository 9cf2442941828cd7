"""Returning the heap's free pages: what a replay frees between the routes it keeps leaves RSS."""

from __future__ import annotations

import platform

import pytest

from worker.routing.native import _malloc_trim, release_free_memory


def resident_anonymous_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_memory_freed_between_kept_objects_goes_back_to_the_system() -> None:
    assert _malloc_trim() is not None
    kept, freed = [], []
    for i in range(20_000):  # as a replay: each record's text freed, its decoded vectors kept
        freed.append(b"%d" % i + bytes(10_000))
        kept.append(b"%d" % i + bytes(7_000))
    del freed
    before = resident_anonymous_kb()
    release_free_memory()
    after = resident_anonymous_kb()
    assert before - after > 100_000, (before, after)  # 200 MB freed in holes: most of it returned
    assert len(kept) == 20_000
