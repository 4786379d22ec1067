"""``tether.Session`` and the plain session layer, over an in-memory fake transport."""

from __future__ import annotations

import asyncio

import pytest

import tether
from tether.asyncio.engine import ClosedInfo, Message, PongHandler, Transport, TransportClosed
from tether.asyncio.session import PlainServerLayer, RequestInfo, ServerLayer, Session

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

    def feed(self, message: Message) -> None:
        self._incoming.put_nowait(message)

    def peer_closed(self, info: ClosedInfo) -> None:
        self._incoming.put_nowait(info)

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


async def _open(max_queue: int = 64) -> tuple[Session, FakeTransport, asyncio.Task[ClosedInfo]]:
    transport = FakeTransport()
    layer = PlainServerLayer(max_queue=max_queue)
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

        async def received(
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
