"""permessage-deflate (RFC 7692): off by default, negotiated with ``compression="deflate"``.

docs/server.md and docs/client.md: ``compression`` defaults to None (off); ``"deflate"``
offers permessage-deflate. Over loopback, with ``tether.serve``, ``tether.connect`` and a
raw ``websockets`` client (which offers permessage-deflate by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.extensions.permessage_deflate import PerMessageDeflate

import tether
from tether.asyncio.websockets_engine import WebsocketsTransport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

NO_PING = tether.Heartbeat(interval=None, timeout=None)
#: Compressible, so a negotiated-but-broken deflate would garble it.
MESSAGE = "tether compresses this " * 200


def _deflate(extensions: object) -> bool:
    return any(isinstance(e, PerMessageDeflate) for e in cast("list[object]", extensions))


def _echo_recording(
    negotiated: list[bool], offered: list[str | None]
) -> Callable[[tether.Session], Awaitable[None]]:
    """An echo handler that records what the client offered and what was negotiated."""

    async def handler(session: tether.Session) -> None:
        offered.append(session.request.headers.get("sec-websocket-extensions"))
        transport = session.transport
        assert isinstance(transport, WebsocketsTransport)
        negotiated.append(_deflate(transport.connection.protocol.extensions))
        async for message in session:
            await session.send(message)

    return handler


async def test_server_with_deflate_negotiates_it_with_a_websockets_client() -> None:
    """``serve(compression="deflate")`` accepts permessage-deflate; messages round-trip."""
    async with (
        tether.serve(
            _echo_recording([], []),
            "127.0.0.1",
            0,
            heartbeat=NO_PING,
            drain_window=0.0,
            compression="deflate",
        ) as server,
        ws_connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None, open_timeout=5) as ws,
    ):
        assert ws.response is not None
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert header is not None
        assert header.startswith("permessage-deflate")
        assert _deflate(ws.protocol.extensions)
        await ws.send(MESSAGE)
        assert await asyncio.wait_for(ws.recv(), 10) == MESSAGE


async def test_server_default_declines_deflate() -> None:
    """By default the server does not accept the permessage-deflate a client offers."""
    async with (
        tether.serve(
            _echo_recording([], []), "127.0.0.1", 0, heartbeat=NO_PING, drain_window=0.0
        ) as server,
        ws_connect(
            f"ws://127.0.0.1:{server.port}/",
            ping_interval=None,
            open_timeout=5,
            compression="deflate",
        ) as ws,
    ):
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert not _deflate(ws.protocol.extensions)
        await ws.send(MESSAGE)
        assert await asyncio.wait_for(ws.recv(), 10) == MESSAGE


async def test_tether_client_and_server_with_deflate_negotiate_it() -> None:
    """``connect(compression="deflate")`` offers it to a deflate server; messages round-trip."""
    negotiated: list[bool] = []
    offered: list[str | None] = []
    async with (
        tether.serve(
            _echo_recording(negotiated, offered),
            "127.0.0.1",
            0,
            heartbeat=NO_PING,
            drain_window=0.0,
            compression="deflate",
        ) as server,
        tether.connect(
            f"ws://127.0.0.1:{server.port}/",
            heartbeat=NO_PING,
            open_timeout=5,
            close_timeout=5,
            compression="deflate",
        ) as conn,
    ):
        await conn.send(MESSAGE)
        assert await asyncio.wait_for(conn.recv(), 10) == MESSAGE
    assert len(offered) == 1
    assert offered[0] is not None
    assert "permessage-deflate" in offered[0]
    assert negotiated == [True]


async def test_tether_client_default_offers_no_deflate() -> None:
    """By default ``connect()`` offers no extension, even to a server that would accept one."""
    offered: list[str | None] = []

    async def echo(connection: ServerConnection) -> None:
        assert connection.request is not None
        offered.append(connection.request.headers.get("Sec-WebSocket-Extensions"))
        async for message in connection:
            await connection.send(message)

    async with (
        ws_serve(echo, "127.0.0.1", 0, ping_interval=None, compression="deflate") as server,
    ):
        port = server.sockets[0].getsockname()[1]
        async with tether.connect(
            f"ws://127.0.0.1:{port}/",
            heartbeat=NO_PING,
            resume=False,
            open_timeout=5,
            close_timeout=5,
        ) as conn:
            await conn.send(MESSAGE)
            assert await asyncio.wait_for(conn.recv(), 10) == MESSAGE
    assert offered == [None]
