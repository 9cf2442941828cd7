"""Stop signals of a routeworker process: one way to install and remove their handlers.

Both processes the application runs (a serving replica, a route replica alone) stop gracefully on
SIGTERM or SIGINT; the handlers run on the event loop, so they may touch asyncio objects.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def handling(
    on_signal: Callable[[signal.Signals], None], signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """Call ``on_signal(number)`` on the running loop for each of ``signals`` until the block ends."""
    loop = asyncio.get_running_loop()
    for number in signals:
        loop.add_signal_handler(number, on_signal, number)
    try:
        yield
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
