"""Background work yields the CPU to queries: a lower scheduling priority for its threads.

Applying route mutations (and decoding calibrations) and rebuilding the index are background work; on a
small machine they share cores with the encoder and the event loop. Linux schedules threads
individually, so a thread can lower its own priority (raise its niceness) without touching the
rest of the process. Elsewhere this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor


def lower_this_thread(niceness: int) -> None:
    """Raise the calling thread's niceness to at least ``niceness`` (best effort).

    At least, not plus: work started from an already lowered thread (a rebuild triggered by the
    replica's apply thread) stays at the same level. Threads and processes started afterwards from
    this thread inherit it.
    """
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # not fatal: the work is the same, only its priority
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, niceness))


def background_executor(name: str, niceness: int) -> ThreadPoolExecutor:
    """One thread for background work, at lowered priority."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lower_this_thread, initargs=(niceness,))
