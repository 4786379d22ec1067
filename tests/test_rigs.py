"""The shared test rigs work: each one produces the fault or close code it promises.

A rig that silently stopped working would make other suites pass for the wrong reason, so each
rig is checked here against a raw ``websockets`` peer (not tether).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus

import pytest
import redis.asyncio
import redis.exceptions
from tests.support.browser import ChromiumWebSocket
from tests.support.faults import kill_tcp_connections
from tests.support.haproxy import HAProxy
from tests.support.netns import NetNamespace, run
from tests.support.node import PEERS_DIR, NodeWsClients, NodeWsServer
from tests.support.ports import free_port, wait_for_port
from tests.support.procs import (
    ExpectTimeout,
    JsonLineProcess,
    ListeningProcess,
    ProcessExited,
    python_argv,
)
from tests.support.redis import RedisServer
from tests.support.require import require
from tests.support.uvicorn import UvicornServer
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

pytestmark = pytest.mark.integration

NETNS_PORT = 8765  # inside a private namespace nothing else listens, so a fixed port is safe


async def echo(ws: ServerConnection) -> None:
    """Echo handler for in-process raw websockets servers."""
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def echo_server() -> AsyncIterator[Server]:
    """A raw websockets echo server on a free loopback port, without keepalive pings."""
    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        yield server


@pytest.fixture
async def draining_server() -> AsyncIterator[Server]:
    """A raw websockets server answering every handshake with HTTP 503 (like a draining node)."""

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")

    async with serve(echo, "127.0.0.1", 0, process_request=refuse, ping_interval=None) as server:
        yield server


def port_of(server: Server) -> int:
    """The TCP port a websockets server listens on."""
    return int(next(iter(server.sockets)).getsockname()[1])


async def wait_closed(url: str, *, ping_interval: float | None, limit: float) -> float:
    """Connect, stay idle, return seconds until the connection closed (bounded by ``limit``)."""
    async with connect(url, ping_interval=ping_interval, ping_timeout=2) as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=limit)
        return time.monotonic() - opened


@pytest.mark.timeout(15)
async def test_python_process_reports_exit_instead_of_waiting() -> None:
    """expect() raises ProcessExited as soon as the child exits without a matching event."""
    code = "import json; print(json.dumps({'event': 'hello'}))"
    async with JsonLineProcess(python_argv("-c", code)) as proc:
        assert (await proc.expect_event("hello", timeout=5))["event"] == "hello"
        started = time.monotonic()
        with pytest.raises(ProcessExited):
            await proc.expect_event("never", timeout=10)
        assert time.monotonic() - started < 5


@pytest.mark.timeout(15)
async def test_expect_times_out_with_the_events_seen() -> None:
    """expect() gives up after its timeout and says what it saw."""
    code = "import json, time; print(json.dumps({'event': 'hello'}), flush=True); time.sleep(30)"
    async with JsonLineProcess(python_argv("-c", code)) as proc:
        with pytest.raises(ExpectTimeout, match="hello"):
            await proc.expect_event("never", timeout=1)
        pid = proc.pid
    assert proc.returncode == -signal.SIGTERM, pid


@pytest.mark.timeout(10)
async def test_wait_for_port_times_out_on_a_closed_port() -> None:
    """wait_for_port raises TimeoutError when nothing listens."""
    with pytest.raises(TimeoutError):
        await wait_for_port("127.0.0.1", free_port(), timeout=0.5)


@pytest.mark.timeout(15)
async def test_listening_process_that_never_listens_is_stopped_and_cleaned() -> None:
    """start() times out on a daemon that never listens, stops it by PID and removes its workdir."""
    workdir = tempfile.mkdtemp(prefix="tether-rig-test-")
    code = "import sys, time; print('starting', file=sys.stderr, flush=True); time.sleep(30)"
    proc = ListeningProcess(
        python_argv("-c", code), host="127.0.0.1", port=free_port(), workdir=workdir,
        start_timeout=0.5,
    )  # fmt: skip
    with pytest.raises(TimeoutError, match="starting"):
        await proc.start()
    assert proc.returncode == -signal.SIGTERM
    assert not await asyncio.to_thread(os.path.exists, workdir)


@pytest.mark.timeout(20)
async def test_node_server_close_1012_reaches_websockets_client(
    node_ws_server: NodeWsServer,
) -> None:
    """ws.close(1012) on the Node server arrives at a websockets client as a received 1012."""
    async with connect(node_ws_server.url, ping_interval=None) as ws:
        await node_ws_server.expect_event("connection", timeout=5)
        await node_ws_server.close_all(1012, "restart")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (1012, "restart")
    closed = await node_ws_server.expect_event("close", timeout=5)
    assert (closed["code"], closed["wasClean"]) == (1012, True)


@pytest.mark.timeout(20)
async def test_node_server_terminate_gives_1006(node_ws_server: NodeWsServer) -> None:
    """terminate() drops TCP without a Close frame: the client sees 1006 and rcvd is None."""
    async with connect(node_ws_server.url, ping_interval=None) as ws:
        await node_ws_server.expect_event("connection", timeout=5)
        await node_ws_server.terminate_all()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert ws.protocol.close_rcvd is None
        assert ws.close_code == 1006


@pytest.mark.timeout(20)
async def test_node_clients_see_1012_from_websockets_server() -> None:
    """Node ws clients report a websockets server's 1012 as a clean close with that code."""
    closers: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        closers.append(ws)
        await ws.wait_closed()

    async with (
        serve(handler, "127.0.0.1", 0, ping_interval=None) as server,
        NodeWsClients(f"ws://127.0.0.1:{port_of(server)}/", count=2) as clients,
    ):
        await clients.wait_all_open(timeout=5)
        await asyncio.gather(*(ws.close(1012, "restart") for ws in closers))
        for client_id in range(2):
            closed = await clients.expect_event("close", timeout=5, id=client_id)
            assert (closed["code"], closed["wasClean"]) == (1012, True)


@pytest.mark.timeout(25)
async def test_node_clients_reconnect_loop_counts_refused(node_ws_server: NodeWsServer) -> None:
    """With the listener stopped, reconnecting clients count refused attempts, then reconnect."""
    async with NodeWsClients(node_ws_server.url, count=2, reconnect_ms=50) as clients:
        await clients.wait_all_open(timeout=5)
        await node_ws_server.stop_listening()
        await node_ws_server.terminate_all()
        await clients.expect(lambda ev: ev["event"] == "failed" and ev["reason"] == "refused", 5)
        await node_ws_server.start_listening()
        await clients.expect(lambda ev: ev["event"] == "open" and ev["attempt"] > 1, timeout=5)
        summary = await clients.stop_and_summarize()
    assert summary["refused"] >= 1
    assert summary["refused"] == summary["failures"]


@pytest.mark.timeout(20)
async def test_node_clients_report_a_503_handshake_rejection(draining_server: Server) -> None:
    """A handshake answered with HTTP 503 gives failed{reason: status, status: 503}, not silence."""
    url = f"ws://127.0.0.1:{port_of(draining_server)}/"
    async with NodeWsClients(url, count=1) as clients:
        failed = await clients.expect_event("failed", timeout=5, id=0)
        assert (failed["reason"], failed["status"], failed["attempt"]) == ("status", 503, 1)
        summary = await clients.summary()
    assert (summary["failures"], summary["rejected"], summary["refused"]) == (1, 1, 0)
    assert summary["statuses"] == {503: 1}


@pytest.mark.timeout(20)
async def test_node_clients_reconnect_loop_counts_rejections(draining_server: Server) -> None:
    """Reconnecting clients keep retrying after a 503 and count every rejection by status."""
    url = f"ws://127.0.0.1:{port_of(draining_server)}/"
    async with NodeWsClients(url, count=2, reconnect_ms=50, max_attempts=3) as clients:
        for client_id in range(2):
            await clients.expect_event("failed", timeout=5, id=client_id, attempt=3)
        summary = await clients.summary()
        assert len(clients.failures(status=503)) == 6
        assert clients.failures(reason="refused") == []
    assert (summary["attempts"], summary["opens"], summary["failures"]) == (6, 0, 6)
    assert (summary["rejected"], summary["refused"], summary["statuses"]) == (6, 0, {503: 6})


@pytest.mark.timeout(20)
async def test_haproxy_tunnel_timeout_kills_idle_connection(
    echo_server: Server, haproxy: Callable[..., Awaitable[HAProxy]]
) -> None:
    """HAProxy with timeout tunnel 3s drops an idle WebSocket after about 3 s (1006)."""
    proxy = await haproxy([("127.0.0.1", port_of(echo_server))], timeout_tunnel=3.0)
    async with connect(proxy.url, ping_interval=None) as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=10)
        elapsed = time.monotonic() - opened
        assert ws.protocol.close_rcvd is None
    assert 2.5 <= elapsed <= 4.0, elapsed


@pytest.mark.timeout(20)
async def test_haproxy_pings_keep_connection_alive(
    echo_server: Server, haproxy: Callable[..., Awaitable[HAProxy]]
) -> None:
    """Pings every 1 s keep a connection through timeout tunnel 3s alive for 6 s."""
    proxy = await haproxy([("127.0.0.1", port_of(echo_server))], timeout_tunnel=3.0)
    async with connect(proxy.url, ping_interval=1, ping_timeout=2) as ws:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), timeout=6)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), timeout=2) == "still here"


@pytest.mark.timeout(25)
async def test_haproxy_round_robin_with_health_checks(
    haproxy: Callable[..., Awaitable[HAProxy]],
) -> None:
    """With /healthz checks on two Node backends, connections alternate between them."""
    async with NodeWsServer() as first, NodeWsServer() as second:
        proxy = await haproxy([("127.0.0.1", first.port), ("127.0.0.1", second.port)], healthz=True)
        await proxy.wait_backends_up(timeout=5)
        async with connect(proxy.url, ping_interval=None), connect(proxy.url, ping_interval=None):
            await first.expect_event("connection", timeout=5)
            await second.expect_event("connection", timeout=5)


async def start_netns_pair(
    netns: NetNamespace, *, ping_interval: str, ping_timeout: str
) -> tuple[JsonLineProcess, JsonLineProcess]:
    """An echo server and a client inside ``netns``, connected and exchanging one message."""
    server = netns.python_script(PEERS_DIR / "py_ws_server.py", "--port", str(NETNS_PORT), "--echo")
    await server.start()
    await server.expect_event("listening", timeout=10)
    client = netns.python_script(
        PEERS_DIR / "py_ws_client.py",
        "--url",
        f"ws://127.0.0.1:{NETNS_PORT}/",
        "--ping-interval",
        ping_interval,
        "--ping-timeout",
        ping_timeout,
    )
    await client.start()
    await client.expect_event("open", timeout=10)
    await client.send({"cmd": "send", "data": "hello"})
    await client.expect_event("message", timeout=5, data="hello")
    return server, client


@pytest.mark.root
@pytest.mark.timeout(25)
async def test_netns_blackhole_detected_by_heartbeat(netns: NetNamespace) -> None:
    """A blackholed port makes a client pinging every 1 s (timeout 2 s) give up in 2.5-4.5 s."""
    _, client = await start_netns_pair(netns, ping_interval="1", ping_timeout="2")
    await netns.blackhole(NETNS_PORT)
    blackholed = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the child's "t"
    closed = await client.expect_event("close", timeout=10)
    assert closed["rcvd"] is None
    # next ping within 1 s + 2 s pong timeout + 1 s close_timeout for the TCP close
    assert 2.5 <= closed["t"] - blackholed <= 4.5, closed["t"] - blackholed


@pytest.mark.root
@pytest.mark.timeout(25)
async def test_netns_blackhole_unnoticed_without_heartbeat(netns: NetNamespace) -> None:
    """Without heartbeats, a blackholed connection looks open for 5 s while data is lost."""
    server, client = await start_netns_pair(netns, ping_interval="none", ping_timeout="none")
    await netns.blackhole(NETNS_PORT)
    await client.send({"cmd": "send", "data": "lost"})
    await client.expect_event("ack", timeout=5, cmd="send")
    await server.assert_no_event(
        lambda ev: ev["event"] == "close" or ev.get("data") == "lost", duration=5
    )
    await client.assert_no_event(lambda ev: ev["event"] == "close", duration=0.1)


@pytest.mark.timeout(30)
async def test_chromium_sees_1012_clean_from_websockets_server(
    chromium: Callable[[str], Awaitable[ChromiumWebSocket]],
) -> None:
    """A websockets server closing with 1012 gives the browser CloseEvent 1012, wasClean true."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the page says hello once its onopen ran
        await ws.close(1012, "restart")

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        browser = await chromium(f"ws://127.0.0.1:{port_of(server)}/")
        await browser.expect_event("open", timeout=20)
        await browser.send_text("hello")
        closed = await browser.expect_event("close", timeout=5)
    assert (closed["code"], closed["reason"], closed["wasClean"]) == (1012, "restart", True)


@pytest.mark.timeout(20)
async def test_uvicorn_sigterm_sends_1012(uvicorn_server: UvicornServer) -> None:
    """SIGTERM to uvicorn closes an open WebSocket with a received 1012."""
    async with connect(uvicorn_server.url, ping_interval=None) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "hello"
        uvicorn_server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1012
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the status is -15 (or 0).
    assert await uvicorn_server.wait(timeout=10) in (0, -signal.SIGTERM)


@pytest.mark.root
@pytest.mark.timeout(15)
async def test_netns_teardown_deletes_namespace_and_processes() -> None:
    """Leaving a NetNamespace stops its processes and deletes the namespace."""
    async with NetNamespace() as namespace:
        sleeper = namespace.python(
            'import time; print(\'{"event": "up"}\', flush=True); time.sleep(60)'
        )
        await sleeper.start()
        await sleeper.expect_event("up", timeout=10)
        assert namespace.name in await run("ip", "netns", "list")
    assert sleeper.returncode is not None
    assert namespace.name not in await run("ip", "netns", "list")


@pytest.mark.root
@pytest.mark.timeout(15)
async def test_ss_kill_gives_1006_and_keeps_listener(echo_server: Server) -> None:
    """kill_tcp_connections aborts a live connection (1006, no Close frame); new ones still work."""
    url = f"ws://127.0.0.1:{port_of(echo_server)}/"
    async with connect(url, ping_interval=None) as ws:
        assert await kill_tcp_connections(port_of(echo_server)) == 1
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert (ws.close_code, ws.protocol.close_rcvd) == (1006, None)
    async with connect(url, ping_interval=None) as ws:
        await ws.send("again")
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "again"


@pytest.mark.timeout(15)
async def test_private_redis_answers_and_dies_on_sigkill(redis_server: RedisServer) -> None:
    """The private redis-server answers PING, and SIGKILL makes it refuse connections."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
        redis_server.signal(signal.SIGKILL)
        await redis_server.wait(timeout=5)
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()


def test_require_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true a missing requirement fails the test instead of skipping it."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"fix \.ci/run"):
        require(False, "needs a unicorn")


def test_require_skips_locally_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI a missing requirement skips and says what is missing."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs a unicorn"):
        require(False, "needs a unicorn")


def test_python_argv_uses_this_interpreter() -> None:
    """Helpers run children with the venv's interpreter, never a python from PATH."""
    assert python_argv("-V") == [sys.executable, "-V"]


@pytest.mark.timeout(20)
@pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQ is read with a Linux ioctl")
async def test_slow_link_paces_the_data_and_leaves_the_backlog_with_the_sender() -> None:
    """SlowLink carries ~rate bytes/s, and what waits stays unacknowledged in the sender's
    kernel (what tether's heartbeat reads), not in the forwarder."""
    import fcntl
    import termios

    from tests.support.slowlink import SlowLink

    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with SlowLink(port, rate=100_000) as link:
            url = f"ws://127.0.0.1:{link.port}/"
            async with connect(url, compression=None, max_size=None) as ws:
                started = time.monotonic()
                await ws.send(os.urandom(200_000))
                sock = ws.transport.get_extra_info("socket")
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                unacknowledged = int.from_bytes(queued, sys.byteorder, signed=True)
                assert unacknowledged > 100_000, unacknowledged
                assert len(await asyncio.wait_for(ws.recv(), 15)) == 200_000
                elapsed = time.monotonic() - started
    # 200 kB one way then back at 100 kB/s each: ~2 s each way, overlapping.
    assert 1.5 < elapsed < 8, elapsed
