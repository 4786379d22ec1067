"""tether.asyncio.waiters: wake-ups made on demand and a bounded wait without a task."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tether.asyncio.waiters import bounded, wait_on, wake_all

pytestmark = pytest.mark.timeout(10)


async def test_bounded_returns_the_result() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    loop.call_soon(done.set_result, 7)
    assert await bounded(done, 5.0) == 7


async def test_bounded_raises_timeout_error_when_time_is_up() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # A timeout of 0 expires on the next loop pass: no real waiting.
    with pytest.raises(TimeoutError):
        await bounded(never, 0)
    assert never.cancelled()


@pytest.mark.skipif(sys.version_info < (3, 11, 3), reason="asyncio.timeout from 3.11.3")
async def test_bounded_makes_no_task_of_its_own() -> None:
    # The point of the helper (a drain bounds one wait per session): asyncio.wait_for
    # on 3.11 would show a second task here (on 3.12+ it would not: there this test
    # cannot tell the two apart).
    seen: list[int] = []

    async def look() -> None:
        seen.append(len(asyncio.all_tasks()))

    await bounded(look(), 5.0)
    assert seen == [1]


async def test_wake_all_resolves_every_waiter_once() -> None:
    waiters: list[asyncio.Future[None]] = []
    first = asyncio.ensure_future(wait_on(waiters))
    second = asyncio.ensure_future(wait_on(waiters))
    await asyncio.sleep(0)
    assert len(waiters) == 2
    wake_all(waiters)
    await asyncio.gather(first, second)
    assert waiters == []


async def test_a_cancelled_wait_leaves_no_stale_waiter() -> None:
    waiters: list[asyncio.Future[None]] = []
    task = asyncio.ensure_future(wait_on(waiters))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waiters == []
