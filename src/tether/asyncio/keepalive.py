"""Drives a :class:`~tether.heartbeat.HeartbeatMachine` on one connection.

The machine decides (time as an argument); the driver only waits until its next
deadline, sends the ping it asks for, and aborts the connection when it declares
the link dead. :class:`HeartbeatTimer` is one ``loop.call_at`` timer per connection
(no task per idle connection). Aborting drops TCP without a
Close frame, so the connection is reported locally as 1006 (RFC 6455 §7.1.5),
which is what a dead link is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..heartbeat import Heartbeat, HeartbeatMachine, Reading, TimerAction
from .clock import timer_now
from .engine import Transport, TransportClosed

__all__ = ["HeartbeatTimer"]


class HeartbeatTimer:
    """The heartbeat of one connection as a single event-loop timer.

    The timer fires at the machine's next deadline; sending a ping (which may have to
    wait for room in the send buffer) runs in a short task of its own, so a slow
    write never delays the pong deadline. At most one ping write is in flight.

    Args:
        transport: an open connection.
        config: the heartbeat settings; with ``interval=None`` :meth:`start` does nothing.
        on_dead: called just before the connection is aborted for a missing pong.
        loop: what gives the time and runs the timer (the running loop by default;
            tests pass a fake clock).
    """

    __slots__ = (
        "_closed_at_fire",
        "_handle",
        "_loop",
        "_machine",
        "_on_dead",
        "_ping",
        "_transport",
        "dead",
        "on_ping",
        "reading",
    )

    def __init__(
        self,
        transport: Transport,
        config: Heartbeat,
        *,
        on_dead: Callable[[], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._transport = transport
        self._on_dead = on_dead
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._machine = HeartbeatMachine(config, self._loop.time())
        self._handle: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        #: True once the link was declared dead (and the connection aborted).
        self.dead = False
        #: The timer found the engine closed while the connection had not finished.
        self._closed_at_fire = False
        #: Called when a ping is sent: whoever must read the connection for its pong.
        self.on_ping: Callable[[], None] | None = None
        #: How the handler's reading stands: a pong overdue while a full buffer holds
        #: reading back may be waiting behind it (HeartbeatMachine.handle_timer).
        self.reading: Callable[[], Reading] | None = None

    @property
    def config(self) -> Heartbeat:
        """The heartbeat settings."""
        return self._machine.config

    def start(self) -> None:
        """Listen for pongs and arm the timer (nothing when the heartbeat is disabled)."""
        if not self._machine.config.enabled:
            return
        self._transport.on_pong(self._pong)
        self._arm()

    def stop(self) -> None:
        """Disarm the timer and cancel a ping write in flight (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None

    def _pong(self, payload: bytes, _rtt: float) -> None:
        self._machine.pong_received(self._loop.time(), payload)

    def _arm(self) -> None:
        deadline = self._machine.next_deadline()
        self._handle = (
            None if deadline is None else self._loop.call_at(deadline, self._fire, deadline)
        )

    def _fire(self, when: float) -> None:
        self._handle = None
        transport = self._transport
        if transport.closed is not None:
            self._finish_closed(transport)
            return
        reading = self.reading
        result = self._machine.handle_timer(
            timer_now(self._loop, when),
            None if reading is None else reading(),
            transport.transfer(),
        )
        if result is not None and result.action is TimerAction.DEAD:
            self.dead = True
            self.stop()
            if self._on_dead is not None:
                self._on_dead()
            transport.abort()
            return
        if result is not None and self._ping is None:
            self._ping = asyncio.ensure_future(self._send_ping(result.payload))
            if self.on_ping is not None:
                self.on_ping()
        self._arm()

    def _finish_closed(self, transport: Transport) -> None:
        """The engine saw the end, and the connection has not finished since: abort it.

        The heartbeat stops when the connection has finished (stop()). Still running,
        it means the TCP connection waits to flush what it holds: over a path that
        died in our direction after the peer closed its side (its FIN arrived), that
        never happens, and the connection, its buffers and its session stayed until
        the kernel gave up retransmitting, minutes later. Given one timeout more
        first: a healthy close flushes in milliseconds.
        """
        if self._closed_at_fire:
            transport.abort()
            return
        self._closed_at_fire = True
        config = self._machine.config
        grace = config.timeout if config.timeout is not None else config.interval
        assert grace is not None  # (a timer runs only when the heartbeat is enabled)
        when = self._loop.time() + grace
        self._handle = self._loop.call_at(when, self._fire, when)

    async def _send_ping(self, payload: bytes) -> None:
        try:
            await self._transport.ping(payload)
        except TransportClosed:
            pass
        finally:
            self._ping = None
