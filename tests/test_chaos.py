"""The chaos proxy (tether.asyncio.chaos) seen by raw websockets peers over loopback.

These tests use real sockets and real time (short timers), hence the integration mark.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tests.support.eventually import eventually
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidMessage

from tether.asyncio.chaos import ChaosProxy
from tether.exceptions import ConfigurationError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(15)]


class EchoServer:
    """A websockets echo server on loopback that remembers how its connections closed."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []
        self.closed = asyncio.Event()
        self.server: Server | None = None

    async def handler(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)
            self.closed.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    state = EchoServer()
    async with serve(state.handler, "127.0.0.1", 0, ping_interval=None) as server:
        state.server = server
        yield state


def client(proxy: ChaosProxy, **kwargs: float | None) -> connect:
    # No compression: the byte counts on the wire must be what the test sends.
    options: dict[str, float | str | None] = {
        "ping_interval": None,
        "close_timeout": 0.5,
        "compression": None,
    }
    options.update(kwargs)
    return connect(f"ws://127.0.0.1:{proxy.port}", **options)  # type: ignore[arg-type]


async def closed_after(ws: ClientConnection, limit: float = 5.0) -> float:
    start = time.monotonic()
    await asyncio.wait_for(ws.wait_closed(), limit)
    return time.monotonic() - start


async def test_kill_after_is_1006_for_both_peers(echo: EchoServer) -> None:
    """kill_after aborts the connection: client and server both report 1006."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), kill_after=0.3) as proxy:
        ws = await client(proxy)
        await closed_after(ws)
        await asyncio.wait_for(echo.closed.wait(), 5)
    assert ws.close_code == 1006
    assert echo.close_codes == [1006]


async def test_kill_all_is_1006_and_logged(
    echo: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A manual kill gives 1006 and is logged on tether.chaos with its reason."""
    caplog.set_level(logging.INFO, logger="tether.chaos")
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port)) as proxy:
        ws = await client(proxy)
        await ws.send("hello")
        assert await ws.recv() == "hello"
        assert proxy.kill_all() == 1
        await closed_after(ws)
    assert ws.close_code == 1006
    faults = [r.chaos for r in caplog.records if r.chaos.get("event") == "fault"]  # type: ignore[attr-defined]
    assert [(f["kind"], f["reason"], f["connection"]) for f in faults] == [("kill", "manual", 1)]


async def test_kill_random_with_certainty_kills_at_once(echo: EchoServer) -> None:
    """kill_random=1 kills every connection as soon as it opens (1006)."""
    async with ChaosProxy(
        ("127.0.0.1", 0), ("127.0.0.1", echo.port), kill_random=1.0, rng=random.Random(1)
    ) as proxy:
        with pytest.raises(InvalidMessage):  # the handshake never completes
            await client(proxy)
        records = await proxy.wait_fault(timeout=2)
    assert records[0].reason == "kill_random"


async def test_blackhole_detected_by_heartbeat(echo: EchoServer) -> None:
    """A blackholed link is declared dead (1006) by a client pinging every 0.2 s."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port)) as proxy:
        ws = await client(proxy, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.2)
        proxy.blackhole_all()
        elapsed = await closed_after(ws)
    assert ws.close_code == 1006
    # Detection bound: ping interval + ping timeout + close timeout, with margin.
    assert elapsed < 0.2 + 0.3 + 0.2 + 0.5


async def test_blackhole_unnoticed_without_heartbeat(echo: EchoServer) -> None:
    """Without pings a blackholed connection stays OPEN and sends still 'succeed'."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port)) as proxy:
        ws = await client(proxy)
        proxy.blackhole_all()
        await ws.send("into the void")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)
        assert ws.state.name == "OPEN"
        assert ws.close_code is None
        ws.transport.abort()


async def test_blackhole_after_stops_forwarding(echo: EchoServer) -> None:
    """blackhole_after S: echo works before S, nothing comes back after it."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), blackhole_after=0.3) as proxy:
        ws = await client(proxy)
        await ws.send("before")
        assert await ws.recv() == "before"
        records = await proxy.wait_fault(timeout=2)
        await ws.send("after")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        ws.transport.abort()
    assert records[0].kind == "blackhole"
    assert records[0].age == pytest.approx(0.3, abs=0.1)


async def test_heal_delivers_what_was_held(echo: EchoServer) -> None:
    """After heal(), messages sent during the blackhole arrive intact and in order."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port)) as proxy:
        ws = await client(proxy)
        proxy.blackhole_all()
        (held,) = proxy._connections
        before = held.faults._last_activity
        # uvloop's clock counts whole milliseconds: a read in the millisecond of ``before``
        # would leave the activity time equal to it (7 failures in 15 runs on uvloop). Its
        # 2 ms timer runs once its clock has moved 2 ms on.
        await asyncio.sleep(0.002)
        for i in range(5):
            await ws.send(f"m{i}")
        # The sends reached the (stalled) proxy: it read them and holds them unforwarded.
        await eventually(
            lambda: held.faults._last_activity > before, what="the proxy read the sends"
        )
        assert proxy.heal() == 1
        received = [await asyncio.wait_for(ws.recv(), 2) for _ in range(5)]
        await ws.close()
    assert received == [f"m{i}" for i in range(5)]
    assert [r.kind for r in proxy.faults] == ["blackhole", "heal"]


async def test_blackhole_pushes_back_on_the_sender(echo: EchoServer) -> None:
    """While blackholed the proxy stops reading: a 32 MiB send cannot complete (bounded memory)."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port)) as proxy:
        ws = await client(proxy, max_size=None)
        proxy.blackhole_all()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.send(b"\0" * (32 * 1024 * 1024)), 1.5)
        ws.transport.abort()


async def test_kill_resets_the_tcp_connection() -> None:
    """A kill is abortive: a raw TCP client reads a RST (ECONNRESET), not a FIN."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", port), kill_after=0.2) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 2)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_idle_timeout_kills_within_ten_percent(echo: EchoServer) -> None:
    """An idle connection is killed (1006) after idle_timeout, within 10 %."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), idle_timeout=0.6) as proxy:
        ws = await client(proxy)
        elapsed = await closed_after(ws)
    assert ws.close_code == 1006
    assert 0.6 * 0.9 <= elapsed <= 0.6 * 1.1


async def test_traffic_keeps_an_idle_timeout_at_bay(echo: EchoServer) -> None:
    """Messages every 0.2 s keep a 0.5 s idle timeout from firing for 1.2 s."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), idle_timeout=0.5) as proxy:
        ws = await client(proxy)
        for _ in range(6):
            await ws.send("tick")
            assert await ws.recv() == "tick"
            await asyncio.sleep(0.2)  # real time is the stimulus: gaps shorter than the timeout
        assert ws.state.name == "OPEN"
        await ws.close()
    assert proxy.faults == []


async def test_latency_adds_to_the_round_trip(echo: EchoServer) -> None:
    """100 ms latency each way makes an echo round trip take at least 200 ms.

    Less the event loop's clock resolution per hop: uvloop's clock counts whole
    milliseconds, read once per loop iteration, so a delivery due 100 ms after a
    chunk arrived can go out up to 1 ms sooner by ``time.monotonic()`` (a CI run saw
    a round trip of 199.79 ms). Without the latency the round trip is about 1 ms.
    """
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), latency_ms=100) as proxy:
        ws = await client(proxy)
        start = time.monotonic()
        await ws.send("ping")
        assert await ws.recv() == "ping"
        rtt = time.monotonic() - start
        await ws.close()
    assert 0.2 - 2 * 0.001 <= rtt < 0.5


async def test_jitter_keeps_order(echo: EchoServer) -> None:
    """With latency 30 ± 30 ms, 100 messages sent back to back come back in order."""
    async with ChaosProxy(
        ("127.0.0.1", 0),
        ("127.0.0.1", echo.port),
        latency_ms=30,
        jitter_ms=30,
        rng=random.Random(9),
    ) as proxy:
        ws = await client(proxy)
        for i in range(100):
            await ws.send(str(i))
        received = [await asyncio.wait_for(ws.recv(), 3) for _ in range(100)]
        await ws.close()
    assert received == [str(i) for i in range(100)]


async def test_bandwidth_limits_throughput(echo: EchoServer) -> None:
    """At 400 kbps (50 kB/s) each way, echoing 25 kB takes at least 1 s."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo.port), bandwidth_kbps=400) as proxy:
        ws = await client(proxy)
        start = time.monotonic()
        await ws.send(b"x" * 25_000)
        assert len(await asyncio.wait_for(ws.recv(), 5)) == 25_000
        elapsed = time.monotonic() - start
        await ws.close()
    # 25 kB takes 0.5 s to reach the server and 0.5 s to come back.
    assert 0.95 <= elapsed < 3.0


async def test_unreachable_upstream_drops_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """When the upstream refuses, the client's handshake fails and the error is logged."""
    caplog.set_level(logging.INFO, logger="tether.chaos")
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", 1)) as proxy:
        with pytest.raises(InvalidMessage):
            await connect(f"ws://127.0.0.1:{proxy.port}", open_timeout=2)
    events = [getattr(r, "chaos", {}).get("event") for r in caplog.records]
    assert "upstream_error" in events


async def test_listens_only_on_loopback_by_default(echo: EchoServer) -> None:
    """Without a host the proxy binds 127.0.0.1, never all interfaces."""
    async with ChaosProxy(("", 0), ("127.0.0.1", echo.port)) as proxy:
        assert proxy.address[0] == "127.0.0.1"


def test_upstream_is_required() -> None:
    """A proxy without an upstream is a configuration error."""
    with pytest.raises(ConfigurationError, match="upstream"):
        ChaosProxy(("127.0.0.1", 0))


def test_bad_setting_is_a_configuration_error() -> None:
    """Settings are validated when the proxy is built, not when a connection arrives."""
    with pytest.raises(ConfigurationError, match="kill_random"):
        ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", 1), kill_random=2.0)


async def test_chaos_proxy_fixture_forwards_and_kills(
    echo: EchoServer, chaos_proxy: Callable[..., Awaitable[ChaosProxy]]
) -> None:
    """The shared chaos_proxy fixture starts a proxy that forwards, then kills on demand."""
    proxy = await chaos_proxy(echo.port)
    ws = await client(proxy)
    await ws.send("through")
    assert await ws.recv() == "through"
    proxy.kill_all()
    await closed_after(ws)
    assert ws.close_code == 1006


async def test_kill_after_counts_from_the_accept_even_while_the_upstream_hangs() -> None:
    """An upstream whose backlog is full never answers the connect: kill_after still cuts.

    (Before, the fault clock started once the upstream connect succeeded, so a client
    behind a hung upstream was never killed: no RST in 8 s with kill_after 0.5.)
    """
    import socket

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(4):  # fill the accept queue: further SYNs go unanswered
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(full.getsockname())
        fillers.append(filler)
    try:
        async with ChaosProxy(("127.0.0.1", 0), full.getsockname(), kill_after=0.5) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            started = time.monotonic()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            assert 0.4 <= time.monotonic() - started <= 2.0
            await eventually(lambda: len(proxy.faults) == 1, 2)
            assert (proxy.faults[0].kind, proxy.faults[0].reason) == ("kill", "kill_after")
            writer.close()
    finally:
        for sock in (*fillers, full):
            sock.close()
