"""`tether probe` and `tether chaos` against real intermediaries and real peers.

- probe finds the idle limit of `socat -T 3` and of HAProxy `timeout tunnel 3s` (3 s within
  the stated resolution), and reports "no limit up to MAX_S" straight to a server;
- chaos faults as seen by a Node `ws` client and by a tether client: kill → 1006, idle kill
  within 10 %, a blackhole detected only through a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.support.cli import run_tether
from tests.support.events import EventRecorder
from tests.support.node import PEERS_DIR, NodeWsServer, node_binary, require_peers
from tests.support.ports import free_port, wait_for_port
from tests.support.procs import JsonLineProcess, tether_cli
from tests.support.require import require, require_tools
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import tether
from tether import BackoffConfig, Connected, Disconnected, Heartbeat, State
from tether.asyncio.chaos import ChaosProxy
from tether.asyncio.probe import find_idle_limit, probe
from tether.idlesearch import IdleSearchConfig

pytestmark = pytest.mark.integration

Spawn = Callable[[JsonLineProcess], Awaitable[JsonLineProcess]]

#: The idle limit both intermediaries are configured with, and the resolution asked for.
LIMIT = 3.0
RESOLUTION = 0.5


def assert_limit_found(search: dict[str, Any]) -> None:
    """The idle limit is LIMIT within RESOLUTION, seen as 1006 from a closing path."""
    assert search["found"], search
    assert search["converged"], search
    assert abs(search["limit"] - LIMIT) <= RESOLUTION, search
    assert search["high"] - search["low"] <= RESOLUTION, search
    assert search["close_code"] == 1006
    assert search["kill"] == "closed"
    assert search["recommended_heartbeat"] <= LIMIT / 2


@pytest.mark.timeout(30)
async def test_probe_finds_socat_idle_limit(spawn: Spawn) -> None:
    """`tether probe --idle-search` via `socat -T 3` to `tether serve`: 3 s (± 0.5 s) and 1006."""
    require_tools("socat")
    server_port, port = free_port(), free_port()
    await spawn(tether_cli("serve", "--port", str(server_port), "--json-logs"))
    await wait_for_port("127.0.0.1", server_port, timeout=10)
    await spawn(
        JsonLineProcess(
            [
                "socat",
                "-T",
                str(LIMIT),
                f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                f"TCP:127.0.0.1:{server_port}",
            ],
            name="socat",
            kill_group=True,  # socat forks one child per connection
        )
    )
    await wait_for_port("127.0.0.1", port, timeout=5)
    status, out, err = await run_tether(
        "probe",
        f"ws://127.0.0.1:{port}/",
        "--json",
        "--pings",
        "2",
        "--idle-search",
        "8",
        "--resolution",
        str(RESOLUTION),
    )
    assert status == 0, err
    report = json.loads(out)
    assert report["pings"]["answered"] == 2
    assert_limit_found(report["idle_search"])
    # tether serve pings every 15 s: far beyond 3 s, so the trials stayed idle.
    assert report["idle_search"]["server_traffic"] == 0


@pytest.mark.timeout(30)
async def test_probe_finds_haproxy_tunnel_timeout(
    node_ws_server: NodeWsServer, haproxy: Callable[..., Awaitable[Any]]
) -> None:
    """Behind HAProxy `timeout tunnel 3s`, the idle search finds 3 s (± 0.5 s)."""
    proxy = await haproxy([("127.0.0.1", node_ws_server.port)], timeout_tunnel=LIMIT)
    result = await find_idle_limit(
        proxy.url, IdleSearchConfig(max_idle=8, resolution=RESOLUTION), pong_timeout=1.0
    )
    assert_limit_found(
        {
            "found": result.found,
            "converged": result.converged,
            "limit": result.limit,
            "high": result.high,
            "low": result.low,
            "close_code": result.close_code,
            "kill": result.kill,
            "recommended_heartbeat": result.recommended_heartbeat,
        }
    )


@pytest.mark.timeout(20)
async def test_probe_reports_no_limit_up_to_max(node_ws_server: NodeWsServer) -> None:
    """Straight to a Node ws server, `--idle-search 1.5` says "no limit up to 1.5 s"."""
    status, out, err = await run_tether(
        "probe", node_ws_server.url, "--pings", "1", "--idle-search", "1.5", "--resolution", "0.5"
    )
    assert status == 0, err
    assert "no limit up to 1.5 s" in out


@pytest.mark.timeout(20)
async def test_probe_stops_pinging_a_server_that_ignores_pings(node_peers: None) -> None:
    """A Node ws server that never answers pings costs one ping timeout, not one per ping."""
    async with NodeWsServer(auto_pong=False) as server:
        report = await probe(server.url, pings=5, ping_timeout=0.5)
    assert (report.pings.sent, report.pings.answered) == (1, 0)
    assert report.pings.median_ms is None
    assert report.close.by == "client"


# -- chaos seen by a Node ws client ----------------------------------------------------------


@pytest.fixture
def node_peers() -> None:
    try:
        require_peers()
    except FileNotFoundError as exc:
        require(False, str(exc))


async def start_chaos(spawn: Spawn, upstream_port: int, *flags: str) -> int:
    """Start `tether chaos --json` in front of ``upstream_port``; return its listening port."""
    proc = await spawn(
        tether_cli(
            "chaos",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--json",
            *flags,
        )
    )
    listen = await proc.expect_event("listen", timeout=10)
    return int(str(listen["listen"]).rsplit(":", 1)[1])


def heartbeat_client(port: int, *, ping_ms: int = 0, timeout_ms: int = 0) -> JsonLineProcess:
    """A Node ws client (tests/peers/ws_heartbeat_client.mjs); ping_ms=0: no heartbeat."""
    return JsonLineProcess(
        [
            node_binary(),
            str(PEERS_DIR / "ws_heartbeat_client.mjs"),
            "--url",
            f"ws://127.0.0.1:{port}/",
            "--ping-ms",
            str(ping_ms),
            "--timeout-ms",
            str(timeout_ms),
        ],
        cwd=PEERS_DIR,
        name="node-heartbeat-client",
    )


ChaosClient = Callable[..., Awaitable[JsonLineProcess]]


@pytest.fixture
def node_client_via_chaos(
    node_peers: None, node_ws_server: NodeWsServer, spawn: Spawn
) -> ChaosClient:
    """Factory: ``await node_client_via_chaos(*chaos_flags, ping_ms=, timeout_ms=)``.

    Starts `tether chaos` with the flags in front of the Node ws echo server, then a Node
    client through it; both are stopped by ``spawn``.
    """

    async def make(*chaos_flags: str, **client: int) -> JsonLineProcess:
        port = await start_chaos(spawn, node_ws_server.port, *chaos_flags)
        return await spawn(heartbeat_client(port, **client))

    return make


@pytest.mark.timeout(20)
async def test_chaos_kill_is_1006_for_node_peers(
    node_ws_server: NodeWsServer, node_client_via_chaos: ChaosClient
) -> None:
    """--kill-after 0.5: the Node client and the Node server both see 1006, not clean."""
    client = await node_client_via_chaos("--kill-after", "0.5")
    opened = await client.expect_event("open", timeout=5)
    closed = await client.expect_event("close", timeout=5)
    assert (closed["code"], closed["wasClean"]) == (1006, False)
    assert closed["t"] - opened["t"] == pytest.approx(0.5, abs=0.15)
    server_side = await node_ws_server.expect_event("close", timeout=5)
    assert server_side["code"] == 1006


@pytest.mark.timeout(20)
async def test_chaos_idle_kill_timing_for_node_client(node_client_via_chaos: ChaosClient) -> None:
    """--idle-timeout 1: an idle Node client is dropped (1006) after 1 s, within 10 %."""
    client = await node_client_via_chaos("--idle-timeout", "1")
    opened = await client.expect_event("open", timeout=5)
    closed = await client.expect_event("close", timeout=5)
    assert closed["code"] == 1006
    assert 0.9 <= closed["t"] - opened["t"] <= 1.1


@pytest.mark.timeout(20)
async def test_chaos_blackhole_detected_by_node_heartbeat(
    node_client_via_chaos: ChaosClient,
) -> None:
    """--blackhole-after 0.5: a Node client pinging every 0.2 s (0.3 s timeout) drops it (1006)."""
    client = await node_client_via_chaos("--blackhole-after", "0.5", ping_ms=200, timeout_ms=300)
    opened = await client.expect_event("open", timeout=5)
    await client.expect_event("pong", timeout=2)  # the heartbeat works before the blackhole
    dead = await client.expect_event("dead", timeout=5)
    closed = await client.expect_event("close", timeout=5)
    assert closed["code"] == 1006
    # Blackhole at ~0.5 s; worst case one interval plus the timeout (and ticks) later.
    assert dead["t"] - opened["t"] <= 0.5 + 0.2 + 0.3 + 0.3


@pytest.mark.timeout(20)
async def test_chaos_blackhole_unnoticed_without_heartbeat(
    node_client_via_chaos: ChaosClient,
) -> None:
    """Without a heartbeat the blackholed Node client stays open; its message never echoes."""
    client = await node_client_via_chaos("--blackhole-after", "0.3")
    await client.expect_event("open", timeout=5)
    await asyncio.sleep(0.5)  # past the blackhole (a fault time, not a timer under test)
    await client.send({"cmd": "send", "data": "anyone there?"})
    await client.assert_no_event(lambda ev: ev["event"] in ("close", "message"), duration=2.0)


# -- chaos seen by a tether client -------------------------------------------------------------


@contextlib.asynccontextmanager
async def tether_client(
    port: int, heartbeat: Heartbeat
) -> AsyncIterator[tuple[tether.ClientConnection, EventRecorder]]:
    """A tether client through the proxy on ``port``, with its event log."""
    conn = tether.connect(
        f"ws://127.0.0.1:{port}/",
        heartbeat=heartbeat,
        backoff=BackoffConfig(base=0.05, cap=0.2),
        close_timeout=1.0,
    )
    log = EventRecorder(conn)
    try:
        async with conn:
            yield conn, log
    finally:
        await log.stop()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A plain websockets echo server (tether's client runs in plain mode against it)."""

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        yield int(server.sockets[0].getsockname()[1])


NO_HEARTBEAT = Heartbeat(interval=None, timeout=None)
ChaosFactory = Callable[..., Awaitable[ChaosProxy]]


@pytest.mark.timeout(15)
async def test_chaos_kill_is_disconnected_1006_for_tether(
    echo_port: int, chaos_proxy: ChaosFactory
) -> None:
    """A chaos kill reaches a tether client as Disconnected(1006, clean=False); it reconnects."""
    proxy = await chaos_proxy(echo_port)
    async with tether_client(proxy.port, NO_HEARTBEAT) as (conn, log):
        await log.first(Connected, timeout=5)
        killed_at = time.monotonic()
        proxy.kill_all()
        _, gone = await log.first(Disconnected, timeout=5)
        await log.first(Connected, timeout=5, after=killed_at)
        await conn.send("still here")
        assert await asyncio.wait_for(conn.recv(), 5) == "still here"
    assert (gone.code, gone.clean) == (1006, False)


@pytest.mark.timeout(15)
async def test_chaos_blackhole_found_by_tether_heartbeat(
    echo_port: int, chaos_proxy: ChaosFactory
) -> None:
    """A blackholed link is declared dead (1006) by the heartbeat within interval + timeout."""
    heartbeat = Heartbeat(interval=0.2, timeout=0.3)
    proxy = await chaos_proxy(echo_port)
    async with tether_client(proxy.port, heartbeat) as (_, log):
        await log.first(Connected, timeout=5)
        proxy.blackhole_all()
        start = time.monotonic()
        stamp, gone = await log.first(Disconnected, timeout=5)
    assert gone.code == 1006
    assert not gone.clean
    assert heartbeat.detection_bound is not None
    assert stamp - start <= heartbeat.detection_bound + 0.3


@pytest.mark.timeout(15)
async def test_chaos_blackhole_unnoticed_without_tether_heartbeat(
    echo_port: int, chaos_proxy: ChaosFactory
) -> None:
    """With the heartbeat off, a tether client does not notice a blackhole for 1.5 s."""
    proxy = await chaos_proxy(echo_port)
    async with tether_client(proxy.port, NO_HEARTBEAT) as (conn, log):
        await log.first(Connected, timeout=5)
        proxy.blackhole_all()
        await conn.send("into the void")
        with pytest.raises(asyncio.TimeoutError):
            await log.first(Disconnected, timeout=1.5)
        assert conn.state is State.OPEN
        proxy.kill_all()  # end it quickly: no closing handshake can cross a blackhole


@pytest.mark.timeout(15)
async def test_chaos_idle_kill_timing_for_tether(echo_port: int, chaos_proxy: ChaosFactory) -> None:
    """An idle tether client (heartbeat off) is cut after idle_timeout 1 s, within 10 %."""
    proxy = await chaos_proxy(echo_port, idle_timeout=1.0)
    async with tether_client(proxy.port, NO_HEARTBEAT) as (_, log):
        opened, _ = await log.first(Connected, timeout=5)
        closed, gone = await log.first(Disconnected, timeout=5)
    assert gone.code == 1006
    assert 0.9 <= closed - opened <= 1.1


@pytest.mark.timeout(15)
async def test_tether_heartbeat_keeps_an_idle_timeout_at_bay(
    echo_port: int, chaos_proxy: ChaosFactory
) -> None:
    """Pings every 0.3 s keep a 1 s idle timeout from firing for 2.5 s."""
    proxy = await chaos_proxy(echo_port, idle_timeout=1.0)
    async with tether_client(proxy.port, Heartbeat(interval=0.3, timeout=1.0)) as (_, log):
        await log.first(Connected, timeout=5)
        with pytest.raises(asyncio.TimeoutError):
            await log.first(Disconnected, timeout=2.5)
    assert proxy.faults == []
