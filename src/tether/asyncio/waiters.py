"""Wake-ups made on demand: a list of futures instead of an ``asyncio.Event``.

An ``asyncio.Event`` allocates its deque of waiters at once and costs a loop pass
(and, on CPython 3.11, a ``getpid()``) per ``wait()``; a future is created only when
somebody actually waits, which is rare on the hot paths that use these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["bounded", "wait_on", "wake_all"]

_T = TypeVar("_T")


def wake_all(waiters: list[asyncio.Future[None]]) -> None:
    """Resolve every waiting future and forget them."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def wait_on(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until :func:`wake_all` is called on ``waiters``."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if waiter.cancelled() or not waiter.done():  # leave no stale entry behind
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)


async def bounded(awaitable: Awaitable[_T], timeout: float) -> _T:
    """``await awaitable`` for at most ``timeout`` seconds, else ``TimeoutError``.

    ``asyncio.wait_for`` before Python 3.12 wraps the awaitable in a new task: one
    task per call, made on every connection's handshake and every drained session.
    ``asyncio.timeout`` (3.11+) cancels the caller's own task instead; on 3.10 this
    falls back to ``wait_for``.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)  # pragma: no cover (3.10)
