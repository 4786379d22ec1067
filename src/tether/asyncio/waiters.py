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

#: asyncio.timeout handles a simultaneous outside cancellation right from 3.11.3 on.
_TIMEOUT_FIXED = sys.version_info >= (3, 11, 3)


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


async def bounded(awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """``await awaitable`` for at most ``timeout`` seconds (None: no limit), else ``TimeoutError``.

    ``asyncio.wait_for`` before Python 3.12 wraps the awaitable in a new task: one
    task per call, made on every connection's handshake and every drained session.
    ``asyncio.timeout`` cancels the caller's own task instead. It is used from 3.11.3
    on: earlier 3.11 releases could turn a timeout that coincides with an outside
    cancellation into the wrong exception (CPython gh-102780); before that, and on
    3.10, this is ``wait_for``.
    """
    if sys.version_info >= (3, 11) and _TIMEOUT_FIXED:  # (mypy reads major.minor only)
        async with asyncio.timeout(timeout):
            return await awaitable
    try:  # pragma: no cover (3.10, early 3.11)
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:  # pragma: no cover (not the builtin before 3.11)
        raise TimeoutError from None
