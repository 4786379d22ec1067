"""The event loop's clock, read without a Python-level call where that is exact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["loop_clock", "timer_now"]


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """A function returning ``loop.time()``: ``time.monotonic`` itself where that is all it does.

    The per-message paths read the clock once per message. asyncio's own
    ``BaseEventLoop.time`` is a Python-level method around ``time.monotonic``: about
    730 instructions a call against 370 (callgrind, CPython 3.11; ~1,000 with the
    ``asyncio.get_running_loop()`` in front of it). A loop whose class
    defines its own ``time`` (uvloop, a test's virtual clock) keeps it.
    """
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def timer_now(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """The time a timer set for ``deadline`` must act at: never before that deadline.

    uvloop's clock and timers work in whole milliseconds: a timer can run while
    ``loop.time()`` is still short of its deadline (a float deadline just above the
    millisecond, a delay rounded down; under 0.5 ms a delay is a ``call_soon``). Code
    that then judged its deadline not reached set the timer again for it, and the loop
    ran it again at once, over and over until the clock turned (~20 timers per ack).
    What fell due at the deadline a timer was set for is due when it runs.
    """
    return max(loop.time(), deadline)
