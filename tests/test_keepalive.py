"""The heartbeat drivers of ``tether.asyncio.keepalive`` over a fake transport."""

from __future__ import annotations

import asyncio
import functools
import heapq
from collections.abc import Callable
from typing import Any

import pytest
from tests.support.virtualtime import run_virtual

from tether.asyncio.engine import ClosedInfo, Message, PongHandler, Transport, TransportClosed
from tether.asyncio.keepalive import HeartbeatTimer
from tether.heartbeat import Heartbeat, Reading

pytestmark = pytest.mark.timeout(10)


class PingTransport(Transport):
    """Records pings; answers them with a pong only while ``answering``."""

    def __init__(self, *, answering: bool) -> None:
        self.subprotocol = None
        self.remote_address = None
        self.headers = {}
        self.answering = answering
        self.pings: list[bytes] = []
        self.aborted = 0
        self._pong: PongHandler | None = None
        self._closed: ClosedInfo | None = None

    async def send(self, message: Message) -> None:
        raise AssertionError("not used")

    async def recv(self) -> Message:
        raise AssertionError("not used")

    async def ping(self, payload: bytes) -> None:
        if self._closed is not None:
            raise TransportClosed(self._closed)
        self.pings.append(payload)
        if self.answering and self._pong is not None:
            self._pong(payload, 0.001)

    def on_pong(self, handler: PongHandler) -> None:
        self._pong = handler

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        raise AssertionError("not used")

    def abort(self) -> None:
        self.aborted += 1
        self._closed = ClosedInfo(1006, "", clean=False)

    async def wait_closed(self) -> ClosedInfo:
        raise AssertionError("not used")

    @property
    def closed(self) -> ClosedInfo | None:
        return self._closed


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``time()`` and ``call_at()`` of an event loop, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._order = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> _Handle:
        handle = _Handle()
        self._order += 1
        heapq.heappush(
            self._timers, (when, self._order, handle, functools.partial(callback, *args))
        )
        return handle

    @property
    def armed(self) -> int:
        return sum(1 for *_, handle, _cb in self._timers if not handle.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in order; let ping tasks run in between."""
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, handle, callback = heapq.heappop(self._timers)
            self.now = when
            if not handle.cancelled:
                callback()
            for _ in range(5):
                await asyncio.sleep(0)
        self.now = target


def _timer(
    transport: PingTransport, config: Heartbeat, clock: FakeClock, on_dead: Callable[[], None]
) -> HeartbeatTimer:
    loop: Any = clock
    return HeartbeatTimer(transport, config, on_dead=on_dead, loop=loop)


async def test_timer_culls_a_silent_peer_at_interval_plus_timeout() -> None:
    """No pong: one ping at the interval, the abort exactly `timeout` later, on_dead first."""
    clock = FakeClock()
    transport = PingTransport(answering=False)
    dead: list[float] = []
    timer = _timer(transport, Heartbeat(15.0, 10.0), clock, lambda: dead.append(clock.now))
    timer.start()
    await clock.advance(14.9)
    assert transport.pings == []
    assert transport.aborted == 0
    await clock.advance(0.1)
    assert len(transport.pings) == 1
    await clock.advance(9.9)
    assert transport.aborted == 0
    await clock.advance(0.1)
    assert dead == [1025.0]
    assert transport.aborted == 1
    assert timer.dead
    assert clock.armed == 0


async def test_timer_keeps_an_answering_peer() -> None:
    """Pongs come back: a ping every interval, never an abort, one timer armed at a time."""
    clock = FakeClock()
    transport = PingTransport(answering=True)
    timer = _timer(transport, Heartbeat(15.0, 10.0), clock, lambda: None)
    timer.start()
    for _ in range(10):
        await clock.advance(15.0)
        assert clock.armed == 1
    assert len(transport.pings) == 10
    assert transport.aborted == 0
    assert not timer.dead


async def test_stopped_timer_does_nothing() -> None:
    """stop() disarms: no ping and no abort afterwards."""
    clock = FakeClock()
    transport = PingTransport(answering=False)
    timer = _timer(transport, Heartbeat(1.0, 1.0), clock, lambda: None)
    timer.start()
    timer.stop()
    await clock.advance(100.0)
    assert transport.pings == []
    assert transport.aborted == 0


async def test_disabled_heartbeat_arms_no_timer() -> None:
    """Heartbeat(None, None): start() arms nothing."""
    clock = FakeClock()
    timer = _timer(PingTransport(answering=False), Heartbeat(None, None), clock, lambda: None)
    timer.start()
    assert clock.armed == 0


def test_timer_on_the_running_loop_culls_a_silent_peer() -> None:
    """The default clock is the running loop's: a silent peer is aborted at interval + timeout."""

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        transport = PingTransport(answering=False)
        culled: asyncio.Future[float] = loop.create_future()
        timer = HeartbeatTimer(
            transport, Heartbeat(15.0, 10.0), on_dead=lambda: culled.set_result(loop.time())
        )
        start = loop.time()
        timer.start()
        at = await asyncio.wait_for(culled, 60)
        assert transport.aborted == 1
        return at - start

    assert run_virtual(scenario()) == pytest.approx(25.0)  # virtual time: no real wait


async def test_each_ping_calls_on_ping() -> None:
    """on_ping runs with every ping sent (the server reads the connection for its pong)."""
    clock = FakeClock()
    transport = PingTransport(answering=True)
    timer = _timer(transport, Heartbeat(15.0, 10.0), clock, lambda: None)
    calls: list[float] = []
    timer.on_ping = lambda: calls.append(clock.now)
    timer.start()
    await clock.advance(30.0)
    assert calls == [1015.0, 1030.0]
    assert len(transport.pings) == 2


async def test_timer_spares_a_peer_whose_pong_waits_behind_a_backlog() -> None:
    """While the handler takes messages from a full inbox, no abort; once it stops, the cull."""
    clock = FakeClock()
    transport = PingTransport(answering=False)
    dead: list[float] = []
    timer = _timer(transport, Heartbeat(15.0, 10.0), clock, lambda: dead.append(clock.now))
    taken = [0]
    timer.reading = lambda: Reading(taken=taken[0], held=1, full=True)
    timer.start()
    for _ in range(6):  # the handler takes a message every 5 s: 30 s of grace
        await clock.advance(5.0)
        taken[0] += 1
    assert transport.aborted == 0
    await clock.advance(25.0)  # it takes nothing more
    assert transport.aborted == 1
    assert timer.dead


async def test_timer_aborts_a_closed_connection_that_does_not_finish() -> None:
    """The engine saw the end (the peer's FIN) but the connection never finished: what it
    still had to send could not leave over a path dead in our direction. Before, the
    timer returned for good, and the connection and its session stayed until the kernel
    gave up (a fault hunt: CLOSE-WAIT with 0.57 MB unsent after 75 s). Now: one timeout
    of grace, then abort."""
    clock = FakeClock()
    transport = PingTransport(answering=True)
    timer = _timer(transport, Heartbeat(1.0, 2.0), clock, lambda: None)
    timer.start()
    await clock.advance(1.0)  # a ping, answered
    transport._closed = ClosedInfo(1006, "", clean=False)  # EOF: the engine is closed...
    await clock.advance(1.0)  # ...and the timer finds it so: a grace of one timeout
    assert transport.aborted == 0
    await clock.advance(1.9)
    assert transport.aborted == 0
    await clock.advance(0.1)
    assert transport.aborted == 1
    assert not timer.dead  # (not a missing pong: no on_dead)


async def test_a_closed_connection_that_finishes_is_not_aborted() -> None:
    """A healthy close finishes within the grace: stop() (the connection's end) disarms."""
    clock = FakeClock()
    transport = PingTransport(answering=True)
    timer = _timer(transport, Heartbeat(1.0, 2.0), clock, lambda: None)
    timer.start()
    transport._closed = ClosedInfo(1000, "", clean=True)
    await clock.advance(1.0)
    timer.stop()  # connection_lost came
    await clock.advance(10.0)
    assert transport.aborted == 0
