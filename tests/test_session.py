"""``tether.Session`` and the plain session layer, over an in-memory fake transport."""

from __future__ import annotations

import asyncio

import pytest

import tether
from tether.asyncio.engine import (
    ClosedInfo,
    CloseHandler,
    Message,
    PongHandler,
    Transport,
    TransportClosed,
)
from tether.asyncio.session import PlainServerLayer, RequestInfo, ServerLayer, Session
from tether.exceptions import ConfigurationError
from tether.heartbeat import Reading

pytestmark = pytest.mark.timeout(10)


class FakeTransport(Transport):
    """A connection whose peer is the test: it feeds messages and closes by hand."""

    def __init__(self) -> None:
        self.subprotocol = None
        self.remote_address = ("127.0.0.1", 5555)
        self.headers = {}
        self.sent: list[Message] = []
        self.close_calls: list[tuple[int, str]] = []
        self._incoming: asyncio.Queue[Message | ClosedInfo] = asyncio.Queue()
        self._closed: ClosedInfo | None = None
        self._close_callbacks: list[CloseHandler] = []
        self._ending: ClosedInfo | None = None

    def feed(self, message: Message) -> None:
        self._incoming.put_nowait(message)

    def peer_closed(self, info: ClosedInfo) -> None:
        self._incoming.put_nowait(info)
        if self._ending is None:
            # Like an engine: told of the close at once (the messages before it may
            # still be unread).
            self._ending = info
            for callback in self._close_callbacks:
                asyncio.get_running_loop().call_soon(callback, info)

    def add_close_callback(self, callback: CloseHandler) -> None:
        self._close_callbacks.append(callback)

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise TransportClosed(self._closed)
        self.sent.append(message)

    async def recv(self) -> Message:
        if self._closed is not None:
            raise TransportClosed(self._closed)
        item = await self._incoming.get()
        if isinstance(item, ClosedInfo):
            self._closed = item
            raise TransportClosed(item)
        return item

    async def ping(self, payload: bytes) -> None:
        raise AssertionError("not used")

    def on_pong(self, handler: PongHandler) -> None:
        raise AssertionError("not used")

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        self.close_calls.append((code, reason))
        info = ClosedInfo(code, reason, clean=True, sent_code=code)
        self.peer_closed(info)
        return info

    def abort(self) -> None:
        self.peer_closed(ClosedInfo(1006, "", clean=False))

    async def wait_closed(self) -> ClosedInfo:
        raise AssertionError("not used")

    @property
    def closed(self) -> ClosedInfo | None:
        return self._closed


async def _open(
    max_queue: int = 64, max_queue_bytes: int | None = None
) -> tuple[Session, FakeTransport, asyncio.Task[ClosedInfo]]:
    transport = FakeTransport()
    layer = PlainServerLayer(max_queue=max_queue, max_queue_bytes=max_queue_bytes)
    session = await layer.open(transport, RequestInfo("/p", remote_address=("127.0.0.1", 5555)))
    return session, transport, session.attach(transport)


async def test_messages_flow_from_connection_to_inbox() -> None:
    """Messages the connection receives come out of recv() in order."""
    session, transport, _ = await _open()
    transport.feed("a")
    transport.feed(b"b")
    assert [await session.recv(), await session.recv()] == ["a", b"b"]


async def test_send_goes_to_the_attached_connection() -> None:
    """send() puts the message on the current connection."""
    session, transport, _ = await _open()
    await session.send("out")
    assert transport.sent == ["out"]


async def test_send_refuses_other_types() -> None:
    """send() of something other than str or bytes raises TypeError."""
    session, _, _ = await _open()
    with pytest.raises(TypeError):
        await session.send(42)  # type: ignore[arg-type]


async def test_send_takes_bytes_like_messages_as_bytes() -> None:
    """send(bytearray) and send(memoryview) go out as bytes, as ClientConnection.send takes
    them (before: TypeError); a buffer changed after the send does not change what went."""
    session, transport, _ = await _open()
    buffer = bytearray(b"ab")
    await session.send(buffer)
    buffer[0] = ord("x")
    await session.send(memoryview(b"cd"))
    assert transport.sent == [b"ab", b"cd"]
    assert all(type(message) is bytes for message in transport.sent)


async def test_connection_end_ends_the_plain_session() -> None:
    """In plain mode the session ends with its connection's code."""
    session, transport, pump = await _open()
    transport.peer_closed(ClosedInfo(1001, "bye", clean=True))
    assert (await pump).code == 1001
    assert (await session.wait_closed()).code == 1001


async def test_queued_messages_are_read_before_the_end() -> None:
    """Messages received before the close are still delivered, then recv() raises."""
    session, transport, pump = await _open()
    transport.feed("last words")
    transport.peer_closed(ClosedInfo(1000, "", clean=True))
    await pump
    assert await session.recv() == "last words"
    with pytest.raises(tether.ConnectionClosedOK):
        await session.recv()


async def test_abnormal_end_raises_connection_closed_error() -> None:
    """A 1006 end makes recv() raise ConnectionClosedError carrying 1006."""
    session, transport, pump = await _open()
    transport.abort()
    await pump
    with pytest.raises(tether.ConnectionClosedError) as raised:
        await session.recv()
    assert raised.value.code == 1006


async def test_async_for_stops_at_any_end() -> None:
    """``async for`` stops quietly, even on 1006; ``closed`` then says how."""
    session, transport, _ = await _open()
    transport.feed("x")
    transport.abort()
    received = [message async for message in session]
    assert received == ["x"]
    assert session.closed is not None
    assert session.closed.code == 1006


async def test_close_validates_the_code_before_any_io() -> None:
    """close(1006) raises InvalidCloseCode and nothing is sent."""
    session, transport, _ = await _open()
    with pytest.raises(tether.InvalidCloseCode):
        await session.close(1006)
    assert transport.close_calls == []
    assert session.closed is None


async def test_close_sends_code_and_ends_the_session() -> None:
    """close(4000, reason) closes the connection with them and ends the session."""
    session, transport, _ = await _open()
    info = await session.close(4000, "done")
    assert transport.close_calls == [(4000, "done")]
    assert info.code == 4000
    assert session.closed is not None


async def test_close_twice_returns_the_first_end() -> None:
    """A second close() does not touch the connection and returns how it ended."""
    session, transport, _ = await _open()
    await session.close(4000)
    info = await session.close(4001)
    assert transport.close_calls == [(4000, "")]
    assert info.code == 4000


async def test_full_inbox_pauses_reading() -> None:
    """With max_queue=2 the pump holds a third message and stops reading the connection."""
    session, transport, _ = await _open(max_queue=2)
    for message in ("1", "2", "3", "4"):
        transport.feed(message)
    for _ in range(20):  # let the pump run as far as it can
        await asyncio.sleep(0)
    assert transport._incoming.qsize() == 1
    assert await session.recv() == "1"
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport._incoming.qsize() == 0


async def test_inbox_byte_bound_pauses_reading() -> None:
    """With max_queue_bytes=10, two unread 6-byte messages make the pump hold a third."""
    session, transport, _ = await _open(max_queue_bytes=10)
    for message in (b"aaaaaa", b"bbbbbb", b"cccccc", b"dddddd"):
        transport.feed(message)
    for _ in range(20):  # let the pump run as far as it can
        await asyncio.sleep(0)
    assert transport._incoming.qsize() == 1
    assert await session.recv() == b"aaaaaa"
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport._incoming.qsize() == 0


async def test_inbox_byte_bound_admits_one_message_larger_than_it() -> None:
    """A message over max_queue_bytes still gets in when the inbox is empty."""
    session, transport, _ = await _open(max_queue_bytes=4)
    transport.feed("x" * 100)
    assert await asyncio.wait_for(session.recv(), 1) == "x" * 100


def test_inbox_byte_bound_must_be_positive() -> None:
    """max_queue_bytes=0 is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Session(PlainServerLayer(), RequestInfo("/p"), max_queue_bytes=0)


async def test_layer_can_keep_a_session_after_its_connection() -> None:
    """A layer whose connection_lost returns False keeps the session open for a new connection."""

    class Keeping(ServerLayer):
        async def open(self, transport: Transport, request: RequestInfo) -> Session:
            return Session(self, request)

        def connection_lost(self, session: Session, info: ClosedInfo) -> bool:
            return False

    layer = Keeping()
    first = FakeTransport()
    session = await layer.open(first, RequestInfo("/"))
    pump = session.attach(first)
    first.abort()
    await pump
    assert session.closed is None
    assert session.transport is None
    second = FakeTransport()
    session.attach(second)
    second.feed("again")
    assert await session.recv() == "again"


async def test_layer_decodes_and_encodes_messages() -> None:
    """The layer's received() and send() sit between the connection and the session."""

    class Upper(PlainServerLayer):
        async def send(self, session: Session, transport: Transport, message: Message) -> None:
            await transport.send(f"<{message!s}>")

        def received(
            self, session: Session, transport: Transport, message: Message
        ) -> tuple[Message, ...]:
            return (str(message).upper(), str(message).upper())

    transport = FakeTransport()
    layer = Upper()
    session = await layer.open(transport, RequestInfo("/"))
    session.attach(transport)
    transport.feed("hi")
    assert [await session.recv(), await session.recv()] == ["HI", "HI"]
    await session.send("x")
    assert transport.sent == ["<x>"]


async def test_session_ids_are_unique() -> None:
    """Each new session gets its own random id."""
    ids = {(await _open())[0].id for _ in range(50)}
    assert len(ids) == 50


def test_max_queue_must_be_positive() -> None:
    """A session inbox of size 0 is refused."""
    with pytest.raises(tether.ConfigurationError):
        Session(PlainServerLayer(), RequestInfo("/"), max_queue=0)


# -- plain sessions: attach_plain, no pump and no inbox ------------------------------------------


class EngineLikeTransport(FakeTransport):
    """Closes like websockets: the close is known at once (callbacks), while recv() still
    hands over what arrived before it, then raises."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[object] = []
        self.recv_tasks: set[asyncio.Task[object] | None] = set()

    def peer_closed(self, info: ClosedInfo) -> None:
        if self._closed is not None:
            return
        self._closed = info
        self._incoming.put_nowait(info)
        loop = asyncio.get_running_loop()
        for callback in self._callbacks:
            loop.call_soon(callback, info)  # type: ignore[arg-type]

    async def recv(self) -> Message:
        self.recv_tasks.add(asyncio.current_task())
        if self._incoming.empty() and self._closed is not None:
            raise TransportClosed(self._closed)
        item = await self._incoming.get()
        if isinstance(item, ClosedInfo):
            raise TransportClosed(item)
        return item

    def add_close_callback(self, callback: object) -> None:
        self._callbacks.append(callback)


async def _open_plain() -> tuple[Session, EngineLikeTransport]:
    transport = EngineLikeTransport()
    layer = PlainServerLayer()
    session = await layer.open(transport, RequestInfo("/p"))
    assert layer.is_plain(session, transport)
    session.attach_plain(transport)
    return session, transport


async def test_plain_recv_reads_the_connection_in_the_callers_task() -> None:
    """recv() of a plain session takes messages from the connection in the handler's task."""
    session, transport = await _open_plain()
    transport.feed("a")
    transport.feed(b"b")
    assert [await session.recv(), await session.recv()] == ["a", b"b"]
    assert transport.recv_tasks == {asyncio.current_task()}


async def test_plain_send_goes_straight_to_the_connection() -> None:
    """send() of a plain session writes to the connection; after the end it raises."""
    session, transport = await _open_plain()
    await session.send("out")
    assert transport.sent == ["out"]
    transport.peer_closed(ClosedInfo(1000, "", clean=True))
    await session.wait_closed()
    with pytest.raises(tether.ConnectionClosedOK):
        await session.send("late")


async def test_plain_session_ends_when_the_peer_closes_during_recv() -> None:
    """A handler blocked in recv() gets ConnectionClosedOK when the peer closes with 1000."""
    session, transport = await _open_plain()
    blocked = asyncio.ensure_future(session.recv())
    await asyncio.sleep(0)
    transport.peer_closed(ClosedInfo(1000, "bye", clean=True))
    with pytest.raises(tether.ConnectionClosedOK):
        await asyncio.wait_for(blocked, 1)
    assert session.closed == ClosedInfo(1000, "bye", clean=True)
    assert session.transport is None


async def test_plain_session_ends_with_its_connection_while_nobody_reads() -> None:
    """The session ends when the connection closes even if the handler never calls recv()."""
    session, transport = await _open_plain()
    transport.abort()
    info = await asyncio.wait_for(session.wait_closed(), 1)
    assert (info.code, info.clean) == (1006, False)


async def test_plain_messages_before_the_close_are_read_then_the_end() -> None:
    """What arrived before the close comes out of ``async for``; then the loop stops."""
    session, transport = await _open_plain()
    transport.feed("x")
    transport.feed("y")
    transport.peer_closed(ClosedInfo(4000, "", clean=True))
    await asyncio.sleep(0)  # the close callback has run: the session has ended
    assert session.closed is not None
    assert [message async for message in session] == ["x", "y"]
    with pytest.raises(tether.ConnectionClosedError):
        await session.recv()


async def test_plain_session_ended_on_an_open_connection_takes_nothing_more() -> None:
    """end() while the connection is still open: recv() raises at once."""
    session, transport = await _open_plain()
    transport.feed("unread")
    session.end(ClosedInfo(1012, "restart", clean=True, sent_code=1012))
    with pytest.raises(tether.ConnectionClosedError):
        await session.recv()


async def test_plain_close_goes_through_the_layer() -> None:
    """close() of a plain session closes the connection with the code and ends the session."""
    session, transport = await _open_plain()
    info = await session.close(4001, "done")
    assert transport.close_calls == [(4001, "done")]
    assert info.code == 4001
    assert (await session.wait_closed()).code == 4001


def test_a_coroutine_received_override_is_refused_at_class_definition() -> None:
    """received() is a plain function: an async override fails when its class is made."""
    with pytest.raises(TypeError, match="plain function"):

        class Old(PlainServerLayer):
            async def received(  # type: ignore[override]
                self, session: Session, transport: Transport, message: Message
            ) -> tuple[Message, ...]:
                return (message,)


async def test_only_layers_that_pass_messages_unchanged_are_plain() -> None:
    """PlainServerLayer is plain; a subclass with its own message hooks is not."""

    class Upper(PlainServerLayer):
        def received(
            self, session: Session, transport: Transport, message: Message
        ) -> tuple[Message, ...]:
            return (str(message).upper(),)

    transport = FakeTransport()
    assert PlainServerLayer().is_plain(Session(PlainServerLayer(), RequestInfo("/")), transport)
    layer = Upper()
    assert not layer.is_plain(await layer.open(transport, RequestInfo("/")), transport)


async def test_a_layer_with_subprotocols_is_plain_where_none_was_negotiated() -> None:
    """tether.v1's layer gives a client that did not negotiate tether.v1 a plain session."""
    from tether.asyncio.resume_server import TetherV1ServerLayer

    layer = TetherV1ServerLayer()
    plain = FakeTransport()
    session = await layer.open(plain, RequestInfo("/"))
    assert layer.is_plain(session, plain)
    v1 = FakeTransport()
    v1.subprotocol = "tether.v1"
    assert not layer.is_plain(session, v1)


# -- the pump's inbox: waiters made on demand ----------------------------------------------------


async def test_cancelling_one_reader_leaves_the_other_waiting() -> None:
    """Two tasks in recv(); one is cancelled; the other still gets the next message."""
    session, transport, _ = await _open()
    first = asyncio.ensure_future(session.recv())
    second = asyncio.ensure_future(session.recv())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    transport.feed("for the second")
    assert await asyncio.wait_for(second, 1) == "for the second"
    assert first.cancelled()


async def test_cancelling_one_wait_closed_leaves_the_other_waiting() -> None:
    """A cancelled wait_closed() does not cancel another caller's."""
    session, transport, _ = await _open()
    first = asyncio.ensure_future(session.wait_closed())
    second = asyncio.ensure_future(session.wait_closed())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    transport.peer_closed(ClosedInfo(1001, "", clean=True))
    assert (await asyncio.wait_for(second, 1)).code == 1001


async def test_end_wakes_a_reader_blocked_on_an_empty_inbox() -> None:
    """A session ended by its layer wakes recv() at once (ConnectionClosed)."""
    session, _, _ = await _open()
    blocked = asyncio.ensure_future(session.recv())
    await asyncio.sleep(0)
    session.end(ClosedInfo(1012, "", clean=True, sent_code=1012))
    with pytest.raises(tether.ConnectionClosedError):
        await asyncio.wait_for(blocked, 1)


# -- order across connections: a message held for a full inbox goes first --------------------


class _Resuming(ServerLayer):
    """Keeps its sessions across connections (as tether.v1 does), pump or on demand."""

    def __init__(self, *, on_demand: bool) -> None:
        self.reads_on_demand = on_demand

    async def open(self, transport: Transport, request: RequestInfo) -> Session:
        return Session(self, request, max_queue=2)

    def connection_lost(self, session: Session, info: ClosedInfo) -> bool:
        return False


async def _held_across_a_new_connection(on_demand: bool) -> tuple[Session, FakeTransport]:
    """m1, m2 in a full inbox, m3 held by the first connection's reader; m4 on the second."""
    layer = _Resuming(on_demand=on_demand)
    first = FakeTransport()
    session = await layer.open(first, RequestInfo("/"))
    session.attach(first)
    if on_demand:
        session.read_ahead()  # as a ping or the ack alarm does while the handler is busy
    for message in ("m1", "m2", "m3"):
        first.feed(message)
    for _ in range(20):
        await asyncio.sleep(0)
    assert first._incoming.qsize() == 0  # m3 was read and waits for room in the inbox
    first.abort()  # 1006: the client resumes on a new connection
    second = FakeTransport()
    session.attach(second)
    second.feed("m4")
    for _ in range(20):
        await asyncio.sleep(0)
    return session, second


@pytest.mark.parametrize("on_demand", [True, False], ids=["on-demand", "pump"])
async def test_a_message_held_for_room_is_delivered_before_the_next_connections(
    on_demand: bool,
) -> None:
    """The handler gets m1..m4 in order, though m3 waited for room while m4 arrived.

    (Before, the handler read m4 from the new connection itself as soon as the inbox
    was empty, before the old reader put m3 in: m1, m2, m4, m3 — and tether.v1
    committed m3's position with m4's, acking a message the handler had not taken.)
    """
    session, _ = await _held_across_a_new_connection(on_demand)

    async def handler() -> list[Message]:
        # As a handler does: recv() returns without yielding while the inbox has some.
        return [await session.recv() for _ in range(4)]

    got = await asyncio.wait_for(handler(), 1)
    assert got == ["m1", "m2", "m3", "m4"]


async def test_reading_reports_the_inbox_to_the_heartbeat() -> None:
    """Running counts of messages taken and of waits for room, and whether it is full now."""
    session, transport, _ = await _open(max_queue=1)
    assert session.reading() == Reading(taken=0, held=0, full=False)
    for message in ("1", "2"):
        transport.feed(message)
    for _ in range(20):
        await asyncio.sleep(0)
    assert session.reading() == Reading(taken=0, held=1, full=True)  # the pump holds "2"
    assert await session.recv() == "1"
    for _ in range(20):
        await asyncio.sleep(0)
    assert session.reading() == Reading(taken=1, held=1, full=True)
    assert await session.recv() == "2"
    assert session.reading() == Reading(taken=2, held=1, full=False)
