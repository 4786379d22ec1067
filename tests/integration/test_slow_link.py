"""A large message over a slow path: the heartbeat must not take it for a dead link.

The ping of the side that sends waits behind its own data, and the pong of the other
side behind what it sends back; both arrive late while the link works. tether reads
the kernel's byte counts (``Transport.transfer()``) when a pong is overdue. Before,
a message larger than rate x (interval + timeout) never arrived: each connection
was failed as 1006 and the resume sent the message again from the start (a fault
run: 8 connections, 8 x 1006 in 60 s for 900 kB at 300 kB/s).
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from tests.support.events import EventRecorder
from tests.support.slowlink import SlowLink

import tether
from tether import Disconnected, Heartbeat

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="the byte counts are Linux's TCP_INFO"),
]

#: interval + timeout = 1 s: the message below takes ~2.5 s each way at RATE.
BEAT = Heartbeat(interval=0.5, timeout=0.5)
RATE = 100_000  # bytes/s
SIZE = 250_000


@pytest.mark.timeout(30)
@pytest.mark.parametrize("resume", [False, True], ids=["plain", "tether.v1"])
async def test_a_large_echo_over_a_slow_link_arrives_without_a_disconnect(resume: bool) -> None:
    """250 kB each way at 100 kB/s with a 0.5/0.5 s heartbeat on both sides."""

    async def echo(session: tether.Session) -> None:
        async for message in session:
            await session.send(message)

    payload = os.urandom(SIZE)
    async with (
        tether.serve(echo, "127.0.0.1", 0, heartbeat=BEAT, store="memory") as server,
        SlowLink(server.port, rate=RATE) as link,
    ):
        conn = tether.connect(f"ws://127.0.0.1:{link.port}/", heartbeat=BEAT, resume=resume)
        recorder = EventRecorder(conn)
        async with conn:
            await conn.send(payload)
            echoed = await asyncio.wait_for(conn.recv(), 15)  # (before: never, 1006 in a loop)
        assert echoed == payload
    # One connection for the whole exchange, ended by the close (no 1006 on the way).
    assert recorder.count(tether.Connected) == 1
    assert [event.code for event in recorder.of(Disconnected)] in ([], [1000])
