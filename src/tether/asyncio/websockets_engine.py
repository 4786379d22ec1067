"""The :class:`~tether.asyncio.engine.Transport` implemented with ``websockets``.

This is the only module that imports ``websockets`` for per-connection I/O
(``client.py`` and ``server.py`` use its handshake helpers). Engine exceptions
are translated here and chained with ``from``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import socket
import struct
import sys
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Opcode
from websockets.protocol import CLIENT, CLOSED, OPEN

try:  # websockets' C masking, as it uses itself; its pure-Python one where not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets always builds it on CPython/Linux
    from websockets.utils import apply_mask

from ..closecodes import CloseCode
from ..heartbeat import Transfer
from .engine import ClosedInfo, CloseHandler, Message, PongHandler, Transport, TransportClosed

__all__ = ["WebsocketsTransport", "closed_info", "data_frame"]

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, two u64 at
# offset 120 (Linux >= 4.1). Elsewhere no counts: the heartbeat gives no such grace.
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_BYTE_COUNTS = struct.Struct("=QQ")
_BYTE_COUNTS_OFFSET = 120
_TCP_INFO_BYTES = _BYTE_COUNTS_OFFSET + _BYTE_COUNTS.size

# RFC 6455 §5.2: the first two bytes of a frame's header, with a 16-bit or 64-bit
# extended payload length when the length does not fit in 7 bits.
_HEAD = struct.Struct("!BB")
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81  # FIN, opcode 1
_FIN_BINARY = 0x82  # FIN, opcode 2
_MASKED = 0x80
#: From this size on, a prefix and the data after it are masked apart (no joined copy of a
#: large payload); below it, joining them first costs less than a second mask and a key.
_MASK_APART = 1024


def data_frame(first: int, data: bytes, *, mask: bool, prefix: bytes = b"") -> bytes:
    """One whole unfragmented data frame as websockets' ``Frame.serialize`` writes it.

    ``first`` is the first byte (FIN and opcode); the frame's payload is ``prefix``
    followed by ``data``, joined into the frame itself (a large ``data`` is copied
    once, not first into a message and then into a frame). A client's frame is
    masked with a fresh key from ``os.urandom`` (RFC 6455 §5.3: unpredictable;
    websockets takes it from the same source through ``secrets.token_bytes``).
    """
    length = len(prefix) + len(data)
    second = _MASKED if mask else 0
    if length < 126:
        head = _HEAD.pack(first, second | length)
    elif length < 65536:
        head = _HEAD_16.pack(first, second | 126, length)
    else:
        head = _HEAD_64.pack(first, second | 127, length)
    if not mask:
        return b"".join((head, prefix, data)) if prefix else head + data
    key = os.urandom(4)
    if len(data) < _MASK_APART:
        return b"".join((head, key, apply_mask(prefix + data if prefix else data, key)))
    # The mask runs on over the payload: data starts len(prefix) bytes into the key.
    shift = len(prefix) % 4
    return b"".join(
        (head, key, apply_mask(prefix, key), apply_mask(data, key[shift:] + key[:shift]))
    )


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
        if sent_code == CloseCode.PROTOCOL_ERROR and _invalid_close_code(protocol.parser_exc):
            # The peer's Close frame carried a code nobody may send (1004, 1005, 1006,
            # 1015, 0-999, 1016-2999, 5000+): websockets failed the connection with
            # 1002 and kept neither the frame nor its code. The peer is broken, and
            # reconnecting would repeat it: a 1002 (final), not a silent 1006 (backoff
            # for ever). (clean: the peer did close, with a frame.)
            return ClosedInfo(
                int(CloseCode.PROTOCOL_ERROR),
                "the peer's Close frame carried an invalid code",
                clean=True,
                sent_code=sent_code,
            )
        return ClosedInfo(int(CloseCode.ABNORMAL_CLOSURE), "", clean=False, sent_code=sent_code)
    return ClosedInfo(int(rcvd.code), rcvd.reason, clean=True, sent_code=sent_code)


def _frame_queue(connection: Connection) -> tuple[Any, Any]:
    """websockets' assembler of received messages and its deque of frames, or (None, None).

    Internals of websockets (14 to 17): checked here once per connection, so that a
    release that changes them leaves recv() on websockets' own path.
    """
    assembler = getattr(connection, "recv_messages", None)
    frames = getattr(getattr(assembler, "frames", None), "queue", None)
    if (
        isinstance(frames, collections.deque)
        and isinstance(getattr(assembler, "get_in_progress", None), bool)
        and callable(getattr(assembler, "maybe_resume", None))
    ):
        return assembler, frames
    return None, None


def _invalid_close_code(exc: BaseException | None) -> bool:
    """Whether websockets refused a Close frame for its code (``Close.check()``)."""
    return isinstance(exc, WsProtocolError) and "status code" in str(exc)


class WebsocketsTransport(Transport):
    """Wraps a ``websockets.asyncio`` connection (client or server side).

    Args:
        connection: an open websockets connection whose keepalive is disabled
            (``ping_interval=None``): tether drives pings from its own core.
    """

    # One per connection on a server: no __dict__, and the response headers are
    # only copied when asked for (a server never asks).
    __slots__ = (
        "_assembler",
        "_closed_info",
        "_frames_here",
        "_frames_in",
        "_headers",
        "_masked",
        "_on_close",
        "_pong_handler",
        "_recv_ended",
        "_ws",
        "remote_address",
        "subprotocol",
    )

    def __init__(self, connection: Connection) -> None:
        self._ws = connection
        self._pong_handler: PongHandler | None = None
        self._headers: dict[str, str] | None = None
        self._recv_ended = False
        self._on_close: CloseHandler | None = None
        self._closed_info: ClosedInfo | None = None
        self.subprotocol = connection.subprotocol
        protocol = connection.protocol
        # write_now() frames data messages itself unless websockets must: an extension
        # (permessage-deflate) transforms each frame, and a debug logger logs each one.
        self._frames_here = not protocol.extensions and not protocol.debug
        self._masked = protocol.side is CLIENT
        # recv() takes a whole message websockets has already parsed straight from its
        # queue of frames (see recv_ready); None where that queue is not the one known.
        self._assembler, self._frames_in = _frame_queue(connection)
        address: Any = connection.remote_address
        self.remote_address = tuple(address) if address is not None else None

    def _info(self) -> ClosedInfo:
        """:func:`closed_info`, kept once the connection is CLOSED.

        It no longer changes then, and a lost connection is asked several times
        how it ended (its ``recv``, its close callback, the session layer).
        """
        info = self._closed_info
        if info is None:
            ws = self._ws
            info = closed_info(ws)
            if ws.protocol.state is CLOSED:
                self._closed_info = info
        return info

    @property
    def headers(self) -> dict[str, str]:
        """The handshake response's headers, names lower-cased (copied on first use)."""
        if self._headers is None:
            headers: dict[str, str] = {}
            response = getattr(self._ws, "response", None)
            if response is not None:
                headers = {k.lower(): v for k, v in response.headers.raw_items()}
            self._headers = headers
        return self._headers

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self._headers = value

    @property
    def connection(self) -> Connection:
        """The wrapped websockets connection."""
        return self._ws

    def write_now(self, message: Message, header: bytes = b"", text: bool = False) -> bool:
        """Write one whole message at once if ``websockets`` would not wait; else False.

        True when the connection is OPEN, no fragmented send is in progress and
        the socket's write buffer is not paused (over its high-water mark): then
        ``websockets``' own ``send`` would not wait either and would do the same
        (frame the message with its Sans-I/O protocol, hand the bytes to the
        asyncio transport), through an async context manager that costs more than
        the write. Otherwise it writes nothing: the caller awaits :meth:`send`,
        which waits for the buffer to drain or reports the close.

        ``bytes`` with ``text`` are a text message's UTF-8, encoded by the caller
        (the client encodes non-ASCII text anyway, to refuse what UTF-8 cannot
        encode before it is queued). With ``header`` the message sent is ``header``
        followed by the message, joined only inside the frame (tether.v1: a
        numbered frame's header before the application's payload).
        """
        ws = self._ws
        protocol = ws.protocol
        if (
            protocol.state is not OPEN
            or ws.paused
            or ws.send_in_progress is not None
            or ws.transport.is_closing()
        ):
            return False
        if isinstance(message, str):
            data = message.encode()
            first = _FIN_TEXT
        else:
            data = message if type(message) is bytes else bytes(message)
            first = _FIN_TEXT if text else _FIN_BINARY
        if self._frames_here and not protocol.writes and not protocol.expect_continuation_frame:
            # The frame websockets would write (send_binary/send_text: Frame, check,
            # serialize, data_to_send), built in one call: no frame object, no
            # BytesIO. websockets keeps no state of the data frames it sends; what it
            # checks (OPEN, no fragmented message begun, nothing of its own queued to
            # go first) was checked above.
            ws.transport.write(data_frame(first, data, mask=self._masked, prefix=header))
            return True
        if header:
            data = header + data
        if first == _FIN_TEXT:
            protocol.send_text(data)
        else:
            protocol.send_binary(data)
        socket = ws.transport
        for chunk in protocol.data_to_send():
            socket.write(chunk)  # a data frame never asks for EOF (only a close does)
        return True

    async def send(self, message: Message) -> None:
        # Most sends go at once (see write_now); websockets' send() for the rest.
        if self.write_now(message):
            return
        try:
            await self._ws.send(message)
        except WsConnectionClosed as exc:
            raise TransportClosed(self._info()) from exc

    async def recv(self) -> Message:
        # Once recv() reported the end, it keeps doing so without asking websockets
        # again: after a message it refused half-way (too many fragments -> 1009) the
        # rest of that message's frames are still queued in the engine, and a second
        # recv() there would start at a continuation frame (an AssertionError in
        # websockets' Assembler) instead of reporting the close.
        if self._recv_ended:
            raise TransportClosed(self._info())
        if self._frames_in:  # (a deque's truth: a message may be waiting)
            message = self.recv_ready()
            if message is not None:
                return message
        try:
            return await self._ws.recv()
        except WsConnectionClosed as exc:
            self._recv_ended = True
            raise TransportClosed(self._info()) from exc

    def recv_ready(self) -> Message | None:
        """The next message, if websockets already holds all of it in one frame; else None.

        What websockets' ``recv()`` would return, taken without its three coroutines
        (``Connection.recv``, ``Assembler.get``, its queue's ``get``): on a stream most
        messages arrive several to a read, parsed and checked by websockets already (its
        ``max_size``, masking and opcode rules apply when it parses a frame; text is
        decoded here as its ``recv()`` decodes it). A fragmented message, text that is
        not UTF-8 (websockets fails the connection with 1007 on its own path), another
        reader under way, and the end once reported are left to ``recv()``.
        """
        frames = self._frames_in
        if not frames or self._recv_ended:
            return None
        assembler = self._assembler
        if assembler.get_in_progress:
            return None
        frame = frames[0]
        if not frame.fin:
            return None
        data = frame.data
        if frame.opcode is Opcode.BINARY:
            message: Message = data if type(data) is bytes else bytes(data)
        elif frame.opcode is Opcode.TEXT:
            try:
                message = str(data, "utf-8")
            except UnicodeDecodeError:
                return None
        else:  # (never: websockets queues data frames only)
            return None
        frames.popleft()
        assembler.maybe_resume()  # websockets' flow control, as its get() does
        return message

    async def ping(self, payload: bytes) -> None:
        try:
            waiter = await self._ws.ping(payload)
        except WsConnectionClosed as exc:
            raise TransportClosed(self._info()) from exc
        # A callback on websockets' pong future, not a task per ping.
        waiter.add_done_callback(functools.partial(self._pong_arrived, payload))  # type: ignore[attr-defined]

    def _pong_arrived(self, payload: bytes, waiter: asyncio.Future[float]) -> None:
        if waiter.cancelled() or waiter.exception() is not None:
            return  # the connection closed before the pong
        if self._pong_handler is not None:
            self._pong_handler(payload, float(waiter.result()))

    def on_pong(self, handler: PongHandler) -> None:
        self._pong_handler = handler

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        await self._ws.close(code, reason)
        return self._info()

    def transfer(self) -> Transfer | None:
        """Bytes acknowledged by the peer and received from it: ``TCP_INFO``'s running
        counts (Linux; else None). Called at each ping and overdue pong, not per message.
        """
        transport = self._ws.transport
        if _TCP_INFO is None or transport is None or transport.is_closing():
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
        except (OSError, ValueError):
            return None  # not TCP (a Unix socket), or closed meanwhile
        if len(info) < _TCP_INFO_BYTES:
            return None  # a kernel older than 4.1 has no byte counts
        acked, received = _BYTE_COUNTS.unpack_from(info, _BYTE_COUNTS_OFFSET)
        return Transfer(acked=acked, received=received)

    def abort(self) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def wait_closed(self) -> ClosedInfo:
        await self._ws.wait_closed()
        return self._info()

    @property
    def closed(self) -> ClosedInfo | None:
        if self._ws.protocol.state is not CLOSED:
            return None
        info = self._closed_info
        return info if info is not None else self._info()

    @property
    def peer_closed_first(self) -> bool | None:
        return self._ws.protocol.close_rcvd_then_sent

    def add_close_callback(self, callback: CloseHandler) -> None:
        # websockets resolves this future in connection_lost: no task needed. The
        # first callback (usually the only one) in a slot: no partial per connection.
        if self._on_close is None:
            self._on_close = callback
            self._ws.connection_lost_waiter.add_done_callback(self._first_closed)
            return
        self._ws.connection_lost_waiter.add_done_callback(
            functools.partial(self._connection_lost, callback)
        )

    def _first_closed(self, _waiter: object) -> None:
        callback = self._on_close
        if callback is not None:
            self._on_close = None
            callback(self._info())

    def _connection_lost(self, callback: CloseHandler, _waiter: object) -> None:
        callback(self._info())
