"""The engine interface's default behaviour (``tether.asyncio.engine.Transport``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tether.asyncio.engine import ClosedInfo, Message, PongHandler, Transport, TransportClosed
from tether.asyncio.websockets_client import translate
from tether.asyncio.websockets_engine import WebsocketsTransport, data_frame
from tether.reconnect import FailureKind

pytestmark = pytest.mark.timeout(10)


class ClosingTransport(Transport):
    """Only wait_closed() works: it returns once the test calls ``finish``."""

    def __init__(self) -> None:
        self.subprotocol = None
        self.remote_address = None
        self.headers = {}
        self._done: asyncio.Future[ClosedInfo] = asyncio.get_running_loop().create_future()

    def finish(self, info: ClosedInfo) -> None:
        self._done.set_result(info)

    async def send(self, message: Message) -> None:
        raise AssertionError("not used")

    async def recv(self) -> Message:
        raise AssertionError("not used")

    async def ping(self, payload: bytes) -> None:
        raise AssertionError("not used")

    def on_pong(self, handler: PongHandler) -> None:
        raise AssertionError("not used")

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        raise AssertionError("not used")

    def abort(self) -> None:
        raise AssertionError("not used")

    async def wait_closed(self) -> ClosedInfo:
        return await asyncio.shield(self._done)

    @property
    def closed(self) -> ClosedInfo | None:
        return self._done.result() if self._done.done() else None


async def test_default_close_callback_is_called_once_with_how_it_ended() -> None:
    """An engine without its own add_close_callback still tells of the close, once."""
    transport = ClosingTransport()
    seen: list[ClosedInfo] = []
    transport.add_close_callback(seen.append)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == []
    info = ClosedInfo(1001, "away", clean=True)
    transport.finish(info)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [info]


async def test_websockets_transport_keeps_reporting_the_end_after_a_refused_message() -> None:
    """A message refused half-way (too many fragments -> 1009) ends recv() for good.

    The rest of its frames are still queued in websockets; asking it again used to
    raise an AssertionError (a continuation frame first) instead of the close.
    """
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection, serve

    async def flood(connection: ServerConnection) -> None:
        # 5,000 one-byte fragments: over websockets' 4,096-fragment limit.
        await connection.send(b"x" for _ in range(5000))
        await connection.wait_closed()

    async with serve(flood, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        # The server is still busy sending: do not wait 10 s for its Close.
        async with ws_connect(
            f"ws://127.0.0.1:{port}", compression=None, close_timeout=0.5
        ) as connection:
            transport = WebsocketsTransport(connection)
            with pytest.raises(TransportClosed) as first:
                await transport.recv()
            assert first.value.info.sent_code == 1009
            with pytest.raises(TransportClosed) as second:
                await transport.recv()
            assert second.value.info.sent_code == 1009


async def _echo(connection: Any) -> None:
    """A websockets server handler that sends every message back."""
    async for message in connection:
        await connection.send(message)


@contextlib.asynccontextmanager
async def echo_pair() -> AsyncIterator[WebsocketsTransport]:
    """A websockets echo server on loopback and a WebsocketsTransport connected to it."""
    async with _client_of(_echo) as transport:
        yield transport


@contextlib.asynccontextmanager
async def _client_of(
    handler: Callable[[Any], Awaitable[None]], *, compression: str | None = None, **options: Any
) -> AsyncIterator[WebsocketsTransport]:
    """A websockets server running ``handler`` on loopback and a WebsocketsTransport to it."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import serve

    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        port = server.sockets[0].getsockname()[1]
        async with ws_connect(
            f"ws://127.0.0.1:{port}", compression=compression, **options
        ) as connection:
            yield WebsocketsTransport(connection)


async def test_write_now_writes_whole_messages_of_either_type_at_once() -> None:
    """write_now(): True, and the peer gets each message with its type; no await needed."""
    async with echo_pair() as transport:
        assert transport.write_now("text é")
        assert transport.write_now(b"\x00bin")
        assert await transport.recv() == "text é"
        assert await transport.recv() == b"\x00bin"


async def test_send_waits_while_the_write_buffer_is_paused() -> None:
    """Over the high-water mark write_now() declines and send() waits for the drain.

    Pausing is what asyncio's transport does to its protocol when the buffer goes
    over the limit; resume_writing() is what it does once under the low mark.
    """
    async with echo_pair() as transport:
        connection = transport.connection
        connection.pause_writing()
        assert not transport.write_now("held")
        sending = asyncio.ensure_future(transport.send("waits"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sending.done()
        connection.resume_writing()
        await asyncio.wait_for(sending, 5)
        assert await transport.recv() == "waits"  # "held" was never written


async def test_write_now_declines_once_closing_and_send_reports_the_close() -> None:
    """After close(): write_now() writes nothing, send() raises TransportClosed."""
    async with echo_pair() as transport:
        info = await transport.close(1000)
        assert info.sent_code == 1000
        assert not transport.write_now("late")
        with pytest.raises(TransportClosed):
            await transport.send("late")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), FailureKind.TLS),
        (ssl.SSLError(1, "wrong version number"), FailureKind.TLS),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), FailureKind.NETWORK),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), FailureKind.NETWORK),
        (ConnectionResetError(104, "Connection reset by peer"), FailureKind.NETWORK),
    ],
)
def test_a_refused_tls_handshake_is_told_from_a_cut_connection(
    exc: BaseException, kind: FailureKind
) -> None:
    """Refused (certificate, version): TLS, i.e. 1015; cut during it (EOF, reset): network."""
    failure = translate(exc)
    assert failure is not None
    assert failure.kind is kind


# -- write_now() frames data messages itself ------------------------------------------------

#: Payload lengths on both sides of each of RFC 6455's three length encodings.
FRAME_LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("length", FRAME_LENGTHS)
@pytest.mark.parametrize(("first", "opcode"), [(0x81, 1), (0x82, 2)])
def test_an_unmasked_data_frame_is_byte_for_byte_what_websockets_writes(
    length: int, first: int, opcode: int
) -> None:
    """A server's frame: the very bytes of ``Frame.serialize(mask=False)``."""
    from websockets.frames import Frame, Opcode

    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    expected = Frame(Opcode(opcode), data).serialize(mask=False)
    assert data_frame(first, data, mask=False) == expected


@pytest.mark.parametrize("length", FRAME_LENGTHS)
@pytest.mark.parametrize(("first", "opcode"), [(0x81, 1), (0x82, 2)])
def test_a_masked_data_frame_parses_back_to_its_payload(
    length: int, first: int, opcode: int
) -> None:
    """A client's frame: websockets' server-side parser reads back FIN, opcode and payload."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    data = b"m" * length
    wire = data_frame(first, data, mask=True)
    assert wire[1] & 0x80, "the MASK bit is set"
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True, max_size=None)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert (frame.fin, frame.opcode, frame.data) == (True, Opcode(opcode), data)
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)


@pytest.mark.parametrize("prefix_length", [1, 2, 3, 4, 5, 17])
@pytest.mark.parametrize("length", [0, 108, 109, 65535, 70000])
def test_a_prefix_is_part_of_the_frame_payload_masked_or_not(
    prefix_length: int, length: int
) -> None:
    """prefix + data frame as the joined payload would: byte for byte unmasked, parsed back
    masked (the key runs on from the prefix into the data, whatever the prefix's length)."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    prefix = bytes(range(100, 100 + prefix_length))
    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    expected = Frame(Opcode.BINARY, prefix + data).serialize(mask=False)
    assert data_frame(0x82, data, mask=False, prefix=prefix) == expected
    reader = StreamReader()
    reader.feed_data(data_frame(0x82, data, mask=True, prefix=prefix))
    reader.feed_eof()
    with pytest.raises(StopIteration) as done:
        next(Frame.parse(reader.read_exact, mask=True, max_size=None))
    assert done.value.value.data == prefix + data


def test_each_masked_frame_has_a_fresh_key() -> None:
    """RFC 6455 §5.3: a new unpredictable key per frame, so the same payload differs."""
    frames = {data_frame(0x82, b"same payload", mask=True) for _ in range(50)}
    assert len(frames) == 50


@pytest.mark.parametrize("side", ["client", "server"])
async def test_write_now_frames_messages_without_websockets_framing(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common write skips send_binary/send_text; the peer still gets every message.

    Both roles: the client's frames are masked (a server refuses an unmasked one
    with 1002), the server's are not.
    """
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.protocol import Protocol

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("websockets framed a message that write_now() should have")

    got: asyncio.Queue[Message] = asyncio.Queue()
    server_side: asyncio.Future[WebsocketsTransport] = asyncio.get_running_loop().create_future()

    async def handler(connection: ServerConnection) -> None:
        transport = WebsocketsTransport(connection)
        server_side.set_result(transport)
        with contextlib.suppress(TransportClosed):
            while True:
                await got.put(await transport.recv())

    monkeypatch.setattr(Protocol, "send_binary", refuse)
    monkeypatch.setattr(Protocol, "send_text", refuse)
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with ws_connect(f"ws://127.0.0.1:{port}", compression=None) as connection:
            client = WebsocketsTransport(connection)
            messages: list[Message] = ["text é", b"\x00" * 200, b"b" * 70000, "", b""]
            # With a header: the message is header + message; with text, the bytes are
            # a text message's UTF-8 (and the header ASCII).
            parts: list[tuple[bytes, bytes, bool]] = [
                (b"h" * 17, b"p" * 300, False),
                (b"hdr", b"", False),
                (b"d1:0:", "\u65e5\u672c".encode() * 400, True),
                (b"", "caf\u00e9".encode(), True),
            ]
            writer = client if side == "client" else await server_side
            for message in messages:
                assert writer.write_now(message)
            for header, payload, text in parts:
                assert writer.write_now(payload, header, text)
            expected = messages + [
                (header + payload).decode() if text else header + payload
                for header, payload, text in parts
            ]
            if side == "client":
                received = [await got.get() for _ in expected]
            else:
                received = [await client.recv() for _ in expected]
            assert received == expected
            assert client.closed is None


async def test_write_now_leaves_framing_to_websockets_when_it_compresses() -> None:
    """With permessage-deflate each frame is transformed: websockets frames it (and it arrives)."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, compression="deflate") as server:
        port = server.sockets[0].getsockname()[1]
        async with ws_connect(f"ws://127.0.0.1:{port}", compression="deflate") as connection:
            transport = WebsocketsTransport(connection)
            protocol = connection.protocol
            assert protocol.extensions, "deflate was negotiated"
            framed: list[int] = []
            send_binary = protocol.send_binary

            def counting(data: bytes, fin: bool = True) -> None:
                framed.append(len(data))
                send_binary(data, fin)

            protocol.send_binary = counting  # type: ignore[method-assign]
            assert transport.write_now(b"z" * 5000)
            assert await transport.recv() == b"z" * 5000
            assert transport.write_now(b"z" * 5000, b"header")
            assert await transport.recv() == b"header" + b"z" * 5000
            assert framed == [5000, 5006]
            assert transport.write_now("\u00e9".encode() * 100, b"d7:0:", text=True)
            assert await transport.recv() == "d7:0:" + "\u00e9" * 100
            assert transport.write_now("\u00e9" * 3)
            assert await transport.recv() == "\u00e9" * 3
            assert framed == [5000, 5006]  # (text went through send_text)


async def test_write_now_writes_nothing_once_a_close_is_under_way() -> None:
    """CLOSING (our Close queued, not yet flushed): no data frame may follow it: False."""
    async with echo_pair() as transport:
        protocol = transport.connection.protocol
        protocol.send_close(1000, "bye")
        assert not transport.write_now(b"late")
        assert not transport.write_now("late", b"d1:0:")
        [close] = protocol.data_to_send()  # only the Close is queued
        assert close[:1] == b"\x88"
        transport.connection.transport.write(close)  # (the closing handshake completes)
        info = await transport.wait_closed()
        assert (info.code, info.sent_code) == (1000, 1000)


async def test_write_now_sends_websockets_own_queued_frames_first() -> None:
    """A ping websockets queued and has not flushed goes out before the message."""
    async with echo_pair() as transport:
        connection = transport.connection
        written: list[bytes] = []
        write = connection.transport.write

        def recording(data: bytes) -> None:
            written.append(bytes(data))
            write(data)

        connection.transport.write = recording  # type: ignore[method-assign]
        connection.protocol.send_ping(b"first")
        assert transport.write_now(b"second")
        assert [frame[0] & 0x0F for frame in written] == [0x9, 0x2]  # ping, then binary
        assert await transport.recv() == b"second"


async def test_write_now_refuses_a_message_inside_a_fragmented_one() -> None:
    """A fragmented message begun: websockets refuses another message, as it always did."""
    from websockets.exceptions import ProtocolError as WsProtocolError

    async with echo_pair() as transport:
        connection = transport.connection
        connection.protocol.send_binary(b"part", fin=False)
        connection.send_data()  # (the first fragment is on the wire: nothing else queued)
        with pytest.raises(WsProtocolError):
            transport.write_now(b"other")
        connection.protocol.send_continuation(b"", fin=True)  # (ended: the close is clean)
        connection.send_data()


async def _held(transport: WebsocketsTransport, count: int) -> None:
    """Wait (bounded by the test's timeout) until websockets holds ``count`` frames parsed."""
    assembler = transport.connection.recv_messages
    if len(assembler.frames) >= count:
        return
    arrived = asyncio.Event()
    put = assembler.put

    def counting(frame: object) -> None:
        put(frame)  # type: ignore[arg-type]
        if len(assembler.frames) >= count:
            arrived.set()

    assembler.put = counting  # type: ignore[method-assign]
    try:
        await arrived.wait()
    finally:
        del assembler.put  # (websockets' own again)


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_recv_takes_messages_websockets_parsed_already_without_its_recv(
    compression: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole messages websockets holds are returned as its recv() would, without calling it.

    With permessage-deflate websockets decompresses as it parses: held is plain data.
    """
    async with _client_of(_echo, compression=compression) as transport:
        assert bool(transport.connection.protocol.extensions) is (compression is not None)
        messages: list[Message] = [b"\x00bin", "text \u00e9\u65e5", b"", "", b"b" * 70000]
        for message in messages:
            assert transport.write_now(message)
        await _held(transport, len(messages))

        async def refuse(*_args: object) -> Message:
            raise AssertionError("websockets' recv() was used for a message it already held")

        monkeypatch.setattr(transport.connection, "recv", refuse)
        received = [await transport.recv() for _ in messages]
        assert received == messages
        assert [type(m) for m in received] == [type(m) for m in messages]


async def test_recv_leaves_a_fragmented_message_to_websockets() -> None:
    """Frames of an unfinished message are websockets' to reassemble (its recv() is used)."""
    from websockets.asyncio.server import ServerConnection

    async def fragments(connection: ServerConnection) -> None:
        await connection.send([b"a" * 10, b"b" * 10, b"c" * 10])
        await connection.send(b"whole")
        await connection.wait_closed()

    async with _client_of(fragments) as transport:
        connection = transport.connection
        await _held(transport, 4)
        calls: list[None] = []
        ws_recv = connection.recv

        async def counted(*args: bool | None) -> Message:
            calls.append(None)
            return await ws_recv(*args)

        connection.recv = counted  # type: ignore[method-assign]
        assert await transport.recv() == b"a" * 10 + b"b" * 10 + b"c" * 10
        assert len(calls) == 1
        assert await transport.recv() == b"whole"
        assert len(calls) == 1  # (a whole message again: taken as held)


async def test_recv_leaves_text_that_is_not_utf8_to_websockets_which_fails_with_1007() -> None:
    """Invalid UTF-8 in a text frame: the connection fails as websockets fails it (1007)."""
    from websockets.asyncio.server import ServerConnection

    async def broken(connection: ServerConnection) -> None:
        connection.protocol.send_text(b"ok \xff\xfe")  # (websockets does not check what it sends)
        connection.send_data()
        await connection.wait_closed()

    async with _client_of(broken) as transport:
        await _held(transport, 1)
        with pytest.raises(TransportClosed) as ended:
            await transport.recv()
        assert ended.value.info.sent_code == 1007


async def test_recv_of_held_messages_resumes_reading_websockets_paused() -> None:
    """Taking held frames lets websockets' flow control resume reading the socket.

    With a queue of 4 frames websockets pauses reading while it holds more; a
    fast path that emptied the queue without telling it would leave reading
    paused for good, and the next recv() would wait for ever (the test's timeout).
    """
    from websockets.asyncio.server import ServerConnection

    count = 2000

    async def stream(connection: ServerConnection) -> None:
        for index in range(count):
            await connection.send(index.to_bytes(4, "big") + b"x" * 200)
        await connection.wait_closed()

    async with _client_of(stream, max_queue=4) as transport:
        await _held(transport, 5)
        assert transport.connection.recv_messages.paused  # (over its high-water mark of 4)
        received = [await transport.recv() for _ in range(count)]
        assert [int.from_bytes(m[:4], "big") for m in received] == list(range(count))


def test_the_frame_queue_is_found_only_where_it_is_the_known_one() -> None:
    """Another websockets' internals (or none) leave recv() on websockets' own path."""
    from types import SimpleNamespace

    from tether.asyncio.websockets_engine import _frame_queue

    assert _frame_queue(SimpleNamespace()) == (None, None)  # type: ignore[arg-type]
    odd = SimpleNamespace(recv_messages=SimpleNamespace(frames=SimpleNamespace(queue=[])))
    assert _frame_queue(odd) == (None, None)  # type: ignore[arg-type]


async def test_the_installed_websockets_has_the_frame_queue_recv_reads() -> None:
    """So that a websockets release that moves it is noticed here, not as a slower recv()."""
    import collections

    async with echo_pair() as transport:
        assembler, frames = transport._assembler, transport._frames_in
        assert assembler is transport.connection.recv_messages
        assert isinstance(frames, collections.deque)


async def test_recv_ready_holds_nothing_once_recv_reported_the_end() -> None:
    """After text that is not UTF-8 (1007), a whole message queued behind it stays put.

    websockets took the bad frame off its queue before it failed the connection, so
    the next frame is a whole message. The receive loops ask recv_ready() before
    recv(): it must report nothing once recv() reported the end, as recv() does.
    """
    from websockets.asyncio.server import ServerConnection

    async def broken_then_whole(connection: ServerConnection) -> None:
        connection.protocol.send_text(b"bad \xff")  # (websockets does not check what it sends)
        connection.protocol.send_binary(b"behind")
        connection.send_data()
        await connection.wait_closed()

    async with _client_of(broken_then_whole, close_timeout=0.5) as transport:
        await _held(transport, 2)
        with pytest.raises(TransportClosed) as ended:
            await transport.recv()
        assert ended.value.info.sent_code == 1007
        [behind] = transport.connection.recv_messages.frames.queue  # (still queued, whole)
        assert behind.data == b"behind"
        assert transport.recv_ready() is None
        with pytest.raises(TransportClosed):
            await transport.recv()


async def test_recv_ready_leaves_a_frame_to_the_get_websockets_has_under_way() -> None:
    """A frame put for a recv() waiting in websockets is that recv()'s, not recv_ready()'s.

    Between websockets' put() and its waiting get() resuming, the frame is queued
    while the get is under way: taking it there would leave that get an empty queue.
    """
    async with echo_pair() as transport:
        assembler = transport.connection.recv_messages
        seen: list[Message | None] = []
        put = assembler.put

        def put_then_look(frame: object) -> None:
            put(frame)  # type: ignore[arg-type]
            seen.append(transport.recv_ready())

        waiting = asyncio.ensure_future(transport.recv())
        for _ in range(3):
            await asyncio.sleep(0)  # (its get() waits on an empty queue)
        assert assembler.get_in_progress
        assembler.put = put_then_look  # type: ignore[method-assign]
        try:
            assert transport.write_now(b"one")
            assert await asyncio.wait_for(waiting, 5) == b"one"
        finally:
            del assembler.put
        assert seen == [None]
