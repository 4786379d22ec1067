"""Replay of messages sent while the client was away, on every store, over real sockets.

The handler aborts its connection (the client sees 1006) and keeps sending while
the client is away; the client resumes by itself. The resume's claim bumps the
session's generation while the session's batch writes under the old one may still
be in flight: that race must not end the resumed session (4901, the rest of the
messages never sent) on stores whose writes really await (SQLite, Redis).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.support.redis import RedisServer

import tether
from tether.asyncio.resume_server import TetherV1ServerLayer
from tether.asyncio.session import Session
from tether.backoff import BackoffConfig
from tether.events import Resumed

pytestmark = pytest.mark.integration

#: Messages the handler sends while the client is away (as in benchmarks/resume.py).
COUNT = 1000
#: Drop-and-replay rounds per store: the race is timing-dependent, so one round may miss it.
ROUNDS = 3
#: Seconds one round may take (connect, drop, reconnect, replay of COUNT messages).
ROUND_BOUND_S = 10.0
#: Quick reconnects: the test measures correctness, not the production delays.
FAST = BackoffConfig(base=0.05, cap=0.2, restart_window=(0.05, 0.2), stability_period=0.5)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: memory, a SQLite file, or a private redis-server (``redis_server``)."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    # Sync on purpose: an async fixture cannot request another one by name.
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


async def drop_and_send(session: Session) -> None:
    """On ``drop``: abort the connection (1006), then send m0..m{COUNT-1} and ``end``."""
    async for message in session:
        if message == "drop":
            transport = session.transport
            assert transport is not None
            transport.abort()
            for index in range(COUNT):
                await session.send(f"m{index}")
            await session.send("end")


async def one_round(port: int) -> tuple[list[str], list[Resumed]]:
    """Connect, ask for the drop, read until ``end``; return the messages and Resumed events."""
    conn = tether.connect(f"ws://127.0.0.1:{port}/", heartbeat=None, backoff=FAST)
    resumed: list[Resumed] = []

    async def watch() -> None:
        async for event in conn.events():
            if isinstance(event, Resumed):
                resumed.append(event)

    watcher = asyncio.ensure_future(watch())
    received: list[str] = []
    try:
        async with conn:
            await conn.send("drop")
            while not received or received[-1] != "end":
                message = await asyncio.wait_for(conn.recv(), ROUND_BOUND_S)
                assert isinstance(message, str)
                received.append(message)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return received, resumed


@pytest.mark.timeout(60)
async def test_messages_sent_while_detached_are_all_replayed_once_in_order(store_url: str) -> None:
    """1,000 messages sent while the client is away arrive once, in order, then ``end``."""
    server = tether.serve(
        drop_and_send,
        "127.0.0.1",
        0,
        heartbeat=None,
        layer=TetherV1ServerLayer(store=store_url),
    )
    await server.start()
    try:
        for _ in range(ROUNDS):
            received, resumed = await one_round(server.port)
            assert received == [f"m{index}" for index in range(COUNT)] + ["end"]
            assert len(resumed) >= 1
    finally:
        await server.shutdown()
