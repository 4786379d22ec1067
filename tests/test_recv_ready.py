"""Messages the engine holds already are read without awaiting ``Transport.recv()``.

``Transport.recv_ready()`` hands over a whole message the engine has parsed (on a
stream most arrive several to a socket read); the receive loops of the client and
of the server's sessions await ``recv()`` only when nothing is held. These tests
count the awaits of ``WebsocketsTransport.recv`` while a burst of messages crosses
real loopback connections: every message arrives once and in order, and far fewer
``recv()`` calls than messages are made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from tests.test_session import FakeTransport

import tether
from tether.asyncio.engine import Message
from tether.asyncio.session import Session
from tether.asyncio.websockets_engine import WebsocketsTransport

pytestmark = pytest.mark.timeout(20)

COUNT = 600


def _numbered(index: int) -> bytes:
    return index.to_bytes(4, "big") + b"m" * 96


def _counting_recv(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Count the awaits of ``WebsocketsTransport.recv`` (both sides, one process)."""
    calls: list[None] = []
    recv: Callable[[WebsocketsTransport], Coroutine[Any, Any, Message]] = WebsocketsTransport.recv

    async def counted(self: WebsocketsTransport) -> Message:
        calls.append(None)
        return await recv(self)

    monkeypatch.setattr(WebsocketsTransport, "recv", counted)
    return calls


async def test_a_transport_holds_nothing_unless_its_engine_says_so() -> None:
    """The interface's default: None (await recv())."""
    transport = FakeTransport()  # (an engine without a recv_ready of its own)
    transport.feed(b"queued")
    assert transport.recv_ready() is None
    assert await transport.recv() == b"queued"


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "tether.v1"])
async def test_a_client_reads_a_burst_without_awaiting_recv_per_message(
    resume: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sends COUNT messages at once; the client's recv() takes most as held."""

    async def burst(session: Session) -> None:
        await session.recv()  # (the client is ready)
        for index in range(COUNT):
            await session.send(_numbered(index))
        await session.recv()  # (until the client is done)

    server = tether.serve(burst, "127.0.0.1", 0)
    await server.start()
    try:
        async with tether.connect(f"ws://127.0.0.1:{server.port}/", resume=resume) as conn:
            calls = _counting_recv(monkeypatch)
            await conn.send(b"go")
            received = [await conn.recv() for _ in range(COUNT)]
            assert received == [_numbered(index) for index in range(COUNT)]
            # (Mostly the client's: the server's session reads only the client's acks.)
            assert len(calls) < COUNT // 2, f"{len(calls)} awaits of recv() for {COUNT}"
            await conn.send(b"done")
    finally:
        await server.shutdown()


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "tether.v1"])
async def test_a_server_session_reads_a_burst_without_awaiting_recv_per_message(
    resume: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client sends COUNT messages at once; the handler's recv() takes most as held."""
    got: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
    counted: list[list[None]] = []

    async def sink(session: Session) -> None:
        counted.append(_counting_recv(monkeypatch))
        await session.send(b"ready")
        received = [await session.recv() for _ in range(COUNT)]
        got.set_result(received)
        await session.recv()  # (until the client closes)

    server = tether.serve(sink, "127.0.0.1", 0)
    await server.start()
    try:
        async with tether.connect(f"ws://127.0.0.1:{server.port}/", resume=resume) as conn:
            assert await conn.recv() == b"ready"
            for index in range(COUNT):
                await conn.send(_numbered(index))
            received = await asyncio.wait_for(got, 15)
            assert received == [_numbered(index) for index in range(COUNT)]
            [calls] = counted
            # (Mostly the server's: the client reads only the server's acks.)
            assert len(calls) < COUNT // 2, f"{len(calls)} awaits of recv() for {COUNT}"
    finally:
        await server.shutdown()


async def test_a_client_reader_task_takes_held_messages_without_awaiting_recv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tether.v1 client that sends a burst without reading reads in a task (for the
    acks); the echoes it reads there are taken as held too."""
    echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def echo(session: Session) -> None:
        count = 0
        async for message in session:
            await session.send(message)
            count += 1
            if count == COUNT:
                echoed.set_result(None)

    server = tether.serve(echo, "127.0.0.1", 0)
    await server.start()
    try:
        async with tether.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            tally = {"awaits": 0, "puts": 0}
            recv = WebsocketsTransport.recv

            async def counted(self: WebsocketsTransport) -> Message:
                link = conn._link
                if link is not None and asyncio.current_task() is link.reader:
                    tally["awaits"] += 1
                return await recv(self)

            monkeypatch.setattr(WebsocketsTransport, "recv", counted)
            inbox = conn._inbox
            put = inbox.put

            async def counted_put(message: Message) -> None:
                tally["puts"] += 1
                await put(message)

            monkeypatch.setattr(inbox, "put", counted_put)
            for index in range(COUNT):
                await conn.send(_numbered(index))
            # Every echo is on its way; the reader the unacked burst started (and
            # nothing else: no recv() runs) reads them as they arrive.
            await asyncio.wait_for(echoed, 15)
            received = [await conn.recv() for _ in range(COUNT)]
            assert received == [_numbered(index) for index in range(COUNT)]
            assert tally["puts"] >= COUNT // 4, f"the reader task read only {tally['puts']}"
            assert tally["awaits"] < tally["puts"] // 4, tally
    finally:
        await server.shutdown()


async def test_a_session_reader_task_takes_held_messages_without_awaiting_recv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tether.v1 session told to read ahead reads in a task; held messages go straight
    from the engine to its inbox."""
    got: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
    tasks: list[object] = []

    async def sink(session: Session) -> None:
        session.read_ahead(keep=True)  # (from now on a reader task reads)
        tasks.append(session._reader_task)
        await session.send(b"ready")
        got.set_result([await session.recv() for _ in range(COUNT)])
        await session.recv()  # (until the client closes)

    server = tether.serve(sink, "127.0.0.1", 0)
    await server.start()
    try:
        async with tether.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            assert await conn.recv() == b"ready"
            calls = _counting_recv(monkeypatch)
            for index in range(COUNT):
                await conn.send(_numbered(index))
            received = await asyncio.wait_for(got, 15)
            assert received == [_numbered(index) for index in range(COUNT)]
            [task] = tasks
            assert task is not None, "no reader task read the session"
            assert len(calls) < COUNT // 2, f"{len(calls)} awaits of recv() for {COUNT}"
    finally:
        await server.shutdown()


class _Holding(FakeTransport):
    """test_session's fake connection with an engine that holds messages.

    Of the messages the test puts in, the first arrives as ``recv()`` gets it and the
    rest are held (``recv_ready``); the awaits of ``recv()`` are counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Message] = []
        self.awaits = 0

    def put(self, messages: list[Message]) -> None:
        first, *rest = messages
        self.held.extend(rest)
        self.feed(first)

    def recv_ready(self) -> Message | None:
        return self.held.pop(0) if self.held else None

    async def recv(self) -> Message:
        self.awaits += 1
        return await super().recv()


async def test_a_session_pump_takes_held_messages_without_awaiting_recv() -> None:
    """A layer that does not read on demand pumps each connection in a task: it awaits
    recv() only when the engine holds nothing."""
    from tether.asyncio.session import PlainServerLayer, RequestInfo

    transport = _Holding()
    layer = PlainServerLayer(max_queue=1000)
    session = await layer.open(transport, RequestInfo("/p", remote_address=("127.0.0.1", 5555)))
    pump = session.attach(transport)
    for _ in range(3):
        await asyncio.sleep(0)  # (the pump starts and waits: nothing is held)
    assert transport.awaits == 1
    messages: list[Message] = [_numbered(index) for index in range(100)]
    transport.put(messages)
    assert [await session.recv() for _ in messages] == messages
    assert transport.awaits == 2  # (the first message woke it; then it waits again)
    pump.cancel()
