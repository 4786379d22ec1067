"""SendQueue: bounded, ordered, waiters woken only by what they wait for."""

from __future__ import annotations

import asyncio

import pytest

from tether import QueueFull
from tether.asyncio.sendqueue import QueueClosed, SendQueue

pytestmark = pytest.mark.timeout(5)


async def test_put_waits_for_space_then_raises_queue_full() -> None:
    """A full queue makes put() wait up to its timeout, then QueueFull; nothing was queued."""
    queue = SendQueue(1)
    await queue.put("a", timeout=None)
    with pytest.raises(QueueFull):
        await queue.put("b", timeout=0.02)
    assert len(queue) == 1
    assert queue.head() == "a"


async def test_pop_wakes_a_put_waiting_for_space() -> None:
    """pop() lets a waiting put() in, in order."""
    queue = SendQueue(1)
    await queue.put("a", timeout=None)
    waiting = asyncio.ensure_future(queue.put("b", timeout=None))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert queue.pop() == "a"
    await asyncio.wait_for(waiting, 1)
    assert queue.head() == "b"


async def test_a_timed_out_put_does_not_swallow_the_wakeup_of_another() -> None:
    """Two puts wait; the first times out; the second still gets the space freed later."""
    queue = SendQueue(1)
    await queue.put("a", timeout=None)
    first = asyncio.ensure_future(queue.put("x", timeout=0.01))
    second = asyncio.ensure_future(queue.put("b", timeout=None))
    with pytest.raises(QueueFull):
        await first
    queue.pop()
    await asyncio.wait_for(second, 1)
    assert queue.head() == "b"
    assert len(queue) == 1


async def test_wait_empty_and_peek() -> None:
    """peek() waits for a message; wait_empty() returns once the last one is popped."""
    queue = SendQueue(None)
    peeking = asyncio.ensure_future(queue.peek())
    await asyncio.sleep(0)
    queue.append("a")
    assert await asyncio.wait_for(peeking, 1) == "a"
    emptied = asyncio.ensure_future(queue.wait_empty())
    await asyncio.sleep(0)
    assert not emptied.done()
    queue.pop()
    await asyncio.wait_for(emptied, 1)


async def test_drain_fails_a_waiting_put() -> None:
    """drain() returns what was queued; a put() waiting for space raises QueueClosed."""
    queue = SendQueue(1)
    await queue.put("a", timeout=None)
    waiting = asyncio.ensure_future(queue.put("b", timeout=None))
    await asyncio.sleep(0)
    assert queue.drain() == ("a",)
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(QueueClosed):
        await queue.put("c", timeout=None)


async def test_room_goes_to_the_puts_in_call_order() -> None:
    """A put waiting for room is not overtaken by a later one that finds room free."""
    queue = SendQueue(max_size=1)
    queue.append("m1")
    first = asyncio.ensure_future(queue.put("A", timeout=None))
    await asyncio.sleep(0)
    assert queue.must_wait  # full, and A waits: a newcomer must queue behind it
    queue.pop()  # room for one; A has not run yet
    assert queue.must_wait  # (before, a send() saw room and appended at once, ahead of A)
    second = asyncio.ensure_future(queue.put("B", timeout=None))
    await first
    assert queue.head() == "A"
    assert not second.done()
    queue.pop()
    await second
    assert queue.head() == "B"


async def test_a_timed_out_put_gives_its_turn_to_the_next() -> None:
    """The first waiter times out: the second in line gets the room."""
    queue = SendQueue(max_size=1)
    queue.append("m1")
    first = asyncio.ensure_future(queue.put("A", timeout=0.05))
    second = asyncio.ensure_future(queue.put("B", timeout=None))
    with pytest.raises(QueueFull):
        await first
    queue.pop()
    await asyncio.wait_for(second, 1)
    assert queue.head() == "B"
