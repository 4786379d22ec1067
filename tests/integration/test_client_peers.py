"""tether.connect against real peers and real faults (Node ws, uvicorn, nft blackhole, HAProxy).

Small time values keep each test short; every measured delay is checked against the
configured bound, and every test is bounded with ``pytest.mark.timeout``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import pytest
from tests.support.events import EventRecorder as Recorder
from tests.support.haproxy import HAProxy
from tests.support.netns import NetNamespace
from tests.support.node import PEERS_DIR, NodeWsServer
from tests.support.uvicorn import UvicornServer

import tether
from tether import (
    BackoffConfig,
    Connected,
    Disconnected,
    GaveUp,
    Heartbeat,
    Reconnecting,
    State,
)

pytestmark = pytest.mark.integration

NO_PING = Heartbeat(interval=None, timeout=None)
#: A 1012 window small enough for tests, with backoff that stays short too.
RESTART = BackoffConfig(base=0.1, cap=0.5, restart_window=(0.2, 0.5))
#: Allowance for a TCP connect plus opening handshake on loopback (measured: a few ms).
HANDSHAKE_SLACK = 0.25


# -- Node ws --


@pytest.mark.timeout(30)
async def test_node_1012_reconnects_inside_the_window(node_ws_server: NodeWsServer) -> None:
    """ws.close(1012): reconnect after a delay inside restart_window, then keep receiving."""
    conn = tether.connect(node_ws_server.url, heartbeat=NO_PING, backoff=RESTART)
    async with Recorder(conn) as recorder, conn:
        await node_ws_server.expect_event("connection", timeout=5)
        for round_ in range(3):
            await node_ws_server.close_all(1012, "deploy")
            closed_at, disconnected = await recorder.next(Disconnected, 5)
            assert (disconnected.code, disconnected.reason, disconnected.clean) == (
                1012,
                "deploy",
                True,
            )
            _, reconnecting = await recorder.next(Reconnecting, 5)
            assert 0.2 <= reconnecting.delay <= 0.5
            opened_at, connected = await recorder.next(Connected, 5)
            assert connected.attempt == round_ + 2
            assert 0.2 <= opened_at - closed_at <= 0.5 + HANDSHAKE_SLACK
            await conn.send(f"after {round_}")
            assert await asyncio.wait_for(conn.recv(), 5) == f"after {round_}"


@pytest.mark.timeout(30)
async def test_node_terminate_reports_1006_then_backs_off(node_ws_server: NodeWsServer) -> None:
    """ws.terminate(): Disconnected(1006, clean=False), Reconnecting within the backoff bound."""
    conn = tether.connect(node_ws_server.url, heartbeat=NO_PING, backoff=RESTART)
    async with Recorder(conn) as recorder, conn:
        await node_ws_server.expect_event("connection", timeout=5)
        await node_ws_server.terminate_all()
        closed_at, disconnected = await recorder.next(Disconnected, 5)
        assert (disconnected.code, disconnected.clean) == (1006, False)
        _, reconnecting = await recorder.next(Reconnecting, 5)
        assert reconnecting.cause_code == 1006
        assert 0 <= reconnecting.delay <= RESTART.base
        opened_at, _ = await recorder.next(Connected, 5)
        assert opened_at - closed_at <= RESTART.base + HANDSHAKE_SLACK
        await node_ws_server.expect_event("connection", timeout=5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [1008, 1000])
async def test_node_final_close_does_not_reconnect(node_ws_server: NodeWsServer, code: int) -> None:
    """close(1008) / close(1000): GaveUp, CLOSED, and the server sees no new connection."""
    conn = tether.connect(node_ws_server.url, heartbeat=NO_PING, backoff=RESTART)
    async with Recorder(conn) as recorder:
        await conn
        await node_ws_server.expect_event("connection", timeout=5)
        await node_ws_server.close_all(code, "bye")
        _, disconnected = await recorder.next(Disconnected, 5)
        assert disconnected.code == code
        _, gave_up = await recorder.next(GaveUp, 5)
        assert str(code) in gave_up.reason
        assert conn.state is State.CLOSED
        with pytest.raises(tether.ConnectionClosed) as info:
            await conn.recv()
        assert info.value.code == code
        await node_ws_server.assert_no_event(lambda ev: ev["event"] == "connection", duration=1.0)
        assert Reconnecting not in recorder.kinds()


@pytest.mark.timeout(30)
async def test_node_sends_while_disconnected_arrive_in_order(
    node_ws_server: NodeWsServer,
) -> None:
    """Server gone (listener closed, connection dropped): sends queue, then arrive in order."""
    # resume=False: Node ws selects whatever subprotocol is offered first, so a
    # tether.v1 offer costs it one stray hello message (see docs/client.md).
    conn = tether.connect(node_ws_server.url, heartbeat=NO_PING, backoff=RESTART, resume=False)
    async with Recorder(conn) as recorder, conn:
        await node_ws_server.expect_event("connection", timeout=5)
        await node_ws_server.stop_listening()
        await node_ws_server.terminate_all()
        await recorder.next(Disconnected, 5)
        # Wait for at least one refused attempt so the sends really happen while down.
        await recorder.next(Reconnecting, 5)
        await recorder.next(Reconnecting, 5)
        assert conn.state is State.RECONNECTING
        for n in range(100):
            await conn.send(f"m{n:03d}")
        assert conn.queued == 100
        await node_ws_server.start_listening()
        await recorder.next(Connected, 10)
        received: list[str] = []
        for _ in range(100):
            event = await node_ws_server.expect_event("message", timeout=5)
            received.append(event["data"])
        assert received == [f"m{n:03d}" for n in range(100)]


# -- uvicorn --


@pytest.mark.timeout(60)
async def test_uvicorn_sigterm_sends_1012_and_client_reconnects_to_the_new_server(
    uvicorn_server: UvicornServer,
) -> None:
    """SIGTERM to uvicorn: a real 1012; the client reconnects once uvicorn is back on the port."""
    conn = tether.connect(uvicorn_server.url, heartbeat=NO_PING, backoff=RESTART)
    async with Recorder(conn) as recorder, conn:
        await conn.send("before")
        assert await asyncio.wait_for(conn.recv(), 5) == "before"
        uvicorn_server.signal(signal.SIGTERM)
        _, disconnected = await recorder.next(Disconnected, 10)
        assert (disconnected.code, disconnected.clean) == (1012, True)
        _, reconnecting = await recorder.next(Reconnecting, 5)
        assert 0.2 <= reconnecting.delay <= 0.5
        await uvicorn_server.wait(10)
        async with UvicornServer(port=uvicorn_server.port):
            _, connected = await recorder.next(Connected, 15)
            assert connected.attempt >= 2
            await conn.send("after")
            assert await asyncio.wait_for(conn.recv(), 5) == "after"


# -- half-open link (netns + nft DROP) --

HALF_OPEN_PORT = 8765


@pytest.mark.root
@pytest.mark.timeout(60)
async def test_blackholed_link_is_declared_dead_then_reconnected(netns: NetNamespace) -> None:
    """DROP both ways: dead within interval + timeout (+10 %), reconnected once the rule goes."""
    interval, timeout = 0.5, 1.0
    server = netns.python_script(
        PEERS_DIR / "py_ws_server.py", "--port", str(HALF_OPEN_PORT), "--echo"
    )
    await server.start()
    await server.expect_event("listening", timeout=10)
    client = netns.process(
        *_tether_argv(
            "connect",
            "--json",
            "--ping-interval",
            str(interval),
            "--ping-timeout",
            str(timeout),
            "--open-timeout",
            "1",
            f"ws://127.0.0.1:{HALF_OPEN_PORT}/",
        ),
        env={"PYTHONUNBUFFERED": "1"},
    )
    await client.start()
    await client.expect_event("connected", timeout=10)
    # Let a few pings round-trip so the measurement starts from a healthy link.
    await asyncio.sleep(interval * 2)
    blackholed_at = time.monotonic()
    await netns.blackhole(HALF_OPEN_PORT)
    dead = await client.expect_event("disconnected", timeout=10)
    detected_after = dead["t"] - blackholed_at
    assert (dead["code"], dead["clean"]) == (1006, False)
    assert detected_after <= (interval + timeout) * 1.1, detected_after
    await client.expect_event("reconnecting", timeout=5)
    await netns.unblackhole(HALF_OPEN_PORT)
    connected = await client.expect_event("connected", timeout=10)
    assert connected["attempt"] >= 2
    # The CLI sends each stdin line as a text message; the server echoes it back.
    await client.send({"text": "still here"})
    echoed = await client.expect_event("message", timeout=5)
    assert json.loads(echoed["data"]) == {"text": "still here"}


def _tether_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether", *args]


# -- HAProxy idle kill --


@pytest.mark.timeout(40)
async def test_haproxy_idle_kill_without_heartbeat_is_1006(
    node_ws_server: NodeWsServer, haproxy: Any
) -> None:
    """timeout tunnel 3s, no heartbeat: the idle connection is killed after ~3 s (1006)."""
    proxy: HAProxy = await haproxy([(node_ws_server.host, node_ws_server.port)], timeout_tunnel=3.0)
    conn = tether.connect(proxy.url, heartbeat=NO_PING, backoff=RESTART)
    async with Recorder(conn) as recorder, conn:
        opened_at, _ = await recorder.next(Connected, 5)
        closed_at, disconnected = await recorder.next(Disconnected, 10)
        assert (disconnected.code, disconnected.clean) == (1006, False)
        assert 2.5 <= closed_at - opened_at <= 4.5
        _, reconnecting = await recorder.next(Reconnecting, 5)
        assert reconnecting.cause_code == 1006


@pytest.mark.timeout(40)
async def test_haproxy_heartbeat_keeps_the_connection_up(
    node_ws_server: NodeWsServer, haproxy: Any
) -> None:
    """timeout tunnel 3s with a 1 s heartbeat: still the same connection after 10 s."""
    proxy: HAProxy = await haproxy([(node_ws_server.host, node_ws_server.port)], timeout_tunnel=3.0)
    conn = tether.connect(proxy.url, heartbeat=Heartbeat(interval=1.0, timeout=2.0))
    async with Recorder(conn) as recorder, conn:
        await recorder.next(Connected, 5)
        await asyncio.sleep(10.0)  # the behaviour under test is "nothing happens for 10 s"
        assert recorder.kinds() == [Connected]
        assert conn.state is State.OPEN
        assert conn.latency is not None
        await conn.send("alive")
        assert await asyncio.wait_for(conn.recv(), 5) == "alive"
