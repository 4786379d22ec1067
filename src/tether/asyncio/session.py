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

A session the layer calls plain (:meth:`ServerLayer.is_plain`) skips all that: the
server attaches its connection with :meth:`Session.attach_plain`, and the handler's
``recv`` reads the connection in the handler's own task (no pump task, no inbox).

A layer that :attr:`~ServerLayer.reads_on_demand` (tether.v1) keeps its hooks but
no pump task either: the handler's ``recv`` reads the attached connection through
the layer itself, and a reader task runs only while something must be read that
the handler does not read (:meth:`Session.read_ahead`), handing the reading back
once ``recv`` waits on an empty inbox.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import functools
import inspect
import secrets
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..closecodes import check_reason, validate_send
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from ..heartbeat import Reading
from ..knowledge import summary
from .engine import ClosedInfo, CloseHandler, Message, Transport, TransportClosed

__all__ = ["PlainServerLayer", "RequestInfo", "ServerLayer", "Session", "closed_error"]

#: Default inbox bound of a session in bytes (4 MiB): with the engine's 4-frame queue and
#: the 1 MiB default ``max_size``, a client that sends and never reads costs the server
#: ~10-20 MiB, not ~86 MiB (docs/security.md has the measurements).
DEFAULT_MAX_QUEUE_BYTES = 4 * 2**20

#: Close codes after which a session counts as ended normally (RFC 6455 §7.4.1).
_NORMAL_CODES = frozenset({1000, 1001})


@dataclass(frozen=True)
class RequestInfo:
    """What the opening handshake told us about the client.

    Attributes:
        path: the request target, e.g. ``"/feed?x=1"``.
        headers: request headers (repeated headers joined by ", "); from the server,
            looked up whatever the case of the name, iterated lower-cased.
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


#: The inbox of a session that has none (plain): always empty, never appended to.
_NO_INBOX: collections.deque[Message] = collections.deque(maxlen=0)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


#: Reader tasks of connections no longer attached (the loop holds tasks weakly).
_detached_readers: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _detached_readers.add(task)
    task.add_done_callback(_detached_readers.discard)


class _LinkWatch:
    """The close callback of a connection attached on demand (one small object, no partial)."""

    __slots__ = ("ended", "session", "transport")

    def __init__(
        self, session: Session, transport: Transport, ended: asyncio.Future[ClosedInfo]
    ) -> None:
        self.session = session
        self.transport = transport
        self.ended = ended

    def __call__(self, info: ClosedInfo) -> None:
        self.session._link_closed(self.transport, self.ended, info)


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
        max_queue_bytes: the same bound in bytes (characters for text messages):
            reading pauses while the unread messages hold this much or more, so one
            message of any allowed size still gets in. None: count bound only.

    A plain session attached with :meth:`attach_plain` has no inbox of its own:
    ``recv`` reads the connection in the caller's task, and the engine's buffer
    bounds what is held (``max_queue`` and ``max_queue_bytes`` do not apply).
    """

    # One per connection (plain) or per session (tether.v1) on a server: no __dict__.
    # ``__weakref__`` keeps sessions usable in weak containers, as before.
    __slots__ = (
        "__weakref__",
        "_closed",
        "_discard",
        "_ended",
        "_held",
        "_held_count",
        "_inbox",
        "_inbox_bytes",
        "_keep_reader",
        "_layer",
        "_link_end",
        "_max_queue",
        "_max_queue_bytes",
        "_on_demand",
        "_plain",
        "_read_done",
        "_reader",
        "_reader_task",
        "_reading_on",
        "_taken",
        "_transport",
        "_writer",
        "id",
        "request",
    )

    def __init__(
        self,
        layer: ServerLayer,
        request: RequestInfo,
        *,
        session_id: str | None = None,
        max_queue: int = 64,
        max_queue_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        if max_queue < 1:
            raise ConfigurationError("max_queue must be >= 1")
        if max_queue_bytes is not None and max_queue_bytes < 1:
            raise ConfigurationError("max_queue_bytes must be >= 1 byte or None")
        self.id = session_id if session_id is not None else secrets.token_urlsafe(12)
        self.request = request
        self._layer = layer
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._inbox_bytes = 0
        # Attached with attach(): received, not yet taken. Made when a first message
        # is put in it: a plain session, or one whose handler reads the connection
        # itself, never has one.
        self._inbox: collections.deque[Message] = _NO_INBOX
        # Futures made on demand (an idle session holds none): a handler waiting in
        # recv(), a pump waiting for room in the inbox, callers of wait_closed().
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        # Messages a reader task or pump took from a connection (the layer counted
        # them received) and holds until the inbox has room, in arrival order: one
        # token each, made when the first must wait. Nothing may overtake them, not
        # even the next connection's messages after a resume (see _deliver()).
        self._held: list[object] | None = None
        #: Running counts for the heartbeat (reading()): messages taken from the
        #: inbox, and waits of a reader for room.
        self._held_count = 0
        self._taken = 0
        self._ended: asyncio.Future[None] | None = None
        self._transport: Transport | None = None
        # Attached with attach_plain(): the connection recv() reads (kept after it
        # closed, so that what the engine still holds is read before the end).
        self._plain: Transport | None = None
        self._discard = False
        self._closed: ClosedInfo | None = None
        # A layer that reads on demand (ServerLayer.reads_on_demand): no pump task per
        # connection; recv() reads the attached connection itself while no reader task
        # runs, and a reader task runs only while somebody must read and the handler
        # does not (see read_ahead()). _link_end says when the attached connection's
        # end was handled; _reading_on is the connection a recv() is reading now and
        # _read_done tells a reader task waiting for it when it stops.
        self._on_demand = layer.reads_on_demand
        self._link_end: asyncio.Future[ClosedInfo] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reading_on: Transport | None = None
        self._read_done: asyncio.Future[None] | None = None
        self._keep_reader = False

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

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one message: ``str`` as a text frame, bytes-like as a binary frame.

        A ``bytearray`` or ``memoryview`` is copied at once (as by
        ``ClientConnection.send``): the caller may reuse its buffer as soon as this
        is called, and a tether.v1 session keeps the message for replay.

        Raises:
            ConnectionClosed: the session has ended (or has no connection).
            TypeError: ``message`` is neither text nor bytes-like.
            UnicodeEncodeError: ``message`` is text that UTF-8 cannot encode (a lone
                surrogate); nothing was sent or kept.
        """
        if not isinstance(message, (str, bytes)):
            if not isinstance(message, (bytearray, memoryview)):
                raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
            message = bytes(message)
        plain = self._plain
        if plain is not None:
            # Plain: straight onto the connection, the layer has nothing to add.
            if self._closed is not None:
                raise closed_error(self._closed)
            try:
                await plain.send(message)
            except TransportClosed as exc:
                raise closed_error(self._closed or exc.info) from exc
            return
        transport = self._transport
        if self._closed is not None and not self._layer.sends_while_detached:
            raise closed_error(self._closed)
        if transport is None and not self._layer.sends_while_detached:
            raise ConnectionClosedError(None, "the session has no connection")
        try:
            await self._layer.send(self, transport, message)
        except TransportClosed as exc:
            raise closed_error(self._closed or exc.info) from exc

    def recv(self) -> Coroutine[Any, Any, Message]:
        """Return the next message from the client (``await session.recv()``).

        Raises:
            ConnectionClosed: the session ended and every message before the end was read.
        """
        return self._receive(False)

    async def _receive(self, iterating: bool) -> Message:
        # recv() and __anext__() return this coroutine itself, not one awaiting it:
        # one frame less per idle session (a handler waits in one of them).
        try:
            plain = self._plain
            if plain is not None:
                # Plain: read the connection in this task (no pump, no inbox). Inline, not
                # a helper coroutine: one frame less per message and per idle connection.
                self._check_plain_open()
                message = plain.recv_ready()  # (held already: no await at all)
                if message is not None:
                    return message
                try:
                    return await plain.recv()
                except TransportClosed as exc:
                    raise self._plain_end(exc.info) from None
            while not self._inbox:
                if self._closed is not None:
                    raise closed_error(self._closed)
                transport = self._transport
                if (
                    self._on_demand
                    and transport is not None
                    and self._reader_task is None
                    and self._reading_on is None
                    and not self._held  # (a previous connection's reader holds some)
                ):
                    # Nobody else reads the connection: read it here, one task hop fewer.
                    # (Inline, not a helper coroutine: one frame less per idle session.)
                    ended = self._link_end
                    assert ended is not None
                    raw = transport.recv_ready()  # (held already: no await at all)
                    if raw is None:
                        self._reading_on = transport
                        try:
                            raw = await transport.recv()
                        except TransportClosed as exc:
                            self._link_ended(transport, ended, exc.info)
                            continue
                        finally:
                            self._reading_on = None
                            done = self._read_done
                            if done is not None:
                                self._read_done = None
                                _wake(done)
                    if transport.closed is not None and self._reader_task is None:
                        # Closed behind this message: the rest must be read to the end
                        # even if the handler reads no more.
                        self._start_reader(transport, ended)
                    messages = self._layer.received(self, transport, raw)
                    if not messages or self._closed is not None:
                        continue
                    if len(messages) > 1:
                        self._put_rest(messages)
                    self._layer.consumed(self)
                    return messages[0]
                self._reader, waiter = self._park(self._reader)
                await waiter
            inbox = self._inbox
            item = inbox.popleft()
            self._inbox_bytes -= len(item)
            self._taken += 1
            if self._writer is not None and not self._inbox_full():
                _wake(self._writer)
                self._writer = None
            self._layer.consumed(self)
            return item
        except ConnectionClosed:
            if iterating:
                raise StopAsyncIteration from None
            raise

    def _check_plain_open(self) -> None:
        closed = self._closed
        if closed is not None and (self._discard or self._transport is not None):
            # Ended while the connection is still attached (not by its close):
            # nothing more is taken from it.
            raise closed_error(closed)

    def _plain_end(self, info: ClosedInfo) -> ConnectionClosed:
        # The engine has handed over all it held: this is the end of the session.
        self._plain_closed(info)
        assert self._closed is not None
        return closed_error(self._closed)

    def __aiter__(self) -> Session:
        """Iterate over messages until the session ends (with any code)."""
        return self

    def __anext__(self) -> Coroutine[Any, Any, Message]:
        return self._receive(True)

    async def close(self, code: int = 1000, reason: str = "") -> ClosedInfo:
        """End the session: close its connection with ``code`` and ``reason``.

        With no connection attached, a layer that keeps sessions for a later
        connection may wait for it (tether.v1: the client still has messages to
        get, then the close), bounded by the session's expiry.

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
        check_reason(reason)
        if self._closed is not None:
            return self._closed
        transport = self._transport
        if transport is None:
            info = await self._layer.close_detached(self, code, reason)
        else:
            info = await self._layer.close(self, transport, code, reason)
        self.end(info)
        return self._closed or info

    async def wait_closed(self) -> ClosedInfo:
        """Wait until the session has ended and say how."""
        while self._closed is None:
            self._ended, waiter = self._park(self._ended)
            await waiter
        return self._closed

    # -- what the server and the session layer use ---------------------------------------------

    def reading(self) -> Reading:
        """How the handler's reading stands, for the heartbeat (see :class:`Reading`)."""
        full = self._inbox is not _NO_INBOX and self._inbox_full()
        return Reading(self._taken, self._held_count, full)

    @property
    def transport(self) -> Transport | None:
        """The connection currently attached, if any."""
        return self._transport

    def attach(self, transport: Transport) -> asyncio.Future[ClosedInfo]:
        """Attach ``transport``; its messages reach the handler through the layer.

        The returned future is done when the connection has closed and its end was
        handled, with how it closed. The session ends with the same code unless the
        layer keeps it for a later connection (:meth:`ServerLayer.connection_lost`).

        Unless the layer :attr:`~ServerLayer.reads_on_demand`, a pump task moves
        the connection's messages into the inbox (the returned future is that task).
        """
        if not self._on_demand:
            self._transport = transport
            return asyncio.ensure_future(self._pump(transport))
        previous = self._reader_task
        if previous is not None:
            # It reads the previous connection to its end (the layer takes nothing
            # more from it); the new connection gets a reader of its own when needed.
            self._reader_task = None
            _keep(previous)
        self._transport = transport
        ended: asyncio.Future[ClosedInfo] = asyncio.get_running_loop().create_future()
        self._link_end = ended
        transport.add_close_callback(_LinkWatch(self, transport, ended))
        if self._reading_on is not None or self._keep_reader:
            # A recv() still waits on the previous connection (until it closes): this
            # one must not wait for it. Or the handler does not read (it only sends):
            # the client's acks (and the replay's) must be read on this one too.
            self._start_reader(transport, ended)
        elif self._reader is not None:
            # A recv() parked behind the previous reader: it reads this connection now.
            _wake(self._reader)
            self._reader = None
        return ended

    def read_ahead(self, *, keep: bool = False, take_over: bool = False) -> None:
        """Read the attached connection in a task while the handler does not.

        For a layer that :attr:`~ServerLayer.reads_on_demand`: somebody must read
        now (control frames to handle, a ping's pong not to be stuck behind unread
        messages, a close handshake to complete). The task hands the reading back
        to the handler once its ``recv()`` waits on an empty inbox, unless ``keep``
        (from then on the session keeps a reader task while a connection is attached).
        Nothing happens when a reader runs or none is attached, nor, unless
        ``take_over``, when the handler's ``recv()`` reads the connection itself
        (with it, the reader takes over once that read is done).
        """
        if keep:
            self._keep_reader = True
        transport = self._transport
        ended = self._link_end
        if (
            self._reader_task is None
            and transport is not None
            and ended is not None
            and not ended.done()
            and (take_over or self._reading_on is not transport)
        ):
            self._start_reader(transport, ended)

    def read_for_ping(self) -> None:
        """A ping went out: read ahead, also while the handler reads the connection.

        A burst the handler reads slowly, with the pong behind it, then goes through
        the inbox (counted by :meth:`reading`) instead of making a live link look dead.
        """
        self.read_ahead(take_over=True)

    def _start_reader(self, transport: Transport, ended: asyncio.Future[ClosedInfo]) -> None:
        task = asyncio.ensure_future(self._read(transport, ended))
        if transport is self._transport and self._reader_task is None:
            self._reader_task = task
        else:
            _keep(task)

    def _link_closed(
        self, transport: Transport, ended: asyncio.Future[ClosedInfo], _info: ClosedInfo
    ) -> None:
        # The connection closed: what the engine still holds must be read (delivered,
        # or left to the client's replay) and the end handled, even if nobody reads.
        if ended.done() or self._reading_on is transport:
            return
        if self._reader_task is not None and transport is self._transport:
            return
        self._start_reader(transport, ended)

    def _inbox_to_fill(self) -> collections.deque[Message]:
        """The inbox, made on first use (a session whose handler reads needs none)."""
        if self._inbox is _NO_INBOX:
            self._inbox = collections.deque()
        return self._inbox

    def _put_rest(self, messages: Sequence[Message]) -> None:
        """The messages after the first of one frame recv() read itself: into the inbox."""
        inbox = self._inbox_to_fill()
        for message in messages[1:]:
            inbox.append(message)
            self._inbox_bytes += len(message)

    async def _read(self, transport: Transport, ended: asyncio.Future[ClosedInfo]) -> None:
        """Move messages of ``transport`` through the layer into the inbox (reads on demand).

        Hands the reading back (returns) once a recv() waits on an empty inbox,
        unless told to keep reading; reads to the end a connection that closed or
        is no longer the attached one.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._reading_on is transport:  # a recv() in progress finishes first
                if self._read_done is None or self._read_done.done():
                    self._read_done = loop.create_future()
                await self._read_done
            while not ended.done():
                raw = transport.recv_ready()
                if raw is None:
                    raw = await transport.recv()
                waiting = self._reader is not None
                for message in self._layer.received(self, transport, raw):
                    await self._deliver(message)
                if (
                    waiting
                    and not self._keep_reader
                    and transport is self._transport
                    and transport.closed is None
                ):
                    return
        except TransportClosed as exc:
            self._link_ended(transport, ended, exc.info)
        except Exception as exc:
            # A layer's bug: the connection fails as a pump's exception would fail it.
            if not ended.done():
                ended.set_exception(exc)
        finally:
            if self._reader_task is asyncio.current_task():
                self._reader_task = None
                # A parked recv() takes over the reading (or sees the end).
                _wake(self._reader)
                self._reader = None

    def _link_ended(
        self, transport: Transport, ended: asyncio.Future[ClosedInfo], info: ClosedInfo
    ) -> None:
        """The connection's end (once): detach it, tell the layer, maybe end the session."""
        if ended.done():
            return
        if self._transport is transport:
            self._transport = None
        try:
            if self._layer.connection_lost(self, info):
                self.end(info)
        finally:
            if not ended.done():
                ended.set_result(info)

    def attach_plain(self, transport: Transport, *, also: CloseHandler | None = None) -> None:
        """Attach ``transport`` for good, with no pump and no inbox (plain WebSocket).

        For a session that :meth:`ServerLayer.is_plain` says is plain: ``recv``
        reads the connection in the handler's own task, ``send`` writes to it, and
        the session ends when the connection closes (even if nobody reads).
        The layer's per-message hooks (``received``, ``send``, ``consumed``,
        ``connection_lost``) are not called.

        Args:
            transport: the connection.
            also: called with how the connection ended, after the session ended
                (one close callback per connection, not two).
        """
        self._transport = transport
        self._plain = transport
        transport.add_close_callback(
            self._plain_closed if also is None else functools.partial(self._plain_closed_then, also)
        )

    def _plain_closed(self, info: ClosedInfo) -> None:
        if self._transport is self._plain:
            self._transport = None
        self.end(info)

    def _plain_closed_then(self, also: CloseHandler, info: ClosedInfo) -> None:
        self._plain_closed(info)
        also(info)

    async def _pump(self, transport: Transport) -> ClosedInfo:
        try:
            while True:
                raw = transport.recv_ready()
                if raw is None:
                    try:
                        raw = await transport.recv()
                    except TransportClosed as exc:
                        info = exc.info
                        break
                for message in self._layer.received(self, transport, raw):
                    await self._deliver(message)
        finally:
            if self._transport is transport:
                self._transport = None
        if self._layer.connection_lost(self, info):
            self.end(info)
        return info

    async def _deliver(self, message: Message) -> None:
        # Back-pressure: stop reading from the connection while the inbox is full.
        # Order: a message waits behind those already waiting, whichever reader holds
        # them. After a resume the previous connection's reader may still hold one
        # that its layer counted received (tether.v1 numbered it): the handler must
        # take it before anything of the new connection, or the layer would commit
        # (and the client trim) a position the handler had not reached.
        if self._held or self._inbox_full():
            self._held_count += 1
            held = self._held
            if held is None:
                held = self._held = []
            turn = object()
            held.append(turn)
            try:
                while (held[0] is not turn or self._inbox_full()) and self._closed is None:
                    self._writer, waiter = self._park(self._writer)
                    await waiter
            finally:
                held.remove(turn)
                if held and self._writer is not None:
                    _wake(self._writer)  # the next in line looks again
                    self._writer = None
        if self._closed is None:
            self._inbox_to_fill().append(message)
            self._inbox_bytes += len(message)
            if self._reader is not None:
                _wake(self._reader)
                self._reader = None

    @staticmethod
    def _park(
        current: asyncio.Future[None] | None,
    ) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        """A future to wait on, and what the slot it came from now holds.

        Waking the future in the slot wakes every waiter. A second waiter chains
        its own future to it rather than share it: cancelling one waiter (which
        cancels its future) must not cancel another, only make it look again.
        """
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if current is None or current.done():
            return mine, mine
        current.add_done_callback(lambda _: _wake(mine))
        return current, mine

    def _inbox_full(self) -> bool:
        if len(self._inbox) >= self._max_queue:
            return True
        return self._max_queue_bytes is not None and self._inbox_bytes >= self._max_queue_bytes

    def correct_end(self, announced: ClosedInfo, info: ClosedInfo) -> None:
        """Replace the end ``announced`` before the close went out with how it went.

        For a session layer that ends the session (:meth:`end`) before its Close
        goes out, so that nothing more is taken, and then sees the link die instead
        of the Close coming back: :attr:`closed`, and what :meth:`close` returns,
        then say so. An end that came first (a take-over, a store failure) stays.
        """
        if self._closed is announced:
            self._closed = info

    def end(self, info: ClosedInfo, *, discard_unread: bool = False) -> None:
        """End the session with ``info`` (idempotent: the first end wins).

        For the server and session layers: the handler's ``recv`` raises and
        ``async for`` stops once the messages already received are read (or at
        once with ``discard_unread``: a session layer that will have them replayed
        elsewhere drops them here). Nothing is sent; use :meth:`close` to end a
        session on the wire. (A plain session ended while its connection is still
        open stops taking messages from it at once.)
        """
        if self._closed is not None:
            return
        self._closed = info
        if discard_unread:
            self._discard = True
            self._inbox.clear()
            self._inbox_bytes = 0
        for waiter in (self._reader, self._writer, self._ended):
            _wake(waiter)
        self._reader = self._writer = self._ended = None

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

    #: True when a session's connection is read on demand (:meth:`Session.attach`):
    #: by the handler's ``recv()`` itself, else by a reader task only while the layer
    #: or the server asks for one (:meth:`Session.read_ahead`). The layer must then
    #: ask whenever something has to be read while the handler may not be reading
    #: (the connection's close handshake, control frames it waits for). False: a
    #: pump task per connection reads it into the inbox all along.
    reads_on_demand: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # received() was a coroutine before 2026-11-26: an override written for that
        # would hand the session a coroutine object per message. Say so at once.
        if inspect.iscoroutinefunction(cls.__dict__.get("received")):
            raise TypeError(
                f"{cls.__qualname__}.received must be a plain function (def, not async def):"
                " it decodes one message and is called for every message"
            )

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

    def received(
        self, session: Session, transport: Transport, message: Message
    ) -> Sequence[Message]:
        """Decode one received WebSocket message into application messages (0 or more).

        A plain function, as the client's ``ClientLayer.incoming`` is: decoding needs no I/O,
        and it runs for every message (a coroutine each would cost more than the
        tether.v1 decoding itself). State that needs I/O is the layer's to schedule.
        """
        return (message,)

    def connection_lost(self, session: Session, info: ClosedInfo) -> bool:
        """The session's connection closed; return True if the session ends with it."""
        return True

    def is_plain(self, session: Session, transport: Transport) -> bool:
        """True when ``session`` is plain WebSocket on ``transport``.

        Plain means: messages pass unchanged both ways, :meth:`consumed` needs no
        call, and the session ends with this connection. The server then attaches
        the connection with :meth:`Session.attach_plain` (the handler reads it in
        its own task: no pump task, no inbox) instead of :meth:`Session.attach`,
        and none of :meth:`received`, :meth:`send`, :meth:`consumed` or
        :meth:`connection_lost` is called for the session.

        Default: a layer that names :attr:`subprotocols` gives a plain session to a
        connection that negotiated none of them (the server admits such a client
        in plain mode, see ``Server._select_subprotocol``); a layer that names none
        is not plain unless it says so by overriding this method.
        """
        return bool(self.subprotocols) and transport.subprotocol not in self.subprotocols

    async def close(
        self, session: Session, transport: Transport, code: int, reason: str
    ) -> ClosedInfo:
        """End ``session`` on its current connection with (code, reason)."""
        return await transport.close(code, reason)

    async def close_detached(self, session: Session, code: int, reason: str) -> ClosedInfo:
        """End ``session`` while no connection is attached. Default: at once."""
        return ClosedInfo(code, reason, clean=True, sent_code=code)

    def handler_ended(self, session: Session) -> tuple[int, str] | None:
        """(code, reason) when the application already ended ``session`` elsewhere.

        A session resumed from a store whose record says its handler ended while
        the client was away (on another node, or before a restart): the server then
        closes it with this code once the layer replayed what is owed, and starts
        no handler. Default: None (run the handler).
        """
        return None


class PlainServerLayer(ServerLayer):
    """Plain WebSocket: one session per connection, messages unchanged.

    The server attaches its sessions with :meth:`Session.attach_plain` (see
    :meth:`is_plain`): they have no inbox, the engine's buffer of received messages
    (``ENGINE_MAX_QUEUE``) is all there is, and the two bounds below apply only to a
    session attached with :meth:`Session.attach`.

    Args:
        max_queue: inbox size of each session, in messages (see :class:`Session`).
        max_queue_bytes: inbox size of each session, in bytes (None: no byte bound).
    """

    def __init__(
        self, *, max_queue: int = 64, max_queue_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES
    ) -> None:
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes

    async def open(self, transport: Transport, request: RequestInfo) -> Session:
        return Session(
            self, request, max_queue=self.max_queue, max_queue_bytes=self.max_queue_bytes
        )

    def is_plain(self, session: Session, transport: Transport) -> bool:
        # A subclass that changes how messages pass keeps the pump and its hooks.
        cls = type(self)
        return (
            cls.received is ServerLayer.received
            and cls.send is ServerLayer.send
            and cls.consumed is ServerLayer.consumed
            and cls.connection_lost is ServerLayer.connection_lost
        )
