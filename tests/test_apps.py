"""The ready-made apps of ``tether serve``: echo, broadcast, ticker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

import tether
from tether.asyncio.apps import Broadcast, Ticker, echo, make_app

pytestmark = pytest.mark.timeout(15)


@pytest.fixture
async def ticker_port() -> AsyncIterator[int]:
    """A ticker server sending every 20 ms, on a free loopback port."""
    server = tether.serve(Ticker(20), "127.0.0.1", 0, heartbeat=None, drain_window=0.0)
    async with server:
        yield server.port


@pytest.mark.integration
async def test_ticker_numbers_messages_consecutively(ticker_port: int) -> None:
    """Ticker messages of one session carry seq 1, 2, 3... and consecutive ticks."""
    async with connect(f"ws://127.0.0.1:{ticker_port}/", ping_interval=None) as ws:
        messages = [json.loads(await ws.recv()) for _ in range(5)]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5]
    ticks = [m["tick"] for m in messages]
    assert ticks == list(range(ticks[0], ticks[0] + 5))


@pytest.mark.integration
async def test_ticker_ticks_are_wall_clock_aligned(ticker_port: int) -> None:
    """Two sessions receive the same tick numbers at the same time (a shared clock)."""
    async with (
        connect(f"ws://127.0.0.1:{ticker_port}/", ping_interval=None) as first,
        connect(f"ws://127.0.0.1:{ticker_port}/", ping_interval=None) as second,
    ):
        a = [json.loads(await first.recv())["tick"] for _ in range(4)]
        b = [json.loads(await second.recv())["tick"] for _ in range(4)]
    assert set(a[-2:]) & set(b)


@pytest.mark.integration
async def test_ticker_answers_client_messages_with_its_node() -> None:
    """A text message comes back as {"echo": text, "node": id}; ticks carry the node too."""
    server = tether.serve(Ticker(20, node="n1"), "127.0.0.1", 0, heartbeat=None, drain_window=0.0)
    async with server, connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None) as ws:
        await ws.send("hello")
        messages = [json.loads(await ws.recv()) for _ in range(6)]
    assert {"echo": "hello", "node": "n1"} in messages
    assert all(m["node"] == "n1" for m in messages)


@pytest.mark.integration
async def test_broadcast_reaches_every_client() -> None:
    """A message from one client reaches all connected clients, the sender included."""
    app = Broadcast()
    async with tether.serve(app, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url, ping_interval=None) as a, connect(url, ping_interval=None) as b:
            for _ in range(100):  # bounded: both sessions register within a few loop turns
                if len(app.sessions) == 2:
                    break
                await asyncio.sleep(0.01)
            await a.send("to all")
            assert await asyncio.wait_for(a.recv(), 5) == "to all"
            assert await asyncio.wait_for(b.recv(), 5) == "to all"


def test_make_app_by_name() -> None:
    """make_app builds each named app."""
    assert make_app("echo") is echo
    assert isinstance(make_app("broadcast"), Broadcast)
    ticker = make_app("ticker", ticker_interval_ms=250)
    assert isinstance(ticker, Ticker)
    assert ticker.interval_ms == 250


def test_make_app_unknown_name() -> None:
    """An unknown app name raises ConfigurationError naming the choices."""
    with pytest.raises(tether.ConfigurationError, match="echo, broadcast, ticker"):
        make_app("chat")


def test_ticker_interval_must_be_positive() -> None:
    """A ticker interval of 0 ms is refused."""
    with pytest.raises(tether.ConfigurationError):
        Ticker(0)
