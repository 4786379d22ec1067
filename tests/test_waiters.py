"""tether.asyncio.waiters: wake-ups made on demand and a bounded wait without a task."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

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


@pytest.mark.skipif(sys.version_info < (3, 11, 3), reason="asyncio.timeout from 3.11.3")
async def test_bounded_keeps_a_cancellation_that_comes_as_the_wait_ends() -> None:
    # The reason every bounded wait in tether goes through this helper: on Python
    # 3.11, asyncio.wait_for returns the result when the awaited future completes in
    # the same loop pass as the cancellation of its caller, and the cancellation is
    # lost (a close() or a send() that cannot be cancelled).
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    finished: list[str] = []

    async def waiter() -> None:
        await bounded(done, 5.0)
        finished.append("went on after its cancellation")

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)  # the task now waits on `done`
    done.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == []


async def test_bounded_without_a_limit_waits_for_the_result() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    loop.call_soon(done.set_result, 3)
    assert await bounded(done, None) == 3


def test_library_code_bounds_its_waits_with_bounded_only() -> None:
    """asyncio.wait_for appears in tether's source only as bounded()'s fallback for 3.10."""
    src = Path(__file__).resolve().parents[1] / "src" / "tether"
    users = sorted(
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "asyncio.wait_for(" in path.read_text(encoding="utf-8")
    )
    assert users == ["asyncio/waiters.py"]


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
