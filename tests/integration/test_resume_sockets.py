"""tether.v1 over real sockets: restarts, aborts and every refused resume, end to end.

A tether client and a tether server on loopback; the faults are real (a 1012
drain, an aborted TCP connection, a SIGHUP to a real ``tether serve`` process).
Every test checks with sequence numbers that nothing was lost, duplicated or
reordered, and that no exception reached the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.events import EventRecorder
from tests.support.eventually import eventually
from tests.support.loop_errors import loop_errors  # noqa: F401 - autouse fixture
from tests.support.node import NodeWsServer
from tests.support.ports import free_port, wait_for_port
from tests.support.procs import JsonLineProcess, tether_cli
from tests.support.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawClient, encode_frame
from websockets.asyncio.client import connect as ws_connect

import tether
import tether.asyncio.client as client_module
import tether.asyncio.resume_server as resume_server_module
from tether.asyncio.engine import Message, Transport, Writer
from tether.asyncio.resume_client import READ_AHEAD_MESSAGES, TetherV1ClientLayer
from tether.asyncio.resume_server import TetherV1ServerLayer
from tether.asyncio.session import Session
from tether.asyncio.websockets_client import fast_writer
from tether.asyncio.websockets_engine import WebsocketsTransport
from tether.backoff import BackoffConfig
from tether.events import (
    Connected,
    Disconnected,
    GaveUp,
    Reconnecting,
    Resumed,
    SessionLost,
    State,
)
from tether.protocol import Hello, Welcome, decode, encode
from tether.ratelimit import ResumeLimit
from tether.resume import ResumeConfig
from tether.stores.base import SessionRecord, SessionStore, StoreUnavailable
from tether.stores.memory import MemoryStore
from tether.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

#: Messages streamed each way by the restart and abort tests.
N = 10_000
#: Quick reconnects: the tests measure correctness, not the production delays.
FAST = BackoffConfig(base=0.05, cap=0.2, restart_window=(0.05, 0.2), stability_period=0.5)

Spawn = Callable[[JsonLineProcess], Awaitable[JsonLineProcess]]


class Echo:
    """A handler that records ``c<n>`` messages and answers each with ``s<n>``."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.sessions: list[Session] = []

    async def __call__(self, session: Session) -> None:
        self.sessions.append(session)
        async for message in session:
            assert isinstance(message, str)
            n = int(message[1:])
            self.got.append(n)
            await session.send(f"s{n}")


async def start_server(
    handler: Callable[[Session], Awaitable[None]],
    store: SessionStore,
    port: int = 0,
    **layer: Any,
) -> tether.Server:
    """A tether.v1 server on loopback with short timeouts."""
    layer.setdefault("goaway_retry_ms", 100)
    server = tether.serve(
        handler,
        "127.0.0.1",
        port,
        heartbeat=None,
        drain_window=0.05,
        close_timeout=2.0,
        layer=TetherV1ServerLayer(store=store, **layer),
    )
    return await server.start()


def client(port: int, **kwargs: Any) -> tether.ClientConnection:
    """A tether client with quick reconnects and no heartbeat."""
    kwargs.setdefault("backoff", FAST)
    return tether.connect(f"ws://127.0.0.1:{port}/", heartbeat=None, send_timeout=None, **kwargs)


@dataclass
class Running:
    """A server, one client of it and the client's events, for the length of a test."""

    #: Replaced by a test that restarts the server; the one here at the end is shut down.
    server: tether.Server
    conn: tether.ClientConnection
    events: EventRecorder


@asynccontextmanager
async def running(server: tether.Server, conn: tether.ClientConnection) -> AsyncIterator[Running]:
    """Collect ``conn``'s events; afterwards close it, stop the collector, shut the server down."""
    run = Running(server, conn, EventRecorder(conn))
    try:
        yield run
    finally:
        await conn.close()
        await run.events.stop()
        await run.server.shutdown()


async def echoes(conn: tether.ClientConnection, n: int) -> None:
    """Send ``c<n>`` and check that :class:`Echo` answers ``s<n>`` within 5 s."""
    await conn.send(f"c{n}")
    assert await asyncio.wait_for(conn.recv(), 5) == f"s{n}"


async def stream(
    conn: tether.ClientConnection, handler: Echo, disrupt: Callable[[int], Awaitable[None]]
) -> list[int]:
    """Send c1..cN, receive the N answers; call ``disrupt(k)`` at five points on the way."""
    received: list[int] = []

    async def send_all() -> None:
        for n in range(1, N + 1):
            await conn.send(f"c{n}")

    async def receive_all() -> None:
        while len(received) < N:
            message = await conn.recv()
            assert isinstance(message, str)
            received.append(int(message[1:]))

    tasks = [asyncio.ensure_future(send_all()), asyncio.ensure_future(receive_all())]
    try:
        for k in range(1, 6):
            await eventually(lambda k=k: len(handler.got) >= k * N // 6, 20)  # type: ignore[misc]
            await disrupt(k)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return received


@pytest.mark.timeout(60)
async def test_ten_thousand_each_way_through_five_planned_restarts() -> None:
    """restart() (1012) then a new serve() on the same store, five times: 0 lost, 0 dup, order."""
    store = MemoryStore()
    handler = Echo()
    server = await start_server(handler, store)
    port = server.port
    async with running(server, await client(port)) as run:

        async def restart(_k: int) -> None:
            await run.server.restart()
            run.server = await start_server(handler, store, port)

        received = await stream(run.conn, handler, restart)
    expected = list(range(1, N + 1))
    assert handler.got == expected
    assert received == expected
    assert len(run.events.of(Resumed)) == 5
    assert run.events.of(SessionLost) == []


@pytest.mark.timeout(60)
async def test_ten_thousand_each_way_through_five_transport_aborts() -> None:
    """Five 1006 at random moments, server or client side: 0 lost, 0 duplicated, order kept."""
    rng = random.Random(1006)
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    sides: list[str] = []
    async with running(server, await client(server.port)) as run:

        async def abort(_k: int) -> None:
            await asyncio.sleep(rng.uniform(0, 0.05))
            side = rng.choice(["server", "client"])
            sides.append(side)
            if side == "server":
                for session in run.server.sessions:
                    if session.transport is not None:
                        session.transport.abort()
            else:
                transport = run.conn._transport
                assert transport is not None
                transport.abort()
            await run.events.wait_for(Resumed, count=len(sides), timeout=10)

        received = await stream(run.conn, handler, abort)
    expected = list(range(1, N + 1))
    assert handler.got == expected
    assert received == expected
    assert len(run.events.of(Resumed)) == 5
    assert run.events.of(SessionLost) == []
    assert len(handler.sessions) == 1  # one session, one handler, across every connection


def binary_message(n: int) -> bytes:
    """Message ``n``: its number in 8 bytes, then padding of a size that cycles through the
    frame length encodings (7-bit, 16-bit, 64-bit), with a 64 KiB+ one every 97 messages."""
    size = 70_000 if n % 97 == 0 else (0, 1, 108, 109, 110, 300, 1_000)[n % 7]
    return n.to_bytes(8, "big") + bytes([n % 251]) * size


def text_message(n: int) -> str:
    """Message ``n`` as text: its number in 8 digits, then two-byte and three-byte
    characters whose UTF-8 crosses the same frame length encodings."""
    size = 35_000 if n % 97 == 0 else (0, 1, 54, 55, 56, 150, 500)[n % 7]
    return f"{n:08d}" + "\u00e9" * size + "\u65e5" * (n % 3)


def message_number(message: Message) -> int:
    """The number :func:`binary_message` or :func:`text_message` put first."""
    return int.from_bytes(message[:8], "big") if isinstance(message, bytes) else int(message[:8])


class RefusingStore(MemoryStore):
    """A memory store whose per-message write declines now and then, or fails once.

    Declined (False), the message and its frame go to the session's flush and the
    awaited write; failed, to the retry: the frame of a binary message the server
    numbered with its header apart must be sent joined on both paths.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.declined = 0
        self.failed = 0

    def write_nowait(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.calls % 211 == 0:
            self.failed += 1
            raise StoreUnavailable("refused once (test)")
        if self.calls % 7 == 0:
            self.declined += 1
            return False
        return super().write_nowait(*args, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["binary", "text"])
async def test_messages_of_every_frame_size_each_way_through_aborts_and_refused_writes(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binary or non-ASCII text messages each way (a numbered frame's header is written
    apart from the payload, text encoded once): every frame length encoding, store writes
    declined and failed, three 1006 on the way; every message arrives once, intact and in
    order, both ways."""
    count = 1_500
    make: Callable[[int], Message] = binary_message if kind == "binary" else text_message
    store = RefusingStore()
    got: list[Message] = []
    # Writes with the header apart, by side (client: True), and how text arrived there.
    split_writes = {True: 0, False: 0}
    text_as: set[tuple[str, bool]] = set()
    write_now = WebsocketsTransport.write_now

    def counting(
        self: WebsocketsTransport, message: Message, header: bytes = b"", text: bool = False
    ) -> bool:
        if header:
            split_writes[self.connection.protocol.side.name == "CLIENT"] += 1
            if text or isinstance(message, str):
                text_as.add((type(message).__name__, text))
        return write_now(self, message, header, text)

    monkeypatch.setattr(WebsocketsTransport, "write_now", counting)

    async def handler(session: Session) -> None:
        async for message in session:
            got.append(message)
            await session.send(make(message_number(message) + count))

    server = await start_server(handler, store)
    received: list[Message] = []
    async with running(server, await client(server.port)) as run:

        async def receive_all() -> None:
            while len(received) < count:
                received.append(await run.conn.recv())

        receiving = asyncio.ensure_future(receive_all())
        try:
            for n in range(1, count + 1):
                await run.conn.send(make(n))
                if n % 400 == 0:
                    transport = run.conn._transport
                    assert transport is not None
                    transport.abort()
                    await run.events.wait_for(Resumed, count=n // 400, timeout=10)
            await asyncio.wait_for(receiving, 30)
        finally:
            receiving.cancel()
    assert got == [make(n) for n in range(1, count + 1)]
    assert received == [make(n + count) for n in range(1, count + 1)]
    assert len(run.events.of(Resumed)) == 3
    assert store.declined > 100
    assert store.failed >= 5
    # Most messages of either side went out with their header apart (the rest: replays,
    # and the server's messages that followed a declined write through its flush), text
    # as the UTF-8 encoded once before it was numbered.
    assert split_writes[True] > count // 2
    assert split_writes[False] > count // 2
    assert text_as == (set() if kind == "binary" else {("bytes", True)})


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["binary", "text"])
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_message_the_socket_cannot_take_at_once_is_sent_joined_later(
    side: str, kind: str
) -> None:
    """The write buffer is over its limit when a message is numbered with its header
    apart: the frame goes out once it drains, on the same connection (no gap, no resume)."""
    big: Message = bytes(range(256)) * 300 if kind == "binary" else "\u65e5\u00e9x" * 20_000
    handler_got: asyncio.Queue[Message] = asyncio.Queue()
    sessions: list[Session] = []

    async def handler(session: Session) -> None:
        sessions.append(session)
        async for message in session:
            await handler_got.put(message)

    server = await start_server(handler, MemoryStore())
    async with running(server, await client(server.port)) as run:
        await run.conn.send(b"hello")
        assert await asyncio.wait_for(handler_got.get(), 5) == b"hello"
        [session] = sessions
        link = run.conn._transport
        if side == "server":
            sender: Any = session
            transport = session.transport
        else:
            sender = run.conn
            transport = run.conn._transport
        assert isinstance(transport, WebsocketsTransport)
        transport.connection.pause_writing()  # what asyncio does over the high-water mark
        sending = asyncio.ensure_future(sender.send(big))
        for _ in range(20):
            await asyncio.sleep(0)
        transport.connection.resume_writing()
        await asyncio.wait_for(sending, 5)
        if side == "server":
            assert await asyncio.wait_for(run.conn.recv(), 5) == big
        else:
            assert await asyncio.wait_for(handler_got.get(), 5) == big
        assert run.events.of(Resumed) == []
        assert run.conn._transport is link


@pytest.mark.timeout(20)
@pytest.mark.parametrize("resume", [False, True], ids=["plain", "tether.v1"])
async def test_non_ascii_text_is_encoded_once_by_the_client(
    resume: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send() encodes non-ASCII text to refuse what UTF-8 cannot encode; the write at once
    gets those bytes as text (no second encoding), plain or numbered, and they arrive."""
    seen: list[tuple[str, bool]] = []
    write_now = WebsocketsTransport.write_now

    def recording(
        self: WebsocketsTransport, message: Message, header: bytes = b"", text: bool = False
    ) -> bool:
        wire = message if isinstance(message, bytes) else message.encode()
        if self.connection.protocol.side.name == "CLIENT" and "caf\u00e9".encode() in wire:
            seen.append((type(message).__name__, text))  # (not the hello, nor the warm-up)
        return write_now(self, message, header, text)

    monkeypatch.setattr(WebsocketsTransport, "write_now", recording)
    got: list[Message] = []
    subprotocols: list[str | None] = []

    async def echo(session: Session) -> None:
        subprotocols.append(session.request.subprotocol)
        async for message in session:
            got.append(message)
            await session.send(message)

    server = await start_server(echo, MemoryStore())
    async with running(server, await client(server.port, resume=resume)) as run:
        await run.conn.send(b"warm-up")
        assert await asyncio.wait_for(run.conn.recv(), 5) == b"warm-up"
        await run.conn.send("caf\u00e9 \u65e5\u672c")
        with pytest.raises(UnicodeEncodeError):
            await run.conn.send("lone \ud800")  # refused at the call, nothing sent
        assert await asyncio.wait_for(run.conn.recv(), 5) == "caf\u00e9 \u65e5\u672c"
    assert got == [b"warm-up", "caf\u00e9 \u65e5\u672c"]
    assert subprotocols == ["tether.v1" if resume else None]
    assert seen == [("bytes", True)]


@pytest.mark.timeout(60)
async def test_order_is_kept_when_writes_wait_the_replay_buffer_fills_and_links_drop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bursts of 1-20 requests, then their answers: send() writes at once only while
    nothing is queued or being written. Every eleventh write must wait (a writer task
    finishes it, later sends queue behind it), the replay buffer holds 8 messages (the
    rest of a burst waits for acks) and the client aborts five times, mid-burst:
    0 lost, 0 duplicated, order kept."""
    writes = itertools.count()
    declined = 0

    def declining_writer(transport: Transport) -> Writer | None:
        write_now = fast_writer(transport)
        assert write_now is not None

        def write(message: Message, header: bytes = b"", text: bool = False) -> bool:
            nonlocal declined
            if next(writes) % 11 == 10:
                declined += 1
                return False  # as when the socket's buffer is over its limit
            return write_now(message, header, text)

        return write

    monkeypatch.setattr(client_module, "fast_writer", declining_writer)
    rng = random.Random(8)
    aborts = [k * N // 6 + rng.randrange(20) for k in range(1, 6)]
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    conn = await client(server.port, resume=ResumeConfig(max_messages=8))
    received: list[int] = []
    async with running(server, conn) as run:
        sent = 0
        while sent < N:
            burst = range(sent + 1, min(sent + rng.randint(1, 20), N) + 1)
            for n in burst:
                await conn.send(f"c{n}")
                if aborts and n == aborts[0]:
                    aborts.pop(0)
                    transport = conn._transport
                    assert transport is not None
                    transport.abort()
            for _ in burst:
                message = await asyncio.wait_for(conn.recv(), 10)
                assert isinstance(message, str)
                received.append(int(message[1:]))
            sent = burst[-1]
    expected = list(range(1, N + 1))
    assert handler.got == expected
    assert received == expected
    assert declined > N // 50
    assert len(run.events.of(Resumed)) == 5
    assert run.events.of(SessionLost) == []


@pytest.mark.timeout(60)
async def test_ten_thousand_each_way_through_five_proxy_kills(chaos_proxy: Any) -> None:
    """A chaos proxy resets both sides five times (1006 on each end): 0 lost, 0 dup, order."""
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    proxy = await chaos_proxy(server.port)
    kills = 0
    async with running(server, await client(proxy.port)) as run:

        async def kill(_k: int) -> None:
            nonlocal kills
            kills += proxy.kill_all()
            await run.events.wait_for(Resumed, count=kills, timeout=10)

        received = await stream(run.conn, handler, kill)
    expected = list(range(1, N + 1))
    assert handler.got == expected
    assert received == expected
    assert kills == 5
    assert run.events.of(SessionLost) == []


@pytest.mark.timeout(30)
@pytest.mark.timeout(20)
async def test_a_session_opened_as_the_drain_begins_starts_no_handler() -> None:
    """A hello whose store create is in flight when the drain starts: no handler, ever.

    (Before, the handler started after the drain had taken the list of handlers to
    end and wait for: it outlived shutdown(), and with the layer stopped nothing
    ever ended it.) The session stays in the store for a resume elsewhere.
    """
    in_create = asyncio.Event()
    release = asyncio.Event()

    class SlowCreate(MemoryStore):
        async def create(self, *args: Any, **kwargs: Any) -> SessionRecord:
            in_create.set()
            await release.wait()
            return await super().create(*args, **kwargs)

    started: list[str] = []

    async def handler(session: tether.Session) -> None:
        started.append(session.id)
        async for message in session:
            await session.send(message)

    store = SlowCreate()
    server = tether.serve(
        handler, "127.0.0.1", 0, store=store, drain_window=0.0, close_timeout=5.0, heartbeat=None
    )
    await server.start()
    async with ws_connect(
        f"ws://127.0.0.1:{server.port}/", subprotocols=["tether.v1"], ping_interval=None
    ) as ws:
        await ws.send(encode(Hello(rx=0)))
        await asyncio.wait_for(in_create.wait(), 5.0)
        shutting_down = asyncio.ensure_future(server.shutdown(1001))
        await eventually(lambda: server.state.value == "draining", 2.0)
        release.set()
        await asyncio.wait_for(shutting_down, 10.0)
        await asyncio.wait_for(ws.wait_closed(), 5.0)
    await asyncio.sleep(0.2)  # (a handler started late would have started by now)
    assert started == []
    me = asyncio.current_task()
    assert [t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not me] == []
    [held] = store._held.values()
    assert held.record.expires_at is not None  # detached: resumable on the next server


async def _v1_raw_client(port: int, hello: Hello | None = None) -> tuple[Any, Welcome]:
    ws = await ws_connect(f"ws://127.0.0.1:{port}/", subprotocols=["tether.v1"], ping_interval=None)
    await ws.send(encode(hello or Hello(rx=0)))
    welcome = decode(await asyncio.wait_for(ws.recv(), 5.0))
    assert isinstance(welcome, Welcome)
    return ws, welcome


@pytest.mark.timeout(30)
async def test_a_send_waiting_for_room_during_a_restart_keeps_the_session_resumable() -> None:
    """The handler waits for room (a client that does not ack) when the 1012 comes.

    (Before, the wait ran out with the client "away", the session was abandoned as
    an overflow, and the resume the goaway had promised was refused.) The send
    fails as the drain ended the session; the next server resumes it.
    """
    config = ResumeConfig(max_messages=5)
    outcome: list[str] = []

    async def handler(session: tether.Session) -> None:
        try:
            for i in range(10):
                await session.send(f"m{i}")
        except tether.ConnectionClosed as exc:
            outcome.append(f"{type(exc).__name__} {exc.code}")

    store = MemoryStore()
    old = tether.serve(
        handler,
        "127.0.0.1",
        0,
        layer=TetherV1ServerLayer(store=store, config=config, send_timeout=2.0),
        drain_window=0.0,
        heartbeat=None,
    )
    await old.start()
    ws, welcome = await _v1_raw_client(old.port)
    frames = [await asyncio.wait_for(ws.recv(), 5.0) for _ in range(5)]  # never acked
    assert [decode(f).payload for f in frames] == [f"m{i}" for i in range(5)]  # type: ignore[union-attr]
    await asyncio.sleep(0.2)  # the handler's sixth send now waits for room
    await old.restart("deploy")
    await asyncio.wait_for(ws.wait_closed(), 5.0)
    assert ws.close_code == 1012
    await eventually(lambda: outcome, 5.0)  # the waiting send has failed, one way or the other
    assert outcome == ["ConnectionClosedError 1012"]
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.lost is None
    new = tether.serve(handler, "127.0.0.1", 0, store=store, drain_window=0.0, heartbeat=None)
    await new.start()
    ws2, again = await _v1_raw_client(new.port, Hello(welcome.sid, welcome.token, welcome.epoch, 0))
    assert (again.resumed, again.reason) == (True, None)
    await ws2.close()
    await new.shutdown()


@pytest.mark.timeout(30)
async def test_a_send_waiting_for_its_write_fails_once_the_session_is_let_go() -> None:
    """Another task's send() waits for a store write that hangs when the handler returns.

    (Before, finish() gave up on the write after its bound and forgot the session,
    and that send() waited for ever.)
    """
    hang = asyncio.Event()

    class HangingWrites(MemoryStore):
        slow = False

        def write_nowait(self, *args: Any, **kwargs: Any) -> bool:
            return False  # the awaited path, as SQLite and Redis take

        async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
            if self.slow:
                await hang.wait()
            return await super().write(*args, **kwargs)

    store = HangingWrites()
    background: list[asyncio.Task[None]] = []

    async def handler(session: tether.Session) -> None:
        async for _ in session:
            pass
        store.slow = True  # the drain ended the session; another task still sends
        background.append(asyncio.ensure_future(session.send("late")))
        await asyncio.sleep(0.1)

    server = tether.serve(
        handler, "127.0.0.1", 0, store=store, drain_window=0.0, close_timeout=3.0, heartbeat=None
    )
    await server.start()
    ws, _ = await _v1_raw_client(server.port)
    await server.restart()
    await ws.close()
    [sending] = background
    with pytest.raises(tether.ConnectionClosed):
        await asyncio.wait_for(sending, 5.0)
    hang.set()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("closes", ["handler", "client"])
async def test_send_after_a_normal_close_raises_connection_closed_ok(closes: str) -> None:
    """tether.v1 as plain: after a 1000, send() raises ConnectionClosedOK, like recv()."""
    raised: list[str] = []
    done = asyncio.Event()

    async def handler(session: tether.Session) -> None:
        if closes == "handler":
            await session.close(1000, "bye")
        else:
            async for _ in session:
                pass
        for operation in (lambda: session.send("x"), session.recv):
            try:
                await operation()
            except tether.ConnectionClosed as exc:
                raised.append(f"{type(exc).__name__} {exc.code}")
        done.set()

    server = tether.serve(handler, "127.0.0.1", 0, drain_window=0.0, heartbeat=None)
    await server.start()
    ws, _ = await _v1_raw_client(server.port)
    if closes == "client":
        await ws.close(1000)
    await asyncio.wait_for(done.wait(), 5.0)
    await ws.close()
    await server.shutdown()
    assert raised == ["ConnectionClosedOK 1000"] * 2


@pytest.mark.timeout(30)
async def test_a_pong_behind_a_burst_the_handler_reads_slowly_is_awaited() -> None:
    """The server pings while its handler waits in recv(); a burst, then the pong, arrive.

    The handler reads the burst slower than the heartbeat's timeout: the link is
    alive. (Before, the handler reading the connection itself at the ping meant no
    read-ahead and no count of what it took: the server dropped the link as dead.)
    """
    burst, size = 1500, 4096
    got: list[int] = []
    done = asyncio.Event()

    async def handler(session: tether.Session) -> None:
        async for message in session:  # in recv() when the ping goes out
            got.append(int(message[:6]))
            time.sleep(0.002)  # noqa: ASYNC251 - the handler works 3 s in all
            await asyncio.sleep(0)
            if len(got) == burst:
                done.set()

    server = tether.serve(
        handler, "127.0.0.1", 0, heartbeat=tether.Heartbeat(0.5, 1.0), drain_window=0.0
    )
    await server.start()
    raw = await RawClient.open("127.0.0.1", server.port, subprotocol="tether.v1")
    dropped = asyncio.Event()

    async def client() -> None:
        await raw.send_frame(OP_TEXT, encode(Hello(rx=0)).encode())
        burst_sent = False
        try:
            while True:
                frame = await raw.read_frame()
                if frame.opcode == OP_PING:  # the burst first (once), then the pong
                    if not burst_sent:
                        burst_sent = True
                        for n in range(1, burst + 1):
                            payload = f"d{n}:0:" + f"{n - 1:06d}".ljust(size, "x")
                            raw.writer.write(encode_frame(OP_TEXT, payload.encode()))
                    raw.writer.write(encode_frame(OP_PONG, frame.payload))
                elif frame.opcode == OP_CLOSE:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            dropped.set()

    task = asyncio.ensure_future(client())
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 15.0)
        assert (len(got), dropped.is_set()) == (burst, False)
        assert got == list(range(burst))
    finally:
        task.cancel()
        raw.abort()
        await server.shutdown()


async def test_memory_store_process_restart_says_goaway_resume_false(spawn: Spawn) -> None:
    """`tether serve` (memory store) on SIGHUP: goaway resume false, SessionLost at once."""
    port = free_port()
    proc = await spawn(
        tether_cli(
            "serve", "--port", str(port), "--store", "memory", "--drain-window", "0",
            "--ping-interval", "0",
        )
    )  # fmt: skip
    await wait_for_port("127.0.0.1", port, 10)
    conn = await client(port, backoff=BackoffConfig(base=5.0, cap=5.0, restart_window=(5, 5)))
    events = EventRecorder(conn)
    try:
        await conn.send("hello")
        assert await asyncio.wait_for(conn.recv(), 5) == "hello"
        proc.signal(signal.SIGHUP)
        lost = await events.wait_for(SessionLost, timeout=5)
        assert lost[0].reason == "not_resumable"
        assert events.of(Connected) == []  # reported at once, not after a doomed resume
        assert await proc.wait(10) == 0
    finally:
        await conn.close()
        await events.stop()


class MaxRandom(random.Random):
    """Always the top of the range: a reconnect delay of exactly the backoff base."""

    def uniform(self, a: float, b: float) -> float:
        return b


#: Acks within 50 ms, so short windows are not mistaken for stalls.
QUICK_ACKS = ResumeConfig(ack_delay=0.05)


@asynccontextmanager
async def connected_pair(
    store: MemoryStore, handler: Callable[[Session], Awaitable[None]], **layer: Any
) -> AsyncIterator[Running]:
    """A server and a client that reconnects exactly 1 s after a 1006, :func:`running`."""
    layer.setdefault("config", QUICK_ACKS)
    server = await start_server(handler, store, **layer)
    conn = await client(
        server.port, backoff=BackoffConfig(base=1.0, cap=1.0), rng=MaxRandom(), resume=QUICK_ACKS
    )
    async with running(server, conn) as run:
        yield run


@pytest.mark.timeout(30)
async def test_a_resume_that_finds_the_store_locked_is_told_1013_and_resumes_later(
    tmp_path: Path,
) -> None:
    """Another process holds the SQLite store's write lock past busy_timeout when the
    client resumes: 1013 (not a new session), and the next attempt resumes it."""
    path = tmp_path / "sessions.db"
    handler = Echo()
    server = await start_server(handler, SQLiteStore(path, busy_timeout=0.05))
    backoff = BackoffConfig(
        base=0.05, cap=0.2, restart_window=(0.05, 0.2), stability_period=0.5, try_again_floor=0.3
    )
    async with running(server, await client(server.port, backoff=backoff)) as run:
        await echoes(run.conn, 1)
        other = sqlite3.connect(path, isolation_level=None)  # the other process of a handover
        try:
            other.execute("BEGIN IMMEDIATE")
            transport = run.conn._transport
            assert transport is not None
            transport.abort()  # the link dies; the client resumes at once, into the lock
            _, retry = await run.events.next(Reconnecting, timeout=10)
            while retry.cause_code != 1013:  # (first the 1006 of the abort)
                _, retry = await run.events.next(Reconnecting, timeout=10)
            assert retry.delay >= 0.3  # 1013's floor, not the 1006 backoff
        finally:
            other.execute("COMMIT")
            other.close()
        await run.events.wait_for(Resumed, timeout=10)
        await echoes(run.conn, 2)
        assert run.events.of(SessionLost) == []
        assert [c.resumed for c in run.events.of(Connected)][-1] is True
        assert handler.got == [1, 2]
        assert len(handler.sessions) == 1  # one session throughout


@pytest.mark.timeout(20)
async def test_window_expiry_loses_the_session_with_the_unacked_messages() -> None:
    """Back after the resume window: SessionLost(expired/unknown) with what was unacked."""
    handler = Echo()
    async with connected_pair(MemoryStore(), handler, resume_window=0.5) as run:
        await echoes(run.conn, 1)
        transport = run.conn._transport
        assert transport is not None
        await eventually(lambda: run.conn._layer.endpoint.peer_acked == 1, 5)  # type: ignore[attr-defined]
        transport.abort()
        await run.conn.send("c2")  # queued; the reconnect comes 1 s later, after the window
        lost = await run.events.wait_for(SessionLost, timeout=5)
        assert lost[0].reason in {"expired", "unknown"}
        assert lost[0].unacked == ("c2",)
        await run.events.wait_for(Connected)
        await asyncio.sleep(0.2)
        assert handler.got == [1]  # c2 is the application's to resend; nothing twice


@pytest.mark.timeout(20)
async def test_a_client_whose_resume_is_refused_as_late_takes_a_new_session() -> None:
    """A higher number than the client's was served (someone else with its token): 4204.

    The client reports SessionLost("superseded") with what was unacked and carries on
    with a new session. (Before, the handshake's close code was not passed on: it
    resumed again with its next number, was refused again, and so on for ever.)
    """
    store, handler = MemoryStore(), Echo()
    async with connected_pair(store, handler) as run:
        sid = await _resume_refused_as_late(run, store)
        await eventually(lambda: run.conn._layer.endpoint.sid not in {None, sid}, 5)  # type: ignore[attr-defined]
        await echoes(run.conn, 3)


@pytest.mark.timeout(20)
async def test_a_resume_refused_as_late_is_reported_even_if_the_client_then_gives_up() -> None:
    """The 4204 attempt is the last one allowed: SessionLost("superseded") all the same.

    (Before, the event waited in the core until a next welcome, which never came: the
    application heard nothing, and the unacked message was in neither the event nor
    ``unsent``.)
    """
    store = MemoryStore()
    server = await start_server(Echo(), store)
    conn = await client(server.port, backoff=BackoffConfig(base=0.05, cap=0.05, max_attempts=1))
    async with running(server, conn) as run:
        await _resume_refused_as_late(run, store)
        await run.events.wait_for(GaveUp, timeout=5)


async def _resume_refused_as_late(run: Running, store: MemoryStore) -> str:
    """Echo c1; a higher number is served meanwhile; the link drops with c2 unacked.

    Returns the session id, once the client reported SessionLost("superseded", ("c2",)).
    """
    await echoes(run.conn, 1)
    sid = run.conn._layer.endpoint.sid  # type: ignore[attr-defined]
    store._held[sid].update(attempt=1000)  # as a resume numbered 1000 would leave it
    transport = run.conn._transport
    assert transport is not None
    transport.abort()
    await run.conn.send("c2")  # queued while away: the application's to resend
    lost = await run.events.wait_for(SessionLost, timeout=5)
    assert (lost[0].reason, lost[0].unacked) == ("superseded", ("c2",))
    return str(sid)


@pytest.mark.timeout(20)
async def test_overflow_while_away_is_refused_not_partial() -> None:
    """The server's buffer overflows while the client is away: SessionLost('overflow')."""
    store = MemoryStore()
    sent_while_away: list[int] = []
    gone = asyncio.Event()

    async def handler(session: Session) -> None:
        await session.recv()
        await gone.wait()
        for n in range(10):
            try:
                await session.send(f"s{n}")
            except tether.ConnectionClosed:
                return
            sent_while_away.append(n)

    async with connected_pair(
        store,
        handler,
        config=ResumeConfig(max_messages=3, ack_delay=0.05),
        send_timeout=0.1,
    ) as run:
        await run.conn.send("go")
        await eventually(lambda: bool(run.server.sessions), 5)
        transport = run.conn._transport
        assert transport is not None
        transport.abort()
        await eventually(lambda: all(s.transport is None for s in run.server.sessions), 5)
        gone.set()
        lost = await run.events.wait_for(SessionLost, timeout=5)
        assert lost[0].reason == "overflow"
        assert sent_while_away == [0, 1, 2]  # then the session was abandoned
        await run.events.wait_for(Connected)
        assert run.conn.state is tether.State.OPEN


@pytest.mark.timeout(30)
async def test_a_default_client_frees_a_small_server_buffer_within_its_short_ack_delay() -> None:
    """A server that keeps 2 messages sends 6 in a row to a default client.

    The client's ack of a lone message may wait 10 s, but a second message brings it
    forward to 0.2 s, so the server waits for room about that long per pair, not 10 s.
    """
    took: list[float] = []

    async def handler(session: Session) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(6):
            await session.send(f"s{n}")
        took.append(loop.time() - started)
        await session.recv()  # (the session stays open until the client goes)

    server = await start_server(
        handler, MemoryStore(), config=ResumeConfig(max_messages=2), send_timeout=30.0
    )
    async with running(server, await client(server.port)) as run:
        got = [await asyncio.wait_for(run.conn.recv(), 5) for _ in range(6)]
        assert got == [f"s{n}" for n in range(6)]
        await eventually(lambda: bool(took), 5)
        # Two waits for room (s2, s4), each for an ack due 0.2 s after the pair's
        # second message: well under a second in all; 20 s with 10 s acks.
        assert took[0] < 2.0


@pytest.mark.timeout(20)
async def test_forged_token_is_refused_with_token_invalid() -> None:
    """A resume with a token the server never issued: SessionLost('token_invalid')."""
    handler = Echo()
    async with connected_pair(MemoryStore(), handler) as run:
        await echoes(run.conn, 1)
        layer = run.conn._layer
        assert isinstance(layer, TetherV1ClientLayer)
        layer.endpoint._session.token = "A" * 43  # type: ignore[union-attr]
        run.conn._transport.abort()  # type: ignore[union-attr]
        lost = await run.events.wait_for(SessionLost, timeout=5)
        assert lost[0].reason == "token_invalid"
        await echoes(run.conn, 2)
        assert handler.got == [1, 2]
        assert len(handler.sessions) == 2  # a fresh session, a fresh handler


@pytest.mark.timeout(20)
async def test_stale_epoch_after_the_store_lost_its_data() -> None:
    """A new serve() on a new (empty) store: the old epoch gives SessionLost('epoch_mismatch')."""
    handler = Echo()
    async with connected_pair(MemoryStore(), handler) as run:
        port = run.server.port
        await echoes(run.conn, 1)
        await run.server.restart()
        run.server = await start_server(handler, MemoryStore(), port)
        lost = await run.events.wait_for(SessionLost, timeout=10)
        assert lost[0].reason == "epoch_mismatch"
        await echoes(run.conn, 2)
        assert handler.got == [1, 2]


@pytest.mark.timeout(20)
async def test_takeover_closes_the_old_connection_with_4901() -> None:
    """A second connection resumes a live session: the old one gets 4901 and SessionLost."""
    handler = Echo()
    async with connected_pair(MemoryStore(), handler) as run:
        await echoes(run.conn, 1)
        layer = run.conn._layer
        assert isinstance(layer, TetherV1ClientLayer)
        creds = layer.endpoint._session
        assert creds is not None
        async with ws_connect(
            f"ws://127.0.0.1:{run.server.port}/",
            subprotocols=["tether.v1"],  # type: ignore[list-item]
        ) as raw:
            hello = {"type": "hello", "sid": creds.sid, "token": creds.token,
                     "epoch": creds.epoch, "rx": layer.endpoint.rx}  # fmt: skip
            await raw.send(json.dumps(hello))
            welcome = await asyncio.wait_for(raw.recv(), 5)
            assert '"resumed":true' in str(welcome)
            lost = await run.events.wait_for(SessionLost, timeout=5)
            assert lost[0].reason == "taken_over"
            await eventually(lambda: run.conn.state is tether.State.CLOSED, 5)
            assert run.conn.close_code == 4901
            await raw.send("d2:1:c2")
            # The ack field is what the server has committed: 1, or 2 once c2 is stored.
            assert await asyncio.wait_for(raw.recv(), 5) in ("d2:1:s2", "d2:2:s2")
        assert handler.got == [1, 2]
        assert len(handler.sessions) == 1


@pytest.mark.timeout(20)
async def test_plain_client_gets_a_plain_session(node_ws_clients: Any) -> None:
    """A Node ws client (no subprotocol) talks plain WebSocket to a tether.v1 server."""
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    try:
        clients = await node_ws_clients(f"ws://127.0.0.1:{server.port}/", count=1)
        await clients.expect_event("open", timeout=10)
        await clients.send({"cmd": "send", "data": "c7"})
        event = await clients.expect_event("message", timeout=5)
        assert event["data"] == "s7"
    finally:
        await server.shutdown()


@pytest.mark.timeout(20)
async def test_client_talks_plain_to_a_node_ws_server(node_ws_server: NodeWsServer) -> None:
    """Node ws echoes the offered subprotocol without speaking it: the client goes plain."""
    async with tether.connect(node_ws_server.url, heartbeat=None) as conn:
        await conn.send("plain text")
        assert await asyncio.wait_for(conn.recv(), 5) == "plain text"
        await conn.send(b"\x00bytes")
        assert await asyncio.wait_for(conn.recv(), 5) == b"\x00bytes"


class FlakyStore(MemoryStore):
    """A memory store whose backend can be switched off (every call: StoreUnavailable)."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the backend is down (test)")

    async def load(self, sid: str) -> SessionRecord | None:
        self._check()
        return await super().load(sid)

    async def write(self, sid: str, generation: int, **kwargs: Any) -> SessionRecord:
        self._check()
        return await super().write(sid, generation, **kwargs)

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        self._check()
        await super().detach(sid, generation, expires_at=expires_at)


@pytest.mark.timeout(20)
async def test_store_outage_degrades_the_session_and_refuses_resumes() -> None:
    """Store down: the session keeps working; a resume gets SessionLost('store_unavailable')."""
    store = FlakyStore()
    handler = Echo()
    async with connected_pair(store, handler) as run:
        await echoes(run.conn, 1)
        store.down = True
        await echoes(run.conn, 2)  # the write fails: the session goes on, not durable
        run.conn._transport.abort()  # type: ignore[union-attr]
        lost = await run.events.wait_for(SessionLost, timeout=5)
        assert lost[0].reason == "store_unavailable"
        await echoes(run.conn, 3)
        assert handler.got == [1, 2, 3]


def fields_of(obj: object) -> dict[str, object]:
    """Every attribute of ``obj``, from its ``__dict__`` and its classes' ``__slots__``."""
    fields = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name != "__weakref__" and hasattr(obj, name):
                fields[name] = getattr(obj, name)
    return fields


@pytest.mark.timeout(30)
async def test_resume_tokens_never_reach_the_debug_log_or_reprs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session opened and resumed with DEBUG logging on: no token, whole or in part, is logged."""
    issued: list[str] = []
    real_new_token = resume_server_module.new_token

    def recording_new_token(*args: Any) -> tuple[str, str]:
        token, token_hash = real_new_token(*args)
        issued.append(token)
        return token, token_hash

    monkeypatch.setattr(resume_server_module, "new_token", recording_new_token)
    caplog.set_level(logging.DEBUG)
    store = MemoryStore()
    handler = Echo()
    server = await start_server(handler, store)
    async with running(server, await client(server.port)) as run:
        await echoes(run.conn, 1)
        transport = run.conn._transport
        assert transport is not None
        transport.abort()
        await run.events.wait_for(Resumed, timeout=10)
        await echoes(run.conn, 2)
        layer = run.conn._layer
        records = [repr(fields_of(obj)) for obj in (layer, layer.endpoint, store)]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert len(issued) == 2  # the first welcome's token, then the rotated one
    assert "< TEXT" in logged  # the engine's frame log was really captured
    for token in issued:
        # Any 12 consecutive characters (72 bits) would narrow a guess too much.
        pieces = {token[i : i + 12] for i in range(len(token) - 11)}
        assert not [p for p in pieces if p in logged]
        assert not [p for p in pieces for text in records if p in text]


class CountingStore(MemoryStore):
    """A memory store that counts the sessions it was asked to load."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, sid: str) -> SessionRecord | None:
        self.loads += 1
        return await super().load(sid)


async def hello_welcome(port: int, hello: dict[str, Any]) -> dict[str, Any]:
    """Open a tether.v1 connection, send ``hello`` by hand, return the welcome."""
    async with ws_connect(
        f"ws://127.0.0.1:{port}/",
        subprotocols=["tether.v1"],  # type: ignore[list-item]
        compression=None,
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "rx": 0, **hello}))
        welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome"
        return welcome


@pytest.mark.timeout(20)
async def test_refused_resumes_are_rate_limited_per_address_before_the_store() -> None:
    """Limit 3 per 60 s: three forged resumes read the store; the next ones get rate_limited."""
    store = CountingStore()
    server = tether.serve(
        Echo(),
        "127.0.0.1",
        0,
        heartbeat=None,
        layer=TetherV1ServerLayer(store=store, resume_limit=ResumeLimit(max_refused=3)),
    )
    await server.start()
    try:
        epoch = (await hello_welcome(server.port, {}))["epoch"]
        reasons = []
        for n in range(5):
            forged = {"sid": f"c2lk{n:04d}", "token": "A" * 43, "epoch": epoch}
            reasons.append((await hello_welcome(server.port, forged))["reason"])
    finally:
        await server.shutdown()
    assert reasons == ["unknown", "unknown", "unknown", "rate_limited", "rate_limited"]
    assert store.loads == 3  # the limited attempts never reached the store


class Sink:
    """A handler that only reads: records ``c<n>`` messages, never answers."""

    def __init__(self) -> None:
        self.got: list[int] = []

    async def __call__(self, session: Session) -> None:
        async for message in session:
            assert isinstance(message, str)
            self.got.append(int(message[1:]))


def reader_tasks() -> list[asyncio.Task[Any]]:
    """The client's read-ahead tasks running now (``ClientConnection._read``)."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "ClientConnection._read"
    ]


@pytest.mark.timeout(20)
async def test_a_client_that_only_sends_still_takes_the_acks() -> None:
    """2,000 sent, recv() never called: the acks are read anyway and free the replay buffer.

    The client reads in recv() (no reader task per connection); sending 64
    unacknowledged messages makes it read ahead for the acks.
    """
    sink = Sink()
    server = await start_server(sink, MemoryStore())
    conn = await client(server.port)
    async with running(server, conn):
        layer = conn._layer
        assert isinstance(layer, TetherV1ClientLayer)
        assert reader_tasks() == []
        for n in range(1, 2001):
            await conn.send(f"c{n}")
        await eventually(lambda: len(sink.got) == 2000, 10)
        await eventually(lambda: len(layer.endpoint.buffer) < READ_AHEAD_MESSAGES, 5)
        assert sink.got == list(range(1, 2001))
        assert layer.endpoint.peer_acked > 2000 - READ_AHEAD_MESSAGES


@pytest.mark.timeout(20)
async def test_a_client_reading_in_recv_runs_no_reader_task() -> None:
    """Request/response over tether.v1: recv() reads the connection itself, every time.

    A reader task would add a task hop to every message; the replies carry the
    acks, so nothing else has to read ahead.
    """
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    conn = await client(server.port)
    async with running(server, conn):
        seen: list[int] = []
        for n in range(1, 301):
            await echoes(conn, n)
            seen.append(len(reader_tasks()))
        assert seen == [0] * 300
        assert handler.got == list(range(1, 301))
        layer = conn._layer
        assert isinstance(layer, TetherV1ClientLayer)
        assert len(layer.endpoint.buffer) <= 1  # the last request's ack may still be coming


@pytest.mark.timeout(20)
async def test_a_few_unacked_messages_are_read_for_before_they_stall() -> None:
    """5 sent, recv() never called, no heartbeat: the acks are read half way to the stall.

    Without that read, the 5 messages would count as stalled after the resume
    window (1 s here) and the client would close with 4202 and resume.
    """
    sink = Sink()
    window = ResumeConfig(resume_window=1.0)
    # (The client follows the server's window, from its welcome.)
    server = await start_server(
        sink, MemoryStore(), config=ResumeConfig(ack_delay=0.05, resume_window=1.0)
    )
    conn = await client(server.port, resume=window)
    async with running(server, conn) as run:
        layer = conn._layer
        assert isinstance(layer, TetherV1ClientLayer)
        for n in range(1, 6):
            await conn.send(f"c{n}")
        await eventually(lambda: len(sink.got) == 5, 5)
        # Read at 0.5 s: emptied before the 1 s stall (an empty buffer cannot stall).
        await eventually(lambda: len(layer.endpoint.buffer) == 0, 0.9)
        assert layer.endpoint.stall_deadline() is None
        assert run.events.kinds() == []  # no Disconnected, no Resumed
        assert conn.state is State.OPEN


@pytest.mark.timeout(20)
async def test_a_replay_buffer_full_for_send_timeout_closes_with_4202_and_resumes() -> None:
    """A server that does not ack: the third message waits send_timeout for room, then
    the client closes with 4202 and resumes; the welcome's ack makes the room."""
    sink = Sink()
    never_acks = ResumeConfig(ack_messages=None, ack_bytes=None, ack_delay=60.0)
    server = await start_server(sink, MemoryStore(), config=never_acks)
    conn = tether.connect(
        f"ws://127.0.0.1:{server.port}/",
        heartbeat=None,
        backoff=FAST,
        send_timeout=0.2,
        resume=ResumeConfig(max_messages=2),
    )
    async with running(server, await conn) as run:
        for n in range(1, 4):
            await conn.send(f"c{n}")
        resumed = await run.events.wait_for(Resumed, timeout=5)
        await eventually(lambda: sink.got == [1, 2, 3], 5)
        assert resumed == [Resumed(0, 0)]
        assert [e.code for e in run.events.of(Disconnected)] == [4202]
        assert run.events.of(SessionLost) == []


@pytest.mark.timeout(20)
async def test_a_message_the_layer_fails_to_take_goes_out_once_on_the_next_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error in the layer's outgoing() or outgoing_header() drops the connection (logged
    once) and leaves the message queued: it goes out once, after the resume."""
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    async with running(server, await client(server.port)) as run:
        await echoes(run.conn, 1)
        layer = run.conn._layer
        doomed = run.conn._transport
        real_outgoing = layer.outgoing
        real_outgoing_header = layer.outgoing_header

        def outgoing(message: Message, now: float) -> Sequence[Message]:
            if run.conn._transport is doomed:
                raise RuntimeError("a bug in the layer")
            return real_outgoing(message, now)

        def outgoing_header(message: Message, now: float) -> bytes | None:
            if run.conn._transport is doomed:
                raise RuntimeError("a bug in the layer")
            return real_outgoing_header(message, now)

        layer.outgoing = outgoing  # type: ignore[method-assign]
        layer.outgoing_header = outgoing_header  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="tether.client"):
            await run.conn.send("c2")
            await run.events.wait_for(Resumed, timeout=5)
            assert await asyncio.wait_for(run.conn.recv(), 5) == "s2"
        await echoes(run.conn, 3)
    assert handler.got == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "tether client helper failed; aborting the connection"
    ]


@pytest.mark.timeout(20)
async def test_a_send_right_after_a_failed_one_waits_behind_it() -> None:
    """The layer fails once; the same task sends again before the link is dropped: the
    second message must queue behind the first (else it takes a sequence number first
    and overtakes it for good)."""
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    async with running(server, await client(server.port)) as run:
        await echoes(run.conn, 1)
        layer = run.conn._layer
        real_outgoing = layer.outgoing
        real_outgoing_header = layer.outgoing_header
        failed: list[Message] = []

        def outgoing(message: Message, now: float) -> Sequence[Message]:
            if not failed:
                failed.append(message)
                raise RuntimeError("a bug in the layer, once")
            return real_outgoing(message, now)

        def outgoing_header(message: Message, now: float) -> bytes | None:
            if not failed:
                failed.append(message)
                raise RuntimeError("a bug in the layer, once")
            return real_outgoing_header(message, now)

        layer.outgoing = outgoing  # type: ignore[method-assign]
        layer.outgoing_header = outgoing_header  # type: ignore[method-assign]
        await run.conn.send("c2")  # fails in the direct path: queued, the link aborted
        await run.conn.send("c3")  # before the abort took effect
        await run.events.wait_for(Resumed, timeout=5)
        assert [await asyncio.wait_for(run.conn.recv(), 5) for _ in range(2)] == ["s2", "s3"]
    assert handler.got == [1, 2, 3]


@pytest.mark.timeout(20)
async def test_sends_on_an_idle_open_link_skip_the_send_queue() -> None:
    """The direct path is taken: no message of a request/response exchange is queued."""
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    async with running(server, await client(server.port)) as run:
        await echoes(run.conn, 1)
        queued: list[Message] = []
        queue = run.conn._queue
        real_append = queue.append

        def append(message: Message) -> None:
            queued.append(message)
            real_append(message)

        queue.append = append  # type: ignore[method-assign]
        for n in range(2, 12):
            await echoes(run.conn, n)
        assert queued == []
    assert handler.got == list(range(1, 12))


@pytest.mark.timeout(20)
async def test_close_waits_for_the_acks_so_the_handler_gets_every_message() -> None:
    """20 sends, flush(), close(): the handler takes all 20 and the client reads all echoes.

    (Before, close() sent its Close once the messages were on the socket; the 1000
    ended the session while the handler had taken about half of them, silently.)
    """
    handler = Echo()
    server = await start_server(handler, MemoryStore())
    conn = await client(server.port)
    try:
        for n in range(20):
            await conn.send(f"c{n}")
        await conn.flush()
        await conn.close()
        got = [message async for message in conn]
    finally:
        await server.shutdown()
    assert handler.got == list(range(20))
    assert got == [f"s{n}" for n in range(20)]
    assert (conn.close_code, conn.unsent) == (1000, ())


@pytest.mark.timeout(20)
async def test_what_the_server_never_acknowledged_is_in_unsent_after_close() -> None:
    """A handler that never reads: close() waits close_timeout, then lists the three in unsent."""
    stop = asyncio.Event()

    async def deaf(session: Session) -> None:
        await stop.wait()

    server = await start_server(deaf, MemoryStore())
    conn = await client(server.port, close_timeout=0.5)
    try:
        for message in ("a", "b", "c"):
            await conn.send(message)
        await conn.flush()
        await conn.close()
    finally:
        stop.set()
        await server.shutdown()
    assert conn.unsent == ("a", "b", "c")


@pytest.mark.timeout(20)
async def test_a_handler_done_while_its_client_is_away_is_not_started_again() -> None:
    """The handler sends 3 and returns during a 1006: the resume gets the 3, then 1000.

    (Before, the session stayed resumable with nobody to close it: the resume started
    the handler a second time, and the client got 6 messages and no end.)
    """
    runs: list[Session] = []
    client_gone = asyncio.Event()

    async def handler(session: Session) -> None:
        runs.append(session)
        await client_gone.wait()
        for n in range(3):
            await session.send(f"m{n}")

    server = await start_server(handler, MemoryStore())
    url = f"ws://127.0.0.1:{server.port}/"
    try:
        async with ws_connect(url, subprotocols=["tether.v1"]) as first:  # type: ignore[list-item]
            await first.send(json.dumps({"type": "hello", "sid": None, "token": None, "rx": 0}))
            welcome = json.loads(await first.recv())
            first.transport.abort()  # 1006
            await eventually(lambda: bool(runs) and runs[0].transport is None, 5)
        client_gone.set()
        hello = _resume_hello(welcome)
        async with ws_connect(url, subprotocols=["tether.v1"]) as second:  # type: ignore[list-item]
            await second.send(json.dumps(hello))
            assert json.loads(await second.recv())["resumed"] is True
            got = [await asyncio.wait_for(second.recv(), 5) for _ in range(3)]
            await asyncio.wait_for(second.wait_closed(), 5)
            assert second.close_code == 1000
    finally:
        await server.shutdown()
    assert got == ["d1:0:m0", "d2:0:m1", "d3:0:m2"]
    assert len(runs) == 1


def _resume_hello(welcome: dict[str, Any]) -> dict[str, Any]:
    """The hello of a client resuming ``welcome``'s session, having received nothing."""
    return {k: welcome[k] for k in ("sid", "token", "epoch")} | {"type": "hello", "rx": 0}


def _stores(kind: str, tmp_path: Path) -> tuple[SessionStore, SessionStore]:
    """Two nodes' stores: one MemoryStore shared, or two SQLiteStores on one file."""
    if kind == "memory":
        shared = MemoryStore()
        return shared, shared
    path = tmp_path / "sessions.db"
    return SQLiteStore(path), SQLiteStore(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("where", ["another node", "after a restart"])
async def test_a_handler_done_while_its_client_is_away_is_not_started_again_elsewhere(
    kind: str, where: str, tmp_path: Path
) -> None:
    """The handler sends 3 and closes with 4000 during a 1006; the client resumes on B.

    B (another node on the same store, or this node's replacement after a restart)
    replays the 3, then closes with 4000, and starts no handler. (Before, the store
    did not record the end: B started the handler a second time, and the client got
    its messages again and no close.)
    """
    runs: list[str] = []
    sessions: list[Session] = []
    client_gone = asyncio.Event()
    closed: list[tether.ClosedInfo] = []

    def handler(node: str) -> Callable[[Session], Awaitable[None]]:
        async def run(session: Session) -> None:
            runs.append(node)
            sessions.append(session)
            if node == "B":
                await session.send("B's handler ran")
                return
            await client_gone.wait()
            for n in range(3):
                await session.send(f"m{n}")
            closed.append(await session.close(4000, "done"))

        return run

    store_a, store_b = _stores(kind, tmp_path)
    node_a = await start_server(handler("A"), store_a)
    node_b: tether.Server | None = None
    try:
        async with ws_connect(  # type: ignore[list-item]
            f"ws://127.0.0.1:{node_a.port}/", subprotocols=["tether.v1"]
        ) as first:
            await first.send(json.dumps({"type": "hello", "sid": None, "token": None, "rx": 0}))
            welcome = json.loads(await first.recv())
            first.transport.abort()  # 1006
            await eventually(lambda: runs == ["A"] and sessions[0].transport is None, 5)
        client_gone.set()
        # A's handler is now waiting in close() for its client (the record says it ended).
        await _until_record(store_a, welcome["sid"], lambda r: r is not None and r.end_code == 4000)
        if where == "after a restart":
            await node_a.restart()  # A's handler is cancelled by the drain; the record stays
        node_b = await start_server(handler("B"), store_b)
        hello = _resume_hello(welcome)
        async with ws_connect(  # type: ignore[list-item]
            f"ws://127.0.0.1:{node_b.port}/", subprotocols=["tether.v1"]
        ) as second:
            await second.send(json.dumps(hello))
            assert json.loads(await second.recv())["resumed"] is True
            got = [await asyncio.wait_for(second.recv(), 5) for _ in range(3)]
            await asyncio.wait_for(second.wait_closed(), 5)
            assert (second.close_code, second.close_reason) == (4000, "done")
        assert got == ["d1:0:m0", "d2:0:m1", "d3:0:m2"]
        assert runs == ["A"]
        # B's close ended the session: gone from the store, so no third server replays it.
        await _until_record(store_b, welcome["sid"], lambda r: r is None)
    finally:
        if node_b is not None:
            await node_b.shutdown()
        await node_a.shutdown()
        for store in {id(store_a): store_a, id(store_b): store_b}.values():
            await store.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_hello_that_comes_late_on_another_node_takes_nothing_over(
    kind: str, tmp_path: Path
) -> None:
    """Attempt 1's hello reaches node A after attempt 2 resumed on B: 4204, B's link lives.

    Both hellos carry the token of the last welcome, which the servers still accept
    (the previous one, in case a welcome is lost). (Before hellos were numbered, the
    late one took the session over: B's connection got 4901, final for the client.)
    """

    async def echo(session: Session) -> None:
        async for message in session:
            await session.send(message)

    store_a, store_b = _stores(kind, tmp_path)
    node_a = await start_server(echo, store_a)
    node_b = await start_server(echo, store_b)
    try:
        url_a, url_b = f"ws://127.0.0.1:{node_a.port}/", f"ws://127.0.0.1:{node_b.port}/"
        async with ws_connect(url_a, subprotocols=["tether.v1"]) as first:  # type: ignore[list-item]
            await first.send(json.dumps({"type": "hello", "sid": None, "token": None, "rx": 0}))
            welcome = json.loads(await first.recv())
            first.transport.abort()  # 1006
        hello = _resume_hello(welcome)
        async with (
            ws_connect(url_a, subprotocols=["tether.v1"]) as given_up,  # type: ignore[list-item]
            ws_connect(url_b, subprotocols=["tether.v1"]) as live,  # type: ignore[list-item]
        ):
            await live.send(json.dumps(hello | {"attempt": 2}))
            assert json.loads(await live.recv())["resumed"] is True
            await given_up.send(json.dumps(hello | {"attempt": 1}))  # held up in the network
            await asyncio.wait_for(given_up.wait_closed(), 5)
            assert (given_up.close_code, given_up.close_reason) == (
                4204,
                "a newer hello of this session was served",
            )
            await live.send("d1:0:still mine")
            assert await asyncio.wait_for(live.recv(), 5) == "d1:1:still mine"
            record = await store_b.load(welcome["sid"])
            assert record is not None
            assert (record.generation, record.attempt) == (2, 2)
    finally:
        await node_b.shutdown()
        await node_a.shutdown()
        for store in {id(store_a): store_a, id(store_b): store_b}.values():
            await store.close()


async def _until_record(
    store: SessionStore, sid: str, check: Callable[[SessionRecord | None], bool]
) -> None:
    """Poll the store (10 ms) until ``check(record)`` holds; fail after 5 s."""
    deadline = time.monotonic() + 5.0
    while not check(await store.load(sid)):
        assert time.monotonic() < deadline, f"session {sid}: the store never got there"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
async def test_a_replay_that_stalls_fails_the_attempt_within_the_handshake_timeout() -> None:
    """The server welcomes the resume, then stops reading: the attempt fails and is retried.

    (Before, no heartbeat or timeout ran during the replay after the welcome: the client
    stayed in that attempt for as long as TCP kept the socket.)
    """
    from websockets.asyncio.server import serve as ws_serve

    from tether.protocol import Welcome, encode

    connections = 0

    async def handler(ws: Any) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()  # hello
        resumed = connections > 1
        await ws.send(encode(Welcome(resumed, None, "s1", "t1", "e1", 0, 0, 120_000)))
        ws.transport.pause_reading()  # never acks; the replay stalls once buffers fill
        if not resumed:
            await asyncio.sleep(0.5)
            ws.transport.abort()  # the first connection dies (1006)
        await ws.wait_closed()

    async with ws_serve(handler, "127.0.0.1", 0, subprotocols=["tether.v1"], max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn = tether.connect(
            f"ws://127.0.0.1:{port}/",
            heartbeat=None,
            backoff=BackoffConfig(base=0.05, cap=0.1),
            layer=TetherV1ClientLayer(handshake_timeout=0.5),
            close_timeout=0.5,
        )
        await conn
        for _ in range(120):  # ~7.5 MiB unacknowledged: more than the socket buffers take
            await conn.send("x" * 65536)
        await eventually(lambda: connections >= 4, 10)  # each stalled replay gave up
        await conn.close()
        for ws in list(srv.connections):
            ws.transport.abort()
