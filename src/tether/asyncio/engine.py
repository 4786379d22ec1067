"""The small interface between tether's asyncio adapter and a WebSocket engine.

DESIGN.md §10: the adapter talks to the engine only through :class:`Transport`:
send a whole message, send a ping, close with (code, reason), abort; and learn of
a whole message, a pong, and "closed" with the received code or none (1006).
``websockets_engine.py`` implements it with ``websockets``; a picows transport can
implement the same class later and pass the same conformance tests.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..heartbeat import Transfer

__all__ = [
    "CloseHandler",
    "ClosedInfo",
    "Message",
    "PongHandler",
    "Transport",
    "TransportClosed",
    "Writer",
    "joined_message",
]

Message = str | bytes

#: Called with (payload, round-trip seconds) when a pong answers one of our pings.
PongHandler = Callable[[bytes, float], None]

#: Called with how the connection ended, once it has.
CloseHandler = Callable[["ClosedInfo"], None]


class Writer(Protocol):
    """A synchronous write of one whole message, if the engine can take it at once.

    True: written (accepted by the transport, as after ``send`` returned); False:
    nothing written, await ``send``. A ``str`` is sent as text, ``bytes`` as binary,
    or as text when ``text`` is True (``message`` is then the text's UTF-8, encoded by
    the caller). With ``header``, the message is ``header + message``, joined by the
    engine where it frames it (a text message's header is ASCII).
    """

    def __call__(self, message: Message, header: bytes = ..., text: bool = ...) -> bool: ...


def joined_message(header: bytes, message: Message) -> Message:
    """The one message a :class:`Writer` sends for ``message`` with ``header``, joined.

    For a message whose header was kept apart that must go the usual way after all
    (``Transport.send``): ``header + message``, as text (the header is ASCII) or binary.
    """
    if isinstance(message, str):
        return header.decode("ascii") + message
    return header + message


#: Tasks of the default :meth:`Transport.add_close_callback` (the loop holds tasks weakly).
_close_watchers: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class ClosedInfo:
    """How a connection ended, as seen locally.

    Attributes:
        code: the code received in the peer's Close frame; 1005 if the frame had no
            code; 1006 if no Close frame arrived (RFC 6455 §7.1.5).
        reason: the reason received with the code ("" if none).
        clean: True exactly when a Close frame was received from the peer.
        sent_code: the code we sent in our Close frame, if we sent one.
    """

    code: int
    reason: str
    clean: bool
    sent_code: int | None = None


class TransportClosed(Exception):
    """Raised by :meth:`Transport.recv` and :meth:`Transport.send` once the connection is closed.

    Internal to the adapter: user code sees :class:`tether.ConnectionClosed` or events.
    """

    def __init__(self, info: ClosedInfo) -> None:
        super().__init__(f"transport closed with {info.code}")
        self.info = info


class Transport(abc.ABC):
    """One open WebSocket connection, as the adapter needs it."""

    # Empty, so that an engine may give its transports __slots__ (one per connection).
    __slots__ = ()

    #: The negotiated subprotocol, if any.
    subprotocol: str | None
    #: The peer's address as (host, port, ...), if known.
    remote_address: tuple[object, ...] | None
    #: Response/request headers of interest (e.g. ``server``), lower-case names.
    headers: dict[str, str]

    @abc.abstractmethod
    async def send(self, message: Message) -> None:
        """Send one whole message: ``str`` as text, ``bytes`` as binary."""

    @abc.abstractmethod
    async def recv(self) -> Message:
        """Return the next whole message; raise :class:`TransportClosed` when closed."""

    def recv_ready(self) -> Message | None:
        """The next whole message if the engine holds it already, taken at once; else None.

        The receive loops' way round :meth:`recv`'s coroutine for a message that has
        arrived: None only means "await :meth:`recv`" (nothing held, the end, or
        anything the engine leaves to ``recv``). A message it returns must be what
        :meth:`recv` would have returned: a transport that overrides ``recv`` (to filter
        or fail messages) overrides this too. This default holds nothing.
        """
        return None

    @abc.abstractmethod
    async def ping(self, payload: bytes) -> None:
        """Send a ping frame; its pong is reported to the pong handler."""

    @abc.abstractmethod
    def on_pong(self, handler: PongHandler) -> None:
        """Register the function told of pongs that answer our pings."""

    @abc.abstractmethod
    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        """Run the closing handshake (bounded by the engine's close timeout)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the TCP connection at once, without a Close frame."""

    @abc.abstractmethod
    async def wait_closed(self) -> ClosedInfo:
        """Wait until the connection is closed and say how."""

    @property
    @abc.abstractmethod
    def closed(self) -> ClosedInfo | None:
        """How the connection ended, or None while it is open."""

    @property
    def peer_closed_first(self) -> bool | None:
        """Who started the closing handshake: the peer (True), this side (False).

        None while no Close frame went either way, or when the engine cannot tell.
        """
        return None

    def transfer(self) -> Transfer | None:
        """What the connection's bytes are doing (acknowledged, received), if known.

        Asked by the heartbeat when a ping goes out and when its pong is overdue (see
        :class:`~tether.heartbeat.Transfer`). This default knows nothing: None.
        """
        return None

    def add_close_callback(self, callback: CloseHandler) -> None:
        """Call ``callback(info)`` from the event loop once the connection has closed.

        Called soon (not at once) if it has closed already. This default runs a task
        that awaits :meth:`wait_closed`; an engine that can be told of the end without
        a task per connection overrides it (the server calls it for every connection).
        """

        async def watch() -> None:
            callback(await self.wait_closed())

        task = asyncio.ensure_future(watch())
        _close_watchers.add(task)
        task.add_done_callback(_close_watchers.discard)
