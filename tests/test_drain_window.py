"""A drain window the drain could not schedule is refused before the drain starts."""

from __future__ import annotations

import math

import pytest
from websockets.asyncio.client import connect

import tether
from tether.exceptions import ConfigurationError

pytestmark = pytest.mark.timeout(20)


async def _echo(session: tether.Session) -> None:
    async for message in session:
        await session.send(message)


@pytest.mark.parametrize("window", [-1.0, math.inf, math.nan])
def test_serve_refuses_a_drain_window_it_could_not_keep(window: float) -> None:
    with pytest.raises(ConfigurationError, match="drain_window"):
        tether.serve(_echo, "127.0.0.1", 0, drain_window=window)


@pytest.mark.parametrize("window", [-1.0, math.inf, math.nan])
async def test_a_bad_shutdown_window_leaves_the_server_serving(window: float) -> None:
    """(Before, the state turned to draining, the drain's schedule raised, and the
    server stayed draining for good: 503s, no close for anyone, no wait_closed().)"""
    server = tether.serve(_echo, "127.0.0.1", 0, store=None, heartbeat=None)
    await server.start()
    async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        with pytest.raises(ConfigurationError, match="drain_window"):
            await server.shutdown(drain_window=window)
        assert server.state.value == "serving"
        await ws.send("still here")
        assert await ws.recv() == "still here"
        await server.shutdown(drain_window=0.0)
        assert server.state.value == "closed"
        await ws.wait_closed()
        assert ws.close_code == 1001
