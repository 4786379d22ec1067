"""The :class:`~tether.asyncio.engine.Transport` implemented with ``websockets``.

This is the only module that imports ``websockets`` for per-connection I/O
(``client.py`` and ``server.py`` use its handshake helpers). Engine exceptions
are translated here and chained with ``from``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from ..closecodes import CloseCode
from .engine import ClosedInfo, Message, PongHandler, Transport, TransportClosed

__all__ = ["WebsocketsTransport", "closed_info"]


def closed_info(connection: Connection) -> ClosedInfo:
    """Read how a websockets connection ended.

    ``clean`` is True exactly when the peer's Close frame arrived; without it the
    code is 1006 (RFC 6455 §7.1.5), whatever we sent.
    """
    protocol = connection.protocol
    rcvd = protocol.close_rcvd
    sent = protocol.close_sent
    sent_code = int(sent.code) if sent is not None else None
    if rcvd is None:
        return ClosedInfo(int(CloseCode.ABNORMAL_CLOSURE), "", clean=False, sent_code=sent_code)
    return ClosedInfo(int(rcvd.code), rcvd.reason, clean=True, sent_code=sent_code)


class WebsocketsTransport(Transport):
    """Wraps a ``websockets.asyncio`` connection (client or server side).

    Args:
        connection: an open websockets connection whose keepalive is disabled
            (``ping_interval=None``): tether drives pings from its own core.
    """

    def __init__(self, connection: Connection) -> None:
        self._ws = connection
        self._pong_handler: PongHandler | None = None
        self._ping_tasks: set[asyncio.Task[None]] = set()
        self.subprotocol = connection.subprotocol
        address: Any = connection.remote_address
        self.remote_address = tuple(address) if address is not None else None
        self.headers = {}
        response = getattr(connection, "response", None)
        if response is not None:
            self.headers = {k.lower(): v for k, v in response.headers.raw_items()}

    @property
    def connection(self) -> Connection:
        """The wrapped websockets connection."""
        return self._ws

    async def send(self, message: Message) -> None:
        try:
            await self._ws.send(message)
        except WsConnectionClosed as exc:
            raise TransportClosed(closed_info(self._ws)) from exc

    async def recv(self) -> Message:
        try:
            return await self._ws.recv()
        except WsConnectionClosed as exc:
            raise TransportClosed(closed_info(self._ws)) from exc

    async def ping(self, payload: bytes) -> None:
        try:
            waiter = await self._ws.ping(payload)
        except WsConnectionClosed as exc:
            raise TransportClosed(closed_info(self._ws)) from exc
        task = asyncio.ensure_future(self._await_pong(payload, waiter))
        self._ping_tasks.add(task)
        task.add_done_callback(self._ping_tasks.discard)

    async def _await_pong(self, payload: bytes, waiter: Any) -> None:
        try:
            latency = await waiter
        except (WsConnectionClosed, asyncio.CancelledError):
            return
        if self._pong_handler is not None:
            self._pong_handler(payload, float(latency))

    def on_pong(self, handler: PongHandler) -> None:
        self._pong_handler = handler

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        await self._ws.close(code, reason)
        return closed_info(self._ws)

    def abort(self) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def wait_closed(self) -> ClosedInfo:
        await self._ws.wait_closed()
        return closed_info(self._ws)

    @property
    def closed(self) -> ClosedInfo | None:
        if self._ws.protocol.state.name != "CLOSED":
            return None
        return closed_info(self._ws)
