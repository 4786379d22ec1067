"""Drives a :class:`~tether.heartbeat.HeartbeatMachine` on one connection.

The machine decides (time as an argument); this loop only sleeps until its next
deadline, sends the ping it asks for, and aborts the connection when it declares
the link dead. Aborting drops TCP without a Close frame, so the connection is
reported locally as 1006 (RFC 6455 §7.1.5), which is what a dead link is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..heartbeat import Heartbeat, HeartbeatMachine, TimerAction
from .engine import Transport, TransportClosed

__all__ = ["keep_alive"]


async def keep_alive(
    transport: Transport,
    config: Heartbeat,
    *,
    on_dead: Callable[[], None] | None = None,
) -> bool:
    """Ping ``transport`` per ``config`` until it closes or stops answering.

    Args:
        transport: an open connection.
        config: the heartbeat settings; with ``interval=None`` this returns at once.
        on_dead: called just before the connection is aborted for a missing pong.

    Returns:
        True if the link was declared dead (and aborted), False if the heartbeat
        ended because the connection closed or the heartbeat is disabled.
    """
    if not config.enabled:
        return False
    loop = asyncio.get_running_loop()
    machine = HeartbeatMachine(config, loop.time())

    def pong(payload: bytes, _rtt: float) -> None:
        machine.pong_received(loop.time(), payload)

    transport.on_pong(pong)
    while transport.closed is None:
        deadline = machine.next_deadline()
        if deadline is None:
            return False
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        result = machine.handle_timer(loop.time())
        if result is None:
            continue
        if result.action is TimerAction.DEAD:
            if transport.closed is not None:
                return False
            if on_dead is not None:
                on_dead()
            transport.abort()
            return True
        try:
            # A blackholed link can fill the send buffer so that even writing the ping
            # waits; bound it so the pong deadline is still checked on time.
            bound = config.timeout if config.timeout is not None else config.interval
            await asyncio.wait_for(transport.ping(result.payload), bound)
        except TransportClosed:
            return False
        except asyncio.TimeoutError:
            continue
    return False
