"""``tether.serve`` in-process, driven by raw ``websockets`` clients over loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tests.support.browser import ChromiumWebSocket
from tests.support.eventually import eventually
from tests.support.handshake import handshake_status
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus

import tether
from tether.asyncio.apps import echo
from tether.asyncio.handover import health_check
from tether.asyncio.resume_server import TetherV1ServerLayer
from tether.asyncio.server import Server, ServerState
from tether.asyncio.session import RequestInfo
from tether.stores.sqlite import SQLiteStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

FAST = tether.Heartbeat(interval=None, timeout=None)


def _url(server: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def _client(server: Server, path: str = "/") -> ClientConnection:
    return await connect(_url(server, path), ping_interval=None, open_timeout=5)


async def _closed(ws: ClientConnection) -> tuple[int | None, str]:
    await asyncio.wait_for(ws.wait_closed(), 10)
    return ws.close_code, ws.close_reason


def _reads_until_closed() -> tuple[
    tether.asyncio.server.Handler, asyncio.Future[tether.asyncio.engine.ClosedInfo]
]:
    """A handler reading until its session ends, and the future of that session's ``closed``."""
    ended: asyncio.Future[tether.asyncio.engine.ClosedInfo] = asyncio.Future()

    async def handler(session: tether.Session) -> None:
        async for _ in session:
            pass
        ended.set_result(session.closed)  # type: ignore[arg-type]

    return handler, ended


async def _serving_forever(*, drain_window: float) -> tuple[Server, asyncio.Future[None]]:
    """An echo server run by ``serve_forever()`` in a task, returned once it is SERVING."""
    server = tether.serve(echo, "127.0.0.1", 0, heartbeat=FAST, drain_window=drain_window)
    forever = asyncio.ensure_future(server.serve_forever())
    # Waited for in time, not in loop turns: uvloop's create_server resolves even
    # "127.0.0.1" in libuv's thread pool, which once took more than 500 of its turns.
    await eventually(lambda: server.state is ServerState.SERVING, what="the server serves")
    return server, forever


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start servers on free loopback ports; shut down whatever is left at the end."""
    servers: list[Server] = []

    async def _start(handler: tether.asyncio.server.Handler = echo, **kwargs: object) -> Server:
        kwargs.setdefault("heartbeat", FAST)
        kwargs.setdefault("drain_window", 0.0)
        kwargs.setdefault("close_timeout", 2.0)
        server = tether.serve(handler, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return await server.start()

    yield _start
    for server in servers:
        await server.shutdown(drain_window=0.0)


async def test_echo_round_trip(start: Callable[..., Awaitable[Server]]) -> None:
    """A message sent to the echo app comes back unchanged, text and binary."""
    server = await start()
    async with await _client(server) as ws:
        await ws.send("hello")
        await ws.send(b"\x00\x01")
        assert await ws.recv() == "hello"
        assert await ws.recv() == b"\x00\x01"


async def test_session_knows_path_and_peer(start: Callable[..., Awaitable[Server]]) -> None:
    """The handler's session carries the request path and the client's address."""
    seen: list[tether.Session] = []

    async def handler(session: tether.Session) -> None:
        seen.append(session)
        await session.send(session.id)

    server = await start(handler)
    async with await _client(server, "/feed?x=1") as ws:
        session_id = await ws.recv()
    assert seen[0].id == session_id
    assert seen[0].path == "/feed?x=1"
    assert seen[0].remote_address is not None
    assert seen[0].remote_address[0] == "127.0.0.1"


async def test_an_open_connection_does_not_keep_the_101_response(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """websockets' copy of the 101 response is dropped after the handshake (~1 KiB per
    idle connection); the request's headers stay readable by the handler."""
    seen: list[str | None] = []

    async def handler(session: tether.Session) -> None:
        seen.append(session.request.headers.get("x-probe"))
        await session.send("ready")
        await session.send(f"got {await session.recv()}")  # frames still flow both ways

    server = await start(handler)
    async with connect(_url(server), ping_interval=None, additional_headers={"X-Probe": "1"}) as ws:
        assert await ws.recv() == "ready"
        assert ws.response is not None  # the client got its 101 as usual
        (record,) = server._connections.values()
        assert record.transport._ws.response is None
        await ws.send("ping")
        assert await ws.recv() == "got ping"
        assert seen == ["1"]


async def test_healthz_is_200_while_serving(start: Callable[..., Awaitable[Server]]) -> None:
    """GET /healthz answers 200 with the status and this process's pid."""
    server = await start()
    status, body = await health_check("127.0.0.1", server.port)
    assert status == 200
    assert body["status"] == "serving"
    assert body["pid"] == os.getpid()


async def test_healthz_says_json_once(start: Callable[..., Awaitable[Server]]) -> None:
    """One Content-Type header, application/json (two contradicting ones are invalid HTTP)."""
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head = response.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert [line for line in head if line.startswith(b"content-type:")] == [
        b"content-type: application/json"
    ]


async def test_unknown_plain_http_path_is_404(start: Callable[..., Awaitable[Server]]) -> None:
    """A plain HTTP request to a path the server does not know gets 404."""
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 404")


async def test_restart_closes_every_client_with_1012(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """restart() closes each connection with 1012 and the given reason."""
    server = await start()
    clients = [await _client(server) for _ in range(5)]
    await server.restart("deploy 42")
    results = await asyncio.gather(*(_closed(ws) for ws in clients))
    assert results == [(1012, "deploy 42")] * 5
    assert server.state is ServerState.CLOSED


async def test_restart_spreads_closes_over_the_window(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """With 20 clients and a 1 s window, first and last 1012 arrive >= 0.5 s apart."""
    server = await start(drain_window=1.0)
    clients = [await _client(server) for _ in range(20)]
    stamps: list[float] = []

    async def stamp(ws: ClientConnection) -> None:
        await _closed(ws)
        stamps.append(time.monotonic())

    watchers = [asyncio.ensure_future(stamp(ws)) for ws in clients]
    await server.restart()
    await asyncio.gather(*watchers)
    assert max(stamps) - min(stamps) >= 0.5
    assert max(stamps) - min(stamps) < 2.0


async def test_restart_closes_the_oldest_connection_first(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """The drain closes connections oldest first (docs/server.md): one per 0.1 s batch here."""

    async def handler(session: tether.Session) -> None:
        await session.send("open")
        async for _ in session:
            pass

    server = await start(handler, drain_window=0.4)  # 5 batches, 0.1 s apart
    clients: list[ClientConnection] = []
    for _ in range(5):
        ws = await _client(server)
        assert await asyncio.wait_for(ws.recv(), 5) == "open"  # open on both sides
        clients.append(ws)
    order: list[int] = []

    async def record(index: int, ws: ClientConnection) -> None:
        assert (await _closed(ws))[0] == 1012
        order.append(index)

    watchers = [asyncio.ensure_future(record(i, ws)) for i, ws in enumerate(clients)]
    await server.restart()
    await asyncio.wait_for(asyncio.gather(*watchers), 10)
    assert order == [0, 1, 2, 3, 4]


async def test_a_drain_stops_pinging_the_connections_it_will_close(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """Once the drain begins, no connection is pinged: each is closed within the window."""
    server = await start(heartbeat=tether.Heartbeat(interval=0.1, timeout=0.1), drain_window=1.0)
    clients = [await _client(server) for _ in range(3)]
    records = await eventually(
        lambda: list(server._connections.values()) if len(server._connections) == 3 else None
    )
    timers = [record.heartbeat for record in records]
    assert all(timer is not None and timer._handle is not None for timer in timers)  # armed
    drain = asyncio.ensure_future(server.restart())
    await eventually(lambda: server.state is ServerState.DRAINING)
    await asyncio.sleep(0)  # (the drain lists the connections before its first await)
    # Every timer disarmed, the last connection's too, which closes ~1 s from now.
    assert [timer._handle for timer in timers if timer is not None] == [None, None, None]
    assert clients[-1].state.name == "OPEN"
    await asyncio.wait_for(drain, 10)
    assert [(await _closed(ws))[0] for ws in clients] == [1012] * 3


async def test_health_and_upgrades_get_503_during_drain(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """While draining, /healthz answers 503 and a new WebSocket upgrade gets HTTP 503."""
    server = await start(drain_window=1.0)
    clients = [await _client(server) for _ in range(3)]
    drain = asyncio.ensure_future(server.restart())
    await asyncio.sleep(0)  # the drain has started: the state flips before any await
    assert server.state is ServerState.DRAINING
    status, body = await health_check("127.0.0.1", server.port)
    assert (status, body["status"]) == (503, "draining")
    with pytest.raises(InvalidStatus) as refused:
        await _client(server)
    assert refused.value.response.status_code == 503
    await drain
    for ws in clients:
        await ws.close()


async def test_shutdown_uses_the_given_code(start: Callable[..., Awaitable[Server]]) -> None:
    """shutdown(code=1001) closes clients with 1001 Going Away."""
    server = await start()
    ws = await _client(server)
    await server.shutdown(1001, "bye")
    assert await _closed(ws) == (1001, "bye")


async def test_shutdown_refuses_a_reserved_code(start: Callable[..., Awaitable[Server]]) -> None:
    """shutdown(1006) raises InvalidCloseCode and keeps serving."""
    server = await start()
    with pytest.raises(tether.InvalidCloseCode):
        await server.shutdown(1006)
    assert server.state is ServerState.SERVING


def test_serve_refuses_a_reserved_shutdown_code() -> None:
    """A shutdown_code that a server may not send is refused when the server is made."""
    with pytest.raises(tether.InvalidCloseCode):
        tether.serve(echo, "127.0.0.1", 0, shutdown_code=1006)


async def test_handler_return_closes_with_1000(start: Callable[..., Awaitable[Server]]) -> None:
    """When the handler returns, the client sees 1000 Normal Closure."""

    async def handler(session: tether.Session) -> None:
        await session.send("done")

    server = await start(handler)
    ws = await _client(server)
    assert await ws.recv() == "done"
    assert (await _closed(ws))[0] == 1000


@pytest.mark.parametrize(
    ("how", "layer", "code", "by"),
    [
        ("handler returns", "plain", 1000, "server"),
        ("handler closes", "plain", 4501, "server"),
        ("client closes", "plain", 4000, "client"),
        ("handler returns", "tether.v1", 1000, "server"),
        ("handler closes", "tether.v1", 4501, "server"),
        ("client closes", "tether.v1", 4000, "client"),
    ],
)
async def test_the_close_log_says_who_closed(
    start: Callable[..., Awaitable[Server]],
    caplog: pytest.LogCaptureFixture,
    how: str,
    layer: str,
    code: int,
    by: str,
) -> None:
    """by= names the side that started the close (before, always "client" without a cause)."""

    async def handler(session: tether.Session) -> None:
        await session.recv()
        if how == "handler closes":
            await session.close(4501, "bye")
        elif how == "client closes":
            await session.recv()

    store = None if layer == "plain" else "memory"
    server = await start(handler, store=store)
    caplog.set_level(logging.INFO, logger="tether.server")
    if layer == "plain":
        ws = await _client(server)
        await ws.send("go")
    else:
        ws = await connect(_url(server), ping_interval=None, subprotocols=["tether.v1"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "sid": None, "token": None, "rx": 0}))
        await ws.recv()  # welcome
        await ws.send("d1:0:go")
    if how == "client closes":
        await ws.close(4000)
    assert (await _closed(ws))[0] == code
    closes = await eventually(
        lambda: [r for r in caplog.records if r.getMessage().startswith("close ")], 5
    )
    assert closes[0].getMessage().split(" by=")[1].split()[0] == by
    assert closes[0].tether["cause"] == by  # type: ignore[attr-defined]


async def test_handler_exception_closes_with_1011_and_logs(
    start: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in the handler closes with 1011 and is logged with its traceback."""

    async def handler(session: tether.Session) -> None:
        await session.recv()
        raise RuntimeError("boom")

    server = await start(handler)
    caplog.set_level(logging.INFO, logger="tether.server")
    ws = await _client(server)
    await ws.send("go")
    assert (await _closed(ws))[0] == 1011
    failures = [r for r in caplog.records if r.name == "tether.server" and r.exc_info]
    assert failures
    assert "boom" in str(failures[0].exc_info[1])  # type: ignore[index]


async def test_session_close_refuses_reserved_codes(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """session.close(1006) and close(1010) raise; nothing reaches the wire, the close is 1000."""
    errors: list[str] = []

    async def handler(session: tether.Session) -> None:
        for code in (1005, 1006, 1015, 1010, 2000, 999):
            try:
                await session.close(code)
            except tether.InvalidCloseCode:
                errors.append(str(code))
        await session.send("still open")

    server = await start(handler)
    ws = await _client(server)
    assert await ws.recv() == "still open"
    assert (await _closed(ws))[0] == 1000
    assert errors == ["1005", "1006", "1015", "1010", "2000", "999"]


async def test_session_close_sends_code_and_reason(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """session.close(4001, reason) reaches the client as 4001 with the reason."""

    async def handler(session: tether.Session) -> None:
        info = await session.close(4001, "go away")
        assert info.code == 4001

    server = await start(handler)
    ws = await _client(server)
    assert await _closed(ws) == (4001, "go away")


async def test_session_close_refuses_long_reason(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A close reason over 123 UTF-8 bytes raises ConfigurationError."""
    errors: list[Exception] = []

    async def handler(session: tether.Session) -> None:
        try:
            await session.close(1000, "é" * 62)
        except tether.ConfigurationError as exc:
            errors.append(exc)

    server = await start(handler)
    ws = await _client(server)
    await _closed(ws)
    assert len(errors) == 1


@pytest.mark.parametrize("how", ["restart", "shutdown", "hand_off"])
async def test_a_drain_refuses_a_long_reason_before_any_io(
    start: Callable[..., Awaitable[Server]], how: str
) -> None:
    """restart/shutdown/hand_off with a 124-byte reason: ConfigurationError, still serving.

    (Before, the drain started and each Close frame failed in the engine: every client
    saw a 1006 instead of the 1012, and an ERROR traceback was logged per connection.)
    """
    server = await start()
    ws = await _client(server)
    with pytest.raises(tether.ConfigurationError, match="124 bytes"):
        await getattr(server, how)(reason="é" * 62)
    assert server.state is ServerState.SERVING
    await ws.send("still here")
    assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    await server.restart(reason="é" * 61)  # 122 bytes: fits
    assert await _closed(ws) == (1012, "é" * 61)


async def test_an_idle_connection_without_a_handshake_neither_delays_nor_outlives_a_drain(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A TCP connection that never sends its request is dropped when the drain ends.

    (Before, shutdown() waited close_timeout for it, then cancelled websockets' task,
    which left the socket open: still open 6 s later, past open_timeout.)
    """
    server = await start(close_timeout=5.0, open_timeout=10.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await eventually(lambda: len(server._opening) == 1, 5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(server.shutdown(), 10)
        assert loop.time() - began < 1.0
        assert await asyncio.wait_for(reader.read(100), 2) == b""  # closed by the server
    finally:
        writer.close()


async def test_client_close_ends_the_session(start: Callable[..., Awaitable[Server]]) -> None:
    """When the client closes with 1000, the handler's loop ends and the session says 1000."""
    handler, ended = _reads_until_closed()
    server = await start(handler)
    ws = await _client(server)
    await ws.close(1000)
    info = await asyncio.wait_for(ended, 5)
    assert (info.code, info.clean) == (1000, True)


async def test_recv_after_end_raises_connection_closed(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """After the client closes with 4000, recv() raises ConnectionClosedError with the code."""
    raised: asyncio.Future[BaseException] = asyncio.Future()

    async def handler(session: tether.Session) -> None:
        try:
            while True:
                await session.recv()
        except tether.ConnectionClosed as exc:
            raised.set_result(exc)

    server = await start(handler)
    ws = await _client(server)
    await ws.close(4000)
    exc = await asyncio.wait_for(raised, 5)
    assert isinstance(exc, tether.ConnectionClosedError)
    assert exc.code == 4000  # type: ignore[attr-defined]


async def _silent_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand and never answer anything (pings included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_heartbeat_culls_a_silent_client_with_1006(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A client that never answers pings is dropped in interval + timeout; handler sees 1006."""
    ended: asyncio.Future[tuple[float, tether.asyncio.engine.ClosedInfo]] = asyncio.Future()

    async def handler(session: tether.Session) -> None:
        opened = time.monotonic()
        async for _ in session:
            pass
        ended.set_result((time.monotonic() - opened, session.closed))  # type: ignore[arg-type]

    server = await start(handler, heartbeat=tether.Heartbeat(interval=0.3, timeout=0.3))
    _, writer = await _silent_client(server.port)
    elapsed, info = await asyncio.wait_for(ended, 5)
    writer.close()
    assert (info.code, info.clean) == (1006, False)
    assert 0.6 * 0.9 <= elapsed <= 0.6 * 1.1 + 0.1


async def test_culled_connections_leave_no_live_objects_behind(
    start: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    """Waves of silent clients, culled by the heartbeat: after a full collection the
    count of live objects is back where it was after the first wave (the RSS test in
    tests/compliance cannot tell a leak from the allocator's layout; this can)."""
    import gc

    # Captured log records (INFO: a line per connect and close) would count as leaks.
    caplog.set_level(logging.WARNING)
    server = await start(heartbeat=tether.Heartbeat(interval=0.05, timeout=0.05))
    counts: list[int] = []
    for _ in range(3):
        writers = [(await _silent_client(server.port))[1] for _ in range(40)]
        # Culled within ~0.1 s of the last connect.
        await eventually(lambda: not server._connections, what="every silent client culled")
        for writer in writers:
            writer.close()
        del writers
        await asyncio.sleep(0)  # the writers' transports finish closing
        await asyncio.sleep(0)
        gc.collect()
        counts.append(len(gc.get_objects()))
    # One leaked connection keeps ~40 objects alive; between the second and the third
    # wave the count did not move at all (first-use caches fill during the first).
    assert counts[2] - counts[1] <= 10, counts


async def test_heartbeat_keeps_an_answering_client(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A client that answers pings stays connected past several intervals."""
    server = await start(heartbeat=tether.Heartbeat(interval=0.1, timeout=0.1))
    async with await _client(server) as ws:
        (record,) = await eventually(lambda: list(server._connections.values()))
        heartbeat = record.heartbeat
        assert heartbeat is not None
        # Wait for the server's pings, not for a time: the 6th ping is sent at 0.6 s at the
        # earliest, after the pong deadlines of pings 1-5 were checked (a missed pong
        # there would have culled the connection and stopped the pings).
        await eventually(
            lambda: heartbeat._machine._counter >= 6 or heartbeat.dead,
            what="six pings sent (or the connection culled)",
        )
        assert not heartbeat.dead
        assert server._connections.get(record.transport) is record
        await ws.send("alive")
        assert await ws.recv() == "alive"
        # The stimulus was real: the server read the client's pongs.
        assert heartbeat._machine.last_rtt is not None


async def test_drain_cancels_handlers_that_ignore_the_end(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A handler that never looks at its session is cancelled after the drain, bounded."""
    cancelled = asyncio.Event()

    async def handler(session: tether.Session) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = await start(handler, close_timeout=0.5)
    ws = await _client(server)
    started = time.monotonic()
    await server.restart()
    assert time.monotonic() - started < 3.0
    assert cancelled.is_set()
    assert (await _closed(ws))[0] == 1012


async def test_compression_is_off_by_default(start: Callable[..., Awaitable[Server]]) -> None:
    """A client offering permessage-deflate gets no extension back."""
    server = await start()
    async with connect(_url(server), compression="deflate", ping_interval=None) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers  # type: ignore[union-attr]


async def test_await_serves_until_shutdown() -> None:
    """``await server`` returns once another task has shut the server down."""
    server, forever = await _serving_forever(drain_window=0.0)
    assert server.state is ServerState.SERVING
    assert not forever.done()
    await server.shutdown()
    await asyncio.wait_for(forever, 5)
    assert server.state is ServerState.CLOSED


async def test_async_with_shuts_down_with_1001() -> None:
    """Leaving ``async with`` closes remaining clients with 1001 Going Away."""
    async with tether.serve(echo, "127.0.0.1", 0, heartbeat=FAST, drain_window=0.0) as server:
        ws = await _client(server)
    assert (await _closed(ws))[0] == 1001


@pytest.mark.parametrize(
    ("signum", "code"),
    [
        pytest.param(signal.SIGHUP, 1012, id="SIGHUP-restart-1012"),
        pytest.param(signal.SIGINT, 1001, id="SIGINT-going-away-1001"),
        pytest.param(signal.SIGTERM, 1012, id="SIGTERM-default-shutdown_code-1012"),
    ],
)
async def test_signal_closes_every_connection_with_its_code(
    start: Callable[..., Awaitable[Server]], signum: signal.Signals, code: int
) -> None:
    """With handle_signals: SIGHUP drains with 1012, SIGINT 1001, SIGTERM shutdown_code (1012)."""
    server = await start(handle_signals=True)
    ws = await _client(server)
    os.kill(os.getpid(), signum)
    assert (await _closed(ws))[0] == code
    await asyncio.wait_for(server.wait_closed(), 5)


async def test_log_line_per_connect_and_close(
    start: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    """One log record per connect and per close, the close carrying the code explained."""
    caplog.set_level(logging.INFO, logger="tether.server")
    server = await start()
    ws = await _client(server)
    await server.restart()
    await _closed(ws)
    events = [getattr(r, "tether", {}).get("event") for r in caplog.records]
    assert events.count("connect") == 1
    assert events.count("close") == 1
    close = next(r for r in caplog.records if getattr(r, "tether", {}).get("event") == "close")
    assert close.tether["code"] == 1012  # type: ignore[attr-defined]
    assert "Service Restart" in close.tether["explanation"]  # type: ignore[attr-defined]
    assert json.dumps(close.tether)  # type: ignore[attr-defined]


async def test_send_after_close_raises(start: Callable[..., Awaitable[Server]]) -> None:
    """session.send() after the session ended raises ConnectionClosed, not an engine error."""
    raised: asyncio.Future[BaseException] = asyncio.Future()

    async def handler(session: tether.Session) -> None:
        async for _ in session:
            pass
        try:
            await session.send("late")
        except tether.ConnectionClosed as exc:
            raised.set_result(exc)

    server = await start(handler)
    ws = await _client(server)
    await ws.close(1000)
    assert isinstance(await asyncio.wait_for(raised, 5), tether.ConnectionClosedOK)


async def test_client_aborted_is_1006_for_the_handler(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A client that drops TCP without a Close frame ends the session with 1006, not clean."""
    handler, ended = _reads_until_closed()
    server = await start(handler)
    ws = await _client(server)
    assert ws.transport is not None
    ws.transport.abort()
    info = await asyncio.wait_for(ended, 5)
    assert (info.code, info.clean) == (1006, False)
    with pytest.raises(WsConnectionClosed):
        await ws.recv()


async def test_cancelling_serve_forever_closes_with_1001() -> None:
    """Cancelling ``await server`` closes every client with 1001 at once, then re-raises."""
    server, forever = await _serving_forever(drain_window=10.0)
    ws = await _client(server)
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert (await _closed(ws))[0] == 1001
    assert server.state is ServerState.CLOSED


class _RefusingLayer(tether.asyncio.session.PlainServerLayer):
    """A session layer whose handshake fails with a given close code."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    async def open(
        self, transport: tether.asyncio.engine.Transport, request: RequestInfo
    ) -> tether.Session:
        raise tether.ProtocolError("bad hello", close_code=self.code)


@pytest.mark.parametrize(("layer_code", "wire_code"), [(1008, 1008), (1006, 1002)])
async def test_layer_handshake_failure_closes_with_a_sendable_code(
    start: Callable[..., Awaitable[Server]], layer_code: int, wire_code: int
) -> None:
    """A layer's ProtocolError closes with its code, or 1002 if that code may not be sent."""
    server = await start(layer=_RefusingLayer(layer_code))
    ws = await _client(server)
    assert (await _closed(ws))[0] == wire_code


async def test_sessions_lists_open_sessions(start: Callable[..., Awaitable[Server]]) -> None:
    """server.sessions holds the session of each open connection."""
    server = await start()
    async with await _client(server) as ws:
        await ws.send("x")
        await ws.recv()
        assert len(server.sessions) == 1
    for _ in range(100):  # bounded: the close is processed within a few loop turns
        if not server.sessions:
            break
        await asyncio.sleep(0.01)
    assert server.sessions == []


async def test_hand_off_moves_new_connections_to_the_replacement() -> None:
    """hand_off() with reuse_port: 1012 to our clients, new connects reach the other server."""
    replacement_sessions: list[tether.Session] = []

    async def on_replacement(session: tether.Session) -> None:
        replacement_sessions.append(session)
        await echo(session)

    common = {"heartbeat": FAST, "drain_window": 0.2, "close_timeout": 2.0, "reuse_port": True}
    async with tether.serve(echo, "127.0.0.1", 0, **common) as old:  # type: ignore[arg-type]
        port = old.port
        clients = [await _client(old) for _ in range(3)]  # before the replacement exists
        async with tether.serve(on_replacement, "127.0.0.1", port, **common) as new:  # type: ignore[arg-type]
            await old.hand_off("deploy")
            assert [await _closed(ws) for ws in clients] == [(1012, "deploy")] * 3
            for _ in range(5):  # whichever the kernel would have picked, it is the replacement
                async with await _client(new) as ws:
                    await ws.send("here")
                    assert await ws.recv() == "here"
            assert len(replacement_sessions) == 5


class _KeepingLayer(tether.asyncio.session.PlainServerLayer):
    """Keeps one session per request path across connections (a stand-in for tether.v1)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_path: dict[str, tether.Session] = {}

    async def open(
        self, transport: tether.asyncio.engine.Transport, request: RequestInfo
    ) -> tether.Session:
        session = self.by_path.get(request.path)
        if session is None:
            session = self.by_path[request.path] = tether.Session(self, request)
        return session

    def connection_lost(
        self, session: tether.Session, info: tether.asyncio.engine.ClosedInfo
    ) -> bool:
        return False


async def test_a_kept_session_runs_one_handler_across_connections(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A layer that keeps sessions gets one handler run, fed by successive connections."""
    runs: list[str] = []
    received: list[str | bytes] = []

    async def handler(session: tether.Session) -> None:
        runs.append(session.id)
        async for message in session:
            received.append(message)

    server = await start(handler, layer=_KeepingLayer())
    first = await _client(server, "/s")
    await first.send("a")
    await first.close(4000)
    second = await _client(server, "/s")
    await second.send("b")
    for _ in range(100):  # bounded: both messages arrive within a few loop turns
        if len(received) == 2:
            break
        await asyncio.sleep(0.01)
    assert received == ["a", "b"]
    assert len(runs) == 1
    await server.restart()
    assert (await _closed(second))[0] == 1012
    assert server.state is ServerState.CLOSED


async def test_origins_admit_listed_origins_and_refuse_others_with_403(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """origins=[exact, pattern]: both admitted (101); a foreign or missing Origin gets 403."""
    import re

    handled: list[str | None] = []

    async def handler(session: tether.Session) -> None:
        handled.append(session.request.headers.get("origin"))
        await session.recv()

    server = await start(
        handler, origins=["https://app.example", re.compile(r"https://[a-z]+\.app\.example")]
    )
    assert await handshake_status(server.port, "https://app.example") == 101
    assert await handshake_status(server.port, "https://eu.app.example") == 101
    assert await handshake_status(server.port, "https://evil.example") == 403
    assert await handshake_status(server.port, "https://eu.app.example.evil") == 403
    assert await handshake_status(server.port, None) == 403
    # A barrier instead of a sleep: an admitted handshake after the refused ones; once its
    # handler ran, any handler a refused handshake had started would have run too.
    assert await handshake_status(server.port, "https://last.app.example") == 101
    await eventually(lambda: "https://last.app.example" in handled, what="the last handler")
    # A 403 costs no session and no handler: only the three admitted ones ran.
    assert sorted(handled, key=str) == [
        "https://app.example",
        "https://eu.app.example",
        "https://last.app.example",
    ]


async def test_origins_none_entry_admits_clients_without_origin(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A None entry admits a handshake with no Origin header (a non-browser client)."""
    server = await start(origins=["https://app.example", None])
    assert await handshake_status(server.port, None) == 101
    assert await handshake_status(server.port, "https://evil.example") == 403


async def test_no_origins_checks_nothing(start: Callable[..., Awaitable[Server]]) -> None:
    """The default (origins=None) admits any Origin."""
    server = await start()
    assert await handshake_status(server.port, "https://evil.example") == 101


def test_origins_must_be_a_list() -> None:
    """origins="https://app.example" (one string, not a list) is a ConfigurationError."""
    with pytest.raises(tether.ConfigurationError):
        tether.serve(echo, "127.0.0.1", 0, origins="https://app.example")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_size", 0, "max_size must be an integer >= 1 or None, not 0"),
        ("max_size", -1, "max_size must be an integer >= 1 or None, not -1"),
        ("max_size", True, "max_size must be an integer >= 1 or None, not True"),
        ("open_timeout", 0, "open_timeout must be > 0 seconds or None, not 0"),
        ("open_timeout", -1.0, "open_timeout must be > 0 seconds or None, not -1.0"),
        ("health_path", "healthz", "health_path must be a path starting with '/'"),
        ("health_path", "", "health_path must be a path starting with '/'"),
        ("backlog", 0, "backlog must be >= 1, not 0"),
        ("close_timeout", 0, "close_timeout must be a finite number of seconds > 0, not 0"),
    ],
)
def test_settings_that_would_break_every_connection_are_refused(
    option: str, value: object, message: str
) -> None:
    """serve() refuses, at once, settings with which it would start and then fail every
    connection: a max_size under 1 (tether.v1's hello refused with 1009), an
    open_timeout of 0 or less (every connection dropped, /healthz too), a health path
    without its "/" (the health check answered 404)."""
    with pytest.raises(tether.ConfigurationError, match=re.escape(message)):
        tether.serve(echo, "127.0.0.1", 0, **{option: value})


async def test_the_limits_a_server_accepts(start: Callable[..., Awaitable[Server]]) -> None:
    """The edges that are valid stay valid: max_size 1 and None, open_timeout None,
    health_path None."""
    for kwargs in ({"max_size": 1}, {"max_size": None}, {"open_timeout": None}):
        server = await start(**kwargs)
        status, _ = await health_check("127.0.0.1", server.port)
        assert status == 200
    server = await start(health_path=None)
    assert await handshake_status(server.port, None) == 101


@pytest.mark.timeout(60)
async def test_chromium_page_is_admitted_by_its_origin_and_refused_by_another(
    start: Callable[..., Awaitable[Server]],
    chromium: Callable[[str], Awaitable[ChromiumWebSocket]],
) -> None:
    """A browser page's Origin in origins= opens; the same page against another list fails."""
    seen: list[str | None] = []

    async def record_origin(session: tether.Session) -> None:
        seen.append(session.request.headers.get("origin"))
        async for message in session:
            await session.send(message)

    open_server = await start(record_origin)
    browser = await chromium(f"ws://127.0.0.1:{open_server.port}/")
    await browser.expect_event("open", timeout=20)
    page_origin = seen[0]  # what this page sends (an opaque about:blank page sends "null")
    assert page_origin is not None

    admitting = await start(record_origin, origins=[page_origin])
    admitted = await chromium(f"ws://127.0.0.1:{admitting.port}/")
    await admitted.expect_event("open", timeout=20)

    refusing = await start(record_origin, origins=["https://app.example"])
    refused = await chromium(f"ws://127.0.0.1:{refusing.port}/")
    closed = await refused.expect_event("close", timeout=20)
    assert closed["code"] == 1006  # the handshake got 403: no WebSocket, no handler
    assert seen == [page_origin, page_origin]


async def test_request_headers_ignore_the_case_of_names_and_join_repeats(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """session.request.headers: any case finds a name (RFC 9110 §5.1), repeats joined.

    (Before, only the lower-case name was found: headers["Authorization"] raised
    KeyError and .get("Authorization") was None, silently, in a principal hook.)
    """
    seen: list[tether.Session] = []

    async def handler(session: tether.Session) -> None:
        seen.append(session)
        await session.send("ok")

    server = await start(handler)
    headers = [("X-Thing", "a"), ("x-thing", "b"), ("X-Other", "c")]
    async with connect(_url(server), ping_interval=None, additional_headers=headers) as ws:
        await ws.recv()
    request = seen[0].request.headers
    assert request["x-thing"] == request["X-Thing"] == "a, b"
    assert request.get("X-OTHER") == "c"
    assert "X-Thing" in request
    assert "X-Missing" not in request
    assert dict(request)["upgrade"].lower() == "websocket"  # iterated lower-cased


async def test_plain_session_ends_when_the_client_closes_while_the_handler_is_busy(
    start: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that does not read learns of the end (wait_closed); the close is logged then."""
    caplog.set_level(logging.INFO, logger="tether.server")
    ended: asyncio.Future[tether.asyncio.engine.ClosedInfo] = asyncio.Future()
    release = asyncio.Event()

    async def handler(session: tether.Session) -> None:
        ended.set_result(await session.wait_closed())
        await release.wait()  # still running after the connection closed, until the test says

    server = await start(handler)
    ws = await _client(server)
    await ws.close(4000, "done")
    try:
        info = await asyncio.wait_for(ended, 5)
        assert (info.code, info.reason, info.clean) == (4000, "done", True)
        events = [getattr(r, "tether", {}).get("event") for r in caplog.records]
        assert events.count("close") == 1  # logged at the close, before the handler returned
        assert server.sessions == []
    finally:
        release.set()


async def test_an_idle_plain_connection_costs_one_task(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """Plain sessions (default layer, plain client) run their handler in the connection's task."""
    server = await start(heartbeat=tether.Heartbeat(15.0, 10.0))
    await asyncio.sleep(0)
    before = len(asyncio.all_tasks())
    clients = [await _client(server) for _ in range(5)]
    for _ in range(50):  # bounded: until the five handlers are waiting in recv()
        if len(server.sessions) == 5:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # websockets' clients run no task of their own: what is left is the server's, one
    # per connection (websockets' connection task, where the handler runs).
    assert len(asyncio.all_tasks()) - before == 5
    for ws in clients:
        await ws.send("still echoing")
        assert await ws.recv() == "still echoing"
        await ws.close()


async def test_handler_exception_in_a_busy_plain_session_closes_with_1011(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A handler that fails after reading closes the connection with 1011, and only once."""

    async def handler(session: tether.Session) -> None:
        await session.recv()
        raise RuntimeError("boom")

    server = await start(handler)
    ws = await _client(server)
    await ws.send("go")
    assert await _closed(ws) == (1011, "internal error")


async def test_client_gone_before_its_hello_is_logged_as_a_close_not_a_failure(
    start: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    """A tether.v1 client that drops before its hello: an access-log close, no traceback.

    Before, the TransportClosed from waiting for the hello escaped the connection's
    handler and websockets logged "connection handler failed" with a traceback.
    """
    server = await start()
    caplog.set_level(logging.INFO)
    ws = await connect(_url(server), subprotocols=["tether.v1"], ping_interval=None)  # type: ignore[list-item]
    assert ws.subprotocol == "tether.v1"
    ws.transport.abort()  # gone without a hello, or a close frame
    closes = await eventually(
        lambda: [r for r in caplog.records if r.name == "tether.server" and "close " in r.message],
        what="the server's access-log line for the close",
    )
    assert "code=1006" in closes[0].message
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert failures == []


async def test_a_plain_session_sends_bytes_like_messages(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A handler's send(bytearray) / send(memoryview) arrive as binary messages."""

    async def send_buffers(session: tether.Session) -> None:
        await session.send(bytearray(b"ab"))
        await session.send(memoryview(b"cd"))
        await session.recv()

    server = await start(send_buffers, store=None)
    async with await _client(server) as ws:
        assert [await ws.recv(), await ws.recv()] == [b"ab", b"cd"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        # close_timeout=None is refused, unlike connect()'s: a drain must end (DESIGN.md §6).
        ("close_timeout", None, "close_timeout must be a finite number of seconds > 0 (a drain"),
        ("close_timeout", "1", "close_timeout must be a finite number of seconds > 0 (a drain"),
        ("close_timeout", float("inf"), "close_timeout must be a finite number of seconds > 0"),
        ("close_timeout", float("nan"), "close_timeout must be a finite number of seconds > 0"),
        ("drain_window", None, "drain_window must be a finite number of seconds >= 0, not None"),
        ("drain_window", "1", "drain_window must be a finite number of seconds >= 0, not '1'"),
        ("backlog", "5", "backlog must be an integer >= 1, not '5'"),
        ("backlog", None, "backlog must be an integer >= 1, not None"),
        ("backlog", 1.5, "backlog must be an integer >= 1, not 1.5"),
        ("backlog", float("nan"), "backlog must be an integer >= 1, not nan"),
        ("backlog", 10**10, "backlog must be at most 2147483647, not 10000000000"),
        ("port", -1, "port must be 0..65535 or None, not -1"),
        ("port", 70000, "port must be 0..65535 or None, not 70000"),
        ("port", "http", "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", " 80", "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", "+80", "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", "", "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", "\u0663", "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", 0.0, "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", 8765.0, "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", True, "port must be an integer 0..65535 (or its decimal digits as a string)"),
        ("port", "70000", "port must be 0..65535 or None, not 70000"),
        ("host", 5, "host must be an interface name or address or None, not 5"),
        ("heartbeat", (1, 2), "heartbeat must be a tether.Heartbeat or None, not (1, 2)"),
        ("principal", "x", "principal must be a function of the request or None, not 'x'"),
        ("resume_window", float("inf"), "resume_window must be a finite number of seconds > 0"),
    ],
)
def test_serve_checks_every_setting_when_called(option: str, value: object, message: str) -> None:
    """serve() refuses these at once with ConfigurationError (before: a TypeError or
    OverflowError at start, or a traceback and 1011 on every connection)."""
    kwargs: dict[str, object] = {"host": "127.0.0.1", "port": 0, option: value}
    with pytest.raises(tether.ConfigurationError, match=re.escape(message)):
        tether.serve(echo, **kwargs)  # type: ignore[arg-type]


async def test_a_port_given_as_decimal_digits_is_that_port() -> None:
    """serve(handler, host, os.environ["PORT"]): a string of digits is the port it spells, as
    it was when the bind resolved it (before: refused by the call-time check)."""
    async with tether.serve(echo, "127.0.0.1", "0", heartbeat=FAST) as server:
        assert server.requested_port == 0
        port = server.port
        async with await _client(server) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    async with tether.serve(echo, "127.0.0.1", str(port), heartbeat=FAST) as again:
        assert again.requested_port == port
        assert again.port == port


@pytest.mark.parametrize("handler", [None, "echo"])
def test_serve_refuses_a_handler_it_cannot_call(handler: object) -> None:
    """handler=None (or any non-callable) is a ConfigurationError, not a 1011 per connection."""
    with pytest.raises(tether.ConfigurationError, match="handler must be a coroutine function"):
        tether.serve(handler, "127.0.0.1", 0)  # type: ignore[arg-type]


async def test_a_failed_start_undoes_what_it_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """handle_signals failing (as outside the main thread) closes the listener, stops the
    sweeper and closes the store serve() opened, then raises the original error.

    (Before: the server stayed SERVING on its port with the sweeper and the SQLite thread
    running, past asyncio.run.)
    """
    seen: dict[str, object] = {}

    def refuse(server: Server) -> None:
        seen["port"] = server.port
        seen["layer"] = server.layer
        raise RuntimeError("set_wakeup_fd only works in main thread of the main interpreter")

    monkeypatch.setattr(Server, "_install_signal_handlers", refuse)
    server = tether.serve(
        echo, "127.0.0.1", 0, handle_signals=True, store=f"sqlite:///{tmp_path / 's.db'}"
    )
    with pytest.raises(RuntimeError, match="main thread"):
        await server.start()
    assert server.state is ServerState.CLOSED
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", seen["port"])
    layer = seen["layer"]
    assert isinstance(layer, TetherV1ServerLayer)
    assert layer._sweeper is None
    assert layer.store._closed  # type: ignore[attr-defined]
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t for t in others if not t.done()] == []
    await server.wait_closed()  # (returns: the server is closed)


async def test_a_failed_bind_closes_the_store_serve_opened(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    """A bind that fails (the port taken) closes the store serve() opened from a URL, as any
    failed start does (before: only once the session layer had started, after the bind)."""
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", unused_tcp_port)
    try:
        server = tether.serve(
            echo, "127.0.0.1", unused_tcp_port, store=f"sqlite:///{tmp_path / 's.db'}"
        )
        with pytest.raises(OSError, match="address already in use"):
            await server.start()
    finally:
        taken.close()
    assert server.state is ServerState.CLOSED
    layer = server.layer
    assert isinstance(layer, TetherV1ServerLayer)
    assert layer._sweeper is None
    assert layer.store._closed  # type: ignore[attr-defined]


async def test_restart_and_shutdown_before_start_close_the_server() -> None:
    """Before start(), restart() and shutdown() (in any order, any number) close the server
    without it ever listening (before: the second raised a bare AssertionError)."""
    for first, second in (("restart", "shutdown"), ("shutdown", "restart")):
        server = tether.serve(echo, "127.0.0.1", 0)
        await getattr(server, first)()
        await getattr(server, second)()
        assert server.state is ServerState.CLOSED
        await server.wait_closed()


async def test_restart_or_shutdown_before_start_closes_the_store_serve_opened(
    tmp_path: Path,
) -> None:
    """A store serve() opened from a URL is closed by a restart() or shutdown() that comes
    before start(), as by a failed start (before: it stayed open, with its thread once used).
    A store passed in as an object is the caller's and stays open."""
    for action in ("restart", "shutdown"):
        server = tether.serve(echo, "127.0.0.1", 0, store=f"sqlite:///{tmp_path / action}.db")
        layer = server.layer
        assert isinstance(layer, TetherV1ServerLayer)
        await layer.store.epoch()  # used once: the store's thread and file are open
        await getattr(server, action)()
        assert server.state is ServerState.CLOSED
        assert layer.store._closed  # type: ignore[attr-defined]
        await server.wait_closed()
    own = SQLiteStore(tmp_path / "own.db")
    try:
        server = tether.serve(echo, "127.0.0.1", 0, store=own)
        await server.shutdown()
        assert not own._closed
        assert await own.epoch()  # (still usable)
    finally:
        await own.close()


async def test_start_after_close_is_a_clear_error(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """start() on a closed server raises RuntimeError (before: it returned without listening)."""
    never_started = tether.serve(echo, "127.0.0.1", 0)
    await never_started.shutdown()
    with pytest.raises(RuntimeError, match="the server is closed"):
        await never_started.start()
    server = await start()
    await server.shutdown(drain_window=0.0)
    with pytest.raises(RuntimeError, match="the server is closed"):
        await server.start()


def test_port_before_start_is_a_state_error() -> None:
    """server.port before start() raises RuntimeError (a state error), not ConfigurationError."""
    server = tether.serve(echo, "127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="not listening") as raised:
        _ = server.port
    assert not isinstance(raised.value, tether.ConfigurationError)


async def test_shutdown_from_another_event_loop_is_refused(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """shutdown() awaited on another loop raises RuntimeError at once and changes nothing
    (before: it timed out, logged "Task exception was never retrieved", said CLOSED)."""
    server = await start()

    def shut_down_elsewhere() -> None:
        asyncio.run(server.shutdown())

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(shut_down_elsewhere)
    assert server.state is ServerState.SERVING
    status, _ = await health_check("127.0.0.1", server.port)
    assert status == 200


async def test_hand_off_from_another_event_loop_steers_nothing(
    start: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hand_off() awaited on another loop raises RuntimeError before it touches the kernel's
    steering (before: it steered new connections to the replacement, then raised, and this
    server kept serving without ever draining)."""
    steered: list[object] = []

    def steer(sock: object) -> bool:
        steered.append(sock)
        return True

    monkeypatch.setattr(tether.asyncio.server, "steer_to_second_listener", steer)
    server = await start(reuse_port=True)

    def hand_off_elsewhere() -> None:
        asyncio.run(server.hand_off())

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(hand_off_elsewhere)
    assert steered == []
    assert server.state is ServerState.SERVING
    async with await _client(server) as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"


@pytest.mark.parametrize(
    "call",
    [
        lambda server: server.restart("x" * 200),
        lambda server: server.shutdown(1006),
        lambda server: server.hand_off("x" * 200),
    ],
    ids=["restart", "shutdown", "hand_off"],
)
async def test_the_event_loop_is_checked_before_the_arguments(
    start: Callable[..., Awaitable[Server]], call: Callable[[Server], Awaitable[None]]
) -> None:
    """From another loop, even a call with a bad argument says RuntimeError (the loop is
    checked first, as in start())."""
    server = await start()

    def call_elsewhere() -> None:
        asyncio.run(call(server))  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(call_elsewhere)
    assert server.state is ServerState.SERVING


def _count_binds(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every listener the server's engine creates."""
    listeners: list[object] = []
    real = tether.asyncio.server.ws_serve

    async def counting(*args: object, **kwargs: object) -> object:
        listener = await real(*args, **kwargs)  # type: ignore[arg-type]
        listeners.append(listener)
        return listener

    monkeypatch.setattr(tether.asyncio.server, "ws_serve", counting)
    return listeners


@pytest.mark.parametrize("port", ["any", "fixed"])
async def test_concurrent_starts_share_one_bind(
    port: str, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    """Two start() calls at once: one listener, SERVING, reachable; both return the server.

    (Before: both bound while the state was NEW. With a fixed port the second failed
    "address in use" and its undo closed the first one's listener and stopped the layer,
    and the server then said SERVING; with port 0 the second listener replaced the first,
    which was left open.)
    """
    listeners = _count_binds(monkeypatch)
    server = tether.serve(
        echo, "127.0.0.1", 0 if port == "any" else unused_tcp_port, heartbeat=FAST
    )
    try:
        assert await asyncio.gather(server.start(), server.start()) == [server, server]
        assert len(listeners) == 1
        assert server.state is ServerState.SERVING
        async with await _client(server) as ws:
            await ws.send("one")
            assert await ws.recv() == "one"
    finally:
        await server.shutdown(drain_window=0.0)
    # (list(): the stdlib loop's Server.sockets is a tuple, uvloop's a list.)
    assert [list(listener.sockets) for listener in listeners] == [[]]  # type: ignore[attr-defined]


async def test_a_start_waited_for_that_fails_is_a_closed_server_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start() that waited for another call's start which failed raises RuntimeError;
    the failing call raises the bind's error; one bind was tried."""

    async def refuse(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(0)
        raise OSError(98, "address already in use")

    monkeypatch.setattr(tether.asyncio.server, "ws_serve", refuse)
    server = tether.serve(echo, "127.0.0.1", 0, heartbeat=FAST)
    first, second = await asyncio.gather(server.start(), server.start(), return_exceptions=True)
    assert isinstance(first, OSError)
    assert isinstance(second, RuntimeError)
    assert "its start failed" in str(second)
    assert server.state is ServerState.CLOSED


async def test_a_shutdown_during_start_drains_what_the_start_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """shutdown() while start() binds waits for the start, then drains: the server ends
    closed, its listener too (before: shutdown said CLOSED at once, then the start made it
    SERVING, listening with the drain already over)."""
    listeners = _count_binds(monkeypatch)
    server = tether.serve(echo, "127.0.0.1", 0, heartbeat=FAST)
    await asyncio.gather(server.start(), server.shutdown(drain_window=0.0))
    assert server.state is ServerState.CLOSED
    assert len(listeners) == 1
    assert list(listeners[0].sockets) == []  # type: ignore[attr-defined]


def test_docs_state_how_long_the_layer_stop_waits_for_the_store() -> None:
    """docs/server.md (drain step 4) gives the layer's stop bound as it is: 5 s in all for
    the store operations in flight, then up to 5 s after cancelling (not "5 s each")."""
    from tether.asyncio.resume_server import _STOP_WRITES_S

    docs = Path(__file__).parent.parent / "docs" / "server.md"
    text = " ".join(docs.read_text(encoding="utf-8").split())
    shown = f"{_STOP_WRITES_S:g} s"
    expected = [
        f"the sessions' store writes under way get {shown} to land, then are cancelled and"
        f" waited for up to {shown} more",
        f"get {shown} in all, not each, then are cancelled and waited for up to {shown} more",
    ]
    assert [phrase for phrase in expected if phrase not in text] == []
    assert text.count("at most each") == 0
