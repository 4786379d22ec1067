"""Server-side sessions: what a handler talks to, kept apart from the connection under it.

A :class:`Session` owns the user-facing side: an inbox of received messages, ``send``,
``close`` and how the session ended. A connection (a
:class:`~tether.asyncio.engine.Transport`) is *attached* to it; messages read from
the connection pass through a :class:`ServerLayer` into the inbox, and messages the
handler sends pass through the same layer onto the connection.

The layer is the seam where a session protocol runs. :class:`PlainServerLayer` (plain
WebSocket, what a browser's ``new WebSocket`` speaks) makes one session per
connection, passes messages through unchanged, and ends the session when its
connection ends. A tether.v1 layer can run its hello/welcome handshake in
:meth:`ServerLayer.open`, number and acknowledge messages in
:meth:`ServerLayer.send` / :meth:`ServerLayer.received`, and keep a session alive
after its connection is lost (:meth:`ServerLayer.connection_lost` returns False) so
that a later connection can be attached to it.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..closecodes import validate_send
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from ..knowledge import summary
from .engine import ClosedInfo, Message, Transport, TransportClosed

__all__ = ["PlainServerLayer", "RequestInfo", "ServerLayer", "Session", "closed_error"]

#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes; 2 carry the code.
MAX_REASON_BYTES = 123

#: Close codes after which a session counts as ended normally (RFC 6455 §7.4.1).
_NORMAL_CODES = frozenset({1000, 1001})


@dataclass(frozen=True)
class RequestInfo:
    """What the opening handshake told us about the client.

    Attributes:
        path: the request target, e.g. ``"/feed?x=1"``.
        headers: request headers, names lower-cased (repeated headers joined by ", ").
        remote_address: the peer's (host, port, ...), if known.
        subprotocol: the negotiated subprotocol, if any.
    """

    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_address: tuple[object, ...] | None = None
    subprotocol: str | None = None


def closed_error(info: ClosedInfo) -> ConnectionClosed:
    """The exception that tells the application its session ended with ``info``."""
    cls = ConnectionClosedOK if info.code in _NORMAL_CODES else ConnectionClosedError
    return cls(info.code, info.reason, summary(info.code))


class _End:
    """Marks the end of the inbox."""


_END = _End()


class Session:
    """One client's session, as the server's handler sees it.

    Use it like a connection::

        async def handler(session: tether.Session) -> None:
            async for message in session:
                await session.send(message)

    ``async for`` stops when the session ends, whatever the code; :attr:`closed`
    then says how. :meth:`recv` and :meth:`send` raise
    :class:`tether.ConnectionClosedOK` (1000/1001) or
    :class:`tether.ConnectionClosedError` (any other code, 1006 included) once the
    session has ended.

    Sessions are created by the server (through its :class:`ServerLayer`), not by
    applications.

    Args:
        layer: the session layer that carries this session's messages.
        request: what the opening handshake of the first connection said.
        session_id: the session's id; a random URL-safe string by default.
        max_queue: received messages buffered before reading from the connection
            pauses (back-pressure reaches the client through TCP).
    """

    def __init__(
        self,
        layer: ServerLayer,
        request: RequestInfo,
        *,
        session_id: str | None = None,
        max_queue: int = 64,
    ) -> None:
        if max_queue < 1:
            raise ConfigurationError("max_queue must be >= 1")
        self.id = session_id if session_id is not None else secrets.token_urlsafe(12)
        self.request = request
        self._layer = layer
        self._max_queue = max_queue
        self._inbox: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._transport: Transport | None = None
        self._closed: ClosedInfo | None = None
        self._ended = asyncio.Event()

    # -- what handlers use -------------------------------------------------------------------

    @property
    def remote_address(self) -> tuple[object, ...] | None:
        """The client's address as (host, port, ...), from the current connection if any."""
        if self._transport is not None and self._transport.remote_address is not None:
            return self._transport.remote_address
        return self.request.remote_address

    @property
    def path(self) -> str:
        """The request target of the opening handshake, e.g. ``"/feed?x=1"``."""
        return self.request.path

    @property
    def closed(self) -> ClosedInfo | None:
        """How the session ended (code, reason, clean), or None while it is open."""
        return self._closed

    async def send(self, message: Message) -> None:
        """Send one message: ``str`` as a text frame, ``bytes`` as a binary frame.

        Raises:
            ConnectionClosed: the session has ended (or has no connection).
            TypeError: ``message`` is neither ``str`` nor ``bytes``.
        """
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        transport = self._transport
        if self._closed is not None and not self._layer.sends_while_detached:
            raise closed_error(self._closed)
        if transport is None and not self._layer.sends_while_detached:
            raise ConnectionClosedError(None, "the session has no connection")
        try:
            await self._layer.send(self, transport, message)
        except TransportClosed as exc:
            raise closed_error(self._closed or exc.info) from exc

    async def recv(self) -> Message:
        """Return the next message from the client.

        Raises:
            ConnectionClosed: the session ended and every message before the end was read.
        """
        item = await self._inbox.get()
        if isinstance(item, _End):
            self._inbox.put_nowait(item)  # keep the end mark for the next caller
            assert self._closed is not None
            raise closed_error(self._closed)
        if self._inbox.qsize() < self._max_queue:
            self._space.set()
        self._layer.consumed(self)
        return item

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Yield messages until the session ends (with any code)."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    async def close(self, code: int = 1000, reason: str = "") -> ClosedInfo:
        """End the session: close its connection with ``code`` and ``reason``.

        Args:
            code: the close code; checked with :func:`tether.validate_send` for the
                server side, so reserved codes (1005, 1006, 1015, ...) never reach
                the wire.
            reason: at most 123 bytes of UTF-8 (RFC 6455 §5.5: control frames carry
                at most 125 bytes, two of them the code).

        Returns:
            How the session ended (if it had already ended: how it did).

        Raises:
            InvalidCloseCode: ``code`` may not be sent by a server.
            ConfigurationError: ``reason`` is longer than 123 bytes in UTF-8.
        """
        validate_send(code, role="server")
        if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise ConfigurationError(
                f"close reason is {len(reason.encode('utf-8'))} bytes of UTF-8; "
                f"at most {MAX_REASON_BYTES} fit in a Close frame (RFC 6455 §5.5)"
            )
        if self._closed is not None:
            return self._closed
        transport = self._transport
        if transport is None:
            info = ClosedInfo(code, reason, clean=True, sent_code=code)
        else:
            info = await self._layer.close(self, transport, code, reason)
        self.end(info)
        return self._closed or info

    async def wait_closed(self) -> ClosedInfo:
        """Wait until the session has ended and say how."""
        await self._ended.wait()
        assert self._closed is not None
        return self._closed

    # -- what the server and the session layer use ---------------------------------------------

    @property
    def transport(self) -> Transport | None:
        """The connection currently attached, if any."""
        return self._transport

    def attach(self, transport: Transport) -> asyncio.Task[ClosedInfo]:
        """Attach ``transport`` and start moving its messages into the inbox.

        The returned task finishes when the connection has closed, with how it
        closed. The session ends with the same code unless the layer keeps it for
        a later connection (:meth:`ServerLayer.connection_lost`).
        """
        self._transport = transport
        return asyncio.ensure_future(self._pump(transport))

    async def _pump(self, transport: Transport) -> ClosedInfo:
        try:
            while True:
                try:
                    raw = await transport.recv()
                except TransportClosed as exc:
                    info = exc.info
                    break
                for message in await self._layer.received(self, transport, raw):
                    await self._deliver(message)
        finally:
            if self._transport is transport:
                self._transport = None
        if self._layer.connection_lost(self, info):
            self.end(info)
        return info

    async def _deliver(self, message: Message) -> None:
        # Back-pressure: stop reading from the connection while the inbox is full.
        while self._inbox.qsize() >= self._max_queue and self._closed is None:
            self._space.clear()
            await self._space.wait()
        if self._closed is None:
            self._inbox.put_nowait(message)

    def end(self, info: ClosedInfo, *, discard_unread: bool = False) -> None:
        """End the session with ``info`` (idempotent: the first end wins).

        For the server and session layers: the handler's ``recv`` raises and
        ``async for`` stops once the messages already received are read (or at
        once with ``discard_unread``: a session layer that will have them replayed
        elsewhere drops them here). Nothing is sent; use :meth:`close` to end a
        session on the wire.
        """
        if self._closed is not None:
            return
        self._closed = info
        while discard_unread and not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(_END)
        self._space.set()
        self._ended.set()

    def __repr__(self) -> str:
        state = "open" if self._closed is None else f"closed {self._closed.code}"
        return f"<tether.Session {self.id} {state}>"


class ServerLayer(abc.ABC):
    """Turns connections into sessions and carries messages between them.

    Attributes:
        subprotocols: WebSocket subprotocols this layer speaks, most preferred
            first; empty for plain WebSocket.
    """

    subprotocols: Sequence[str] = ()

    #: True when :meth:`send` accepts messages while no connection is attached
    #: (a session layer with a replay buffer); the transport is then None.
    sends_while_detached: bool = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """The server started listening (start background work here)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """The server finished draining (stop background work, release resources)."""

    def process_exiting(self) -> None:  # noqa: B027 - optional hook
        """The drain that follows ends this process (a signal), not just this server object."""

    def consumed(self, session: Session) -> None:  # noqa: B027 - optional hook
        """The handler took one message from ``session`` (``recv`` returned it)."""

    async def finish(self, session: Session) -> None:  # noqa: B027 - optional hook
        """The handler of ``session`` returned: settle what the layer still owes it."""

    async def drain(
        self, session: Session, transport: Transport, code: int, reason: str
    ) -> ClosedInfo:
        """Close ``session``'s connection for a restart or shutdown (the session may live on)."""
        return await self.close(session, transport, code, reason)

    @abc.abstractmethod
    async def open(self, transport: Transport, request: RequestInfo) -> Session:
        """Run the layer's handshake on a new connection and return its session.

        The session may be new or one resumed from an earlier connection. Raising
        :class:`tether.ProtocolError` fails the connection with its ``close_code``.
        """

    async def send(self, session: Session, transport: Transport | None, message: Message) -> None:
        """Put one application message on the connection (encode it as needed).

        ``transport`` is None only for layers with :attr:`sends_while_detached`.
        """
        if transport is None:
            raise ConnectionClosedError(None, "the session has no connection")
        await transport.send(message)

    async def received(
        self, session: Session, transport: Transport, message: Message
    ) -> Sequence[Message]:
        """Decode one received WebSocket message into application messages (0 or more)."""
        return (message,)

    def connection_lost(self, session: Session, info: ClosedInfo) -> bool:
        """The session's connection closed; return True if the session ends with it."""
        return True

    async def close(
        self, session: Session, transport: Transport, code: int, reason: str
    ) -> ClosedInfo:
        """End ``session`` on its current connection with (code, reason)."""
        return await transport.close(code, reason)


class PlainServerLayer(ServerLayer):
    """Plain WebSocket: one session per connection, messages unchanged.

    Args:
        max_queue: inbox size of each session (see :class:`Session`).
    """

    def __init__(self, *, max_queue: int = 64) -> None:
        self.max_queue = max_queue

    async def open(self, transport: Transport, request: RequestInfo) -> Session:
        return Session(self, request, max_queue=self.max_queue)
