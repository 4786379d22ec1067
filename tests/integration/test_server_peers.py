"""``tether serve`` against peers nobody here wrote: Chromium, Node ``ws``, a blackhole.

Every server here is a real ``tether serve`` process; faults are real (SIGKILL, nft DROP
in a private network namespace). See tests/support/README.md for the rigs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.support.browser import ChromiumWebSocket
from tests.support.netns import NetNamespace
from tests.support.node import NodeWsClients
from tests.support.ports import free_port
from tests.support.procs import JsonLineProcess, is_tether_process, tether_cli
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tether.asyncio.handover import health_check

Spawn = Callable[[JsonLineProcess], Awaitable[JsonLineProcess]]


async def wait_healthy(port: int, *, timeout: float = 15.0, pid: int | None = None) -> int:
    """Poll /healthz on 127.0.0.1:port until 200 (from ``pid`` if given); return that pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = await health_check("127.0.0.1", port)
        except (OSError, asyncio.TimeoutError):
            status, body = 0, {}
        if status == 200 and (pid is None or body.get("pid") == pid):
            return int(body["pid"])  # type: ignore[call-overload]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no healthy tether server on port {port} within {timeout} s")


def log_events(proc: JsonLineProcess) -> list[dict[str, Any]]:
    """The JSON log lines (``--json-logs``) a server process wrote to stderr so far."""
    events = []
    for line in proc.stderr_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


async def start_server(spawn: Spawn, *args: str) -> tuple[JsonLineProcess, int]:
    """Start ``tether serve --json-logs ARGS`` on a free port; return it once healthy."""
    port = free_port()
    server = await spawn(tether_cli("serve", "--port", str(port), "--json-logs", *args))
    await wait_healthy(port)
    return server, port


NodeClientsFactory = Callable[..., Awaitable[NodeWsClients]]


async def start_server_with_clients(
    spawn: Spawn, node_ws_clients: NodeClientsFactory, *args: str, count: int, **options: Any
) -> tuple[JsonLineProcess, int, NodeWsClients]:
    """``start_server(spawn, *args)`` plus ``count`` Node ws clients, all of them open."""
    server, port = await start_server(spawn, *args)
    clients = await node_ws_clients(f"ws://127.0.0.1:{port}/", count=count, **options)
    await clients.wait_all_open(timeout=20)
    return server, port, clients


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_chromium_sees_1012_clean_on_restart(
    spawn: Spawn, chromium: Callable[[str], Awaitable[ChromiumWebSocket]]
) -> None:
    """A planned restart (SIGHUP) reaches a browser as onclose code 1012, wasClean true."""
    server, port = await start_server(spawn, "--drain-window", "0")
    browser = await chromium(f"ws://127.0.0.1:{port}/")
    await browser.expect_event("open", timeout=30)
    server.signal(signal.SIGHUP)
    close = await browser.expect_event("close", timeout=10)
    assert (close["code"], close["wasClean"]) == (1012, True)
    assert await server.wait(10) == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_chromium_sees_1006_unclean_on_server_sigkill(
    spawn: Spawn, chromium: Callable[[str], Awaitable[ChromiumWebSocket]]
) -> None:
    """A SIGKILLed server reaches a browser as onclose code 1006, wasClean false."""
    server, port = await start_server(spawn)
    browser = await chromium(f"ws://127.0.0.1:{port}/")
    await browser.expect_event("open", timeout=30)
    server.signal(signal.SIGKILL)
    close = await browser.expect_event("close", timeout=10)
    assert (close["code"], close["wasClean"]) == (1006, False)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_clients_1012_spread_over_drain_window(
    spawn: Spawn, node_ws_clients: NodeClientsFactory
) -> None:
    """50 Node ws clients, window 1 s: every close is 1012, first and last >= 0.5 s apart."""
    server, _, clients = await start_server_with_clients(
        spawn, node_ws_clients, "--drain-window", "1", count=50
    )
    server.signal(signal.SIGHUP)
    closes = [await clients.expect_event("close", timeout=10, id=i) for i in range(50)]
    assert {c["code"] for c in closes} == {1012}
    assert all(c["wasClean"] for c in closes)
    stamps = sorted(c["t"] for c in closes)
    assert stamps[-1] - stamps[0] >= 0.5
    # Spread, not bunched at the ends: every tenth of the window sees some closes.
    assert stamps[len(stamps) // 2] - stamps[0] >= 0.2
    assert await server.wait(15) == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_healthz_and_connects_get_503_during_drain(
    spawn: Spawn, node_ws_clients: NodeClientsFactory
) -> None:
    """While draining, /healthz answers 503 and new WebSocket connects get HTTP 503 at once."""
    server, port, _ = await start_server_with_clients(
        spawn, node_ws_clients, "--drain-window", "3", count=20
    )
    server.signal(signal.SIGHUP)
    status = 0
    for _ in range(100):  # bounded: the state flips as soon as the signal is handled
        status, body = await health_check("127.0.0.1", port)
        if status == 503:
            break
        await asyncio.sleep(0.02)
    assert status == 503
    assert body["status"] == "draining"
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
    assert refused.value.response.status_code == 503
    assert time.monotonic() - started < 1.0
    assert await server.wait(15) == 0


CLIENT_WITHOUT_HEARTBEAT = "tests/peers/py_ws_client.py"


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.timeout(60)
async def test_heartbeat_culls_a_blackholed_client(netns: NetNamespace) -> None:
    """Ping 1 s / timeout 1 s: a blackholed client is dropped (1006) within 2 s (+10 %)."""
    port = 8765  # a private namespace: fixed ports are fine
    server = netns.process(
        sys.executable, "-m", "tether", "serve", "--port", str(port), "--json-logs",
        "--ping-interval", "1", "--ping-timeout", "1",
        env={"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    await server.start()
    for _ in range(200):  # bounded wait for the "listening" log line
        if any(e.get("event") == "listening" for e in log_events(server)):
            break
        await asyncio.sleep(0.05)
    client = netns.python_script(
        CLIENT_WITHOUT_HEARTBEAT, "--url", f"ws://127.0.0.1:{port}/", "--ping-interval", "none"
    )
    await client.start()
    await client.expect_event("open", timeout=10)
    await asyncio.sleep(1.5)  # at least one ping answered: the link was alive
    assert not [e for e in log_events(server) if e.get("event") == "close"]
    blackholed_at = time.monotonic()
    await netns.blackhole(port)
    close: dict[str, Any] | None = None
    for _ in range(100):  # bounded: 5 s
        close = next((e for e in log_events(server) if e.get("event") == "close"), None)
        if close is not None:
            break
        await asyncio.sleep(0.05)
    assert close is not None, server.stderr_text()
    assert (close["code"], close["clean"], close["cause"]) == (1006, False, "heartbeat")
    assert close["t"] - blackholed_at <= (1 + 1) * 1.1


HANDOVER_LOOP_PERIOD_S = 0.05


async def _connect_loop(port: int, stop: asyncio.Event) -> dict[str, int]:
    """Open a connection every 50 ms, echo one message, close; count each outcome."""
    counts = {"attempts": 0, "ok": 0, "refused": 0, "status": 0, "other": 0}
    for _ in range(2000):  # bounded: 100 s at 50 ms
        if stop.is_set():
            break
        counts["attempts"] += 1
        try:
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
                await ws.send("x")
                await asyncio.wait_for(ws.recv(), 5)
            counts["ok"] += 1
        except ConnectionRefusedError:
            counts["refused"] += 1
        except InvalidStatus:
            counts["status"] += 1
        except Exception:
            counts["other"] += 1
        await asyncio.sleep(HANDOVER_LOOP_PERIOD_S)
    return counts


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_reuse_port_handover_refuses_no_connection(
    spawn: Spawn, node_ws_clients: NodeClientsFactory, replacement_pids: list[int]
) -> None:
    """SIGHUP with --reuse-port: a new process takes over; a 50 ms connect loop sees no refusal."""
    old, port, clients = await start_server_with_clients(
        spawn, node_ws_clients, "--reuse-port", "--drain-window", "1", count=20, reconnect_ms=50
    )
    stop = asyncio.Event()
    loop = asyncio.ensure_future(_connect_loop(port, stop))
    await asyncio.sleep(0.5)
    old.signal(signal.SIGHUP)
    try:
        assert await old.wait(30) == 0
    except TimeoutError:
        lines = [e for e in log_events(old) if e.get("event") not in ("connect", "close")]
        raise AssertionError("\n".join(map(str, lines))) from None
    new_pid = await wait_healthy(port)
    replacement_pids.append(new_pid)
    assert new_pid != old.pid
    await asyncio.sleep(1.0)  # keep connecting to the replacement alone for a while
    stop.set()
    counts = await asyncio.wait_for(loop, 10)
    closes = [e for e in clients.events if e.get("event") == "close"]
    summary = await clients.stop_and_summarize()
    assert counts["refused"] == 0, counts
    assert counts["status"] + counts["other"] == 0, counts
    assert counts["ok"] >= 20, counts
    assert summary["refused"] == 0, summary
    assert summary["failures"] == 0, summary
    assert summary["opens"] >= 40, summary  # all 20 came back, on the new process
    assert {e["code"] for e in closes} == {1012}
    handed = [e for e in log_events(old) if e.get("event") == "replacement_healthy"]
    assert handed
    assert handed[0]["replacement_pid"] == new_pid
    # Clients' new connections stayed on the old process while the replacement started.
    steering = [e for e in log_events(old) if e.get("event") == "handover_steering"]
    assert [e["kept"] for e in steering] == [True]
    os.kill(new_pid, signal.SIGTERM)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_chained_handovers_refuse_no_connection(
    spawn: Spawn, replacement_pids: list[int]
) -> None:
    """Three SIGHUP handovers in a row (steering left by one must not break the next)."""
    first, port = await start_server(spawn, "--reuse-port", "--drain-window", "0.3")
    stop = asyncio.Event()
    loop = asyncio.ensure_future(_connect_loop(port, stop))
    current = first.pid
    for _ in range(3):
        os.kill(current, signal.SIGHUP)
        for _ in range(400):  # bounded: 20 s for the replacement to answer /healthz
            pid = await wait_healthy(port)
            if pid != current:
                break
            await asyncio.sleep(0.05)
        assert pid != current
        replacement_pids.append(pid)
        current = pid
        await asyncio.sleep(1.0)  # the old one drains (0.3 s) and exits meanwhile
    stop.set()
    counts = await asyncio.wait_for(loop, 10)
    assert counts["refused"] + counts["status"] + counts["other"] == 0, counts
    assert counts["ok"] >= 40, counts
    assert await first.wait(10) == 0


#: Loaded by every Python process started with its directory on PYTHONPATH; it acts
#: only in a handover's replacement (the only process with TETHER_PREDECESSOR_PID):
#: the replacement binds the port, then blocks its event loop for good, like a
#: replacement whose application hangs at start-up.
_HANGING_REPLACEMENT = """
import os

if os.environ.get("TETHER_PREDECESSOR_PID"):
    import time

    import tether.asyncio.server as _server

    _start = _server.Server.start

    async def _start_then_hang(self):
        await _start(self)
        time.sleep(3600)  # listening, never accepting

    _server.Server.start = _start_then_hang
"""


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_hung_replacement_strands_no_connection(
    spawn: Spawn, tmp_path: Path, replacement_pids: list[int]
) -> None:
    """SIGHUP with --reuse-port; the replacement binds the port and hangs. For the 30 s
    the handover waits, a 50 ms connect loop is served by the old process in full
    (before, the kernel gave the hung listener about half of the new connections,
    each waiting there until its client gave up); then the handover fails, the
    replacement is killed and the old process keeps serving."""
    (tmp_path / "sitecustomize.py").write_text(_HANGING_REPLACEMENT)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    port = free_port()
    old = await spawn(
        tether_cli(
            "serve",
            "--port",
            str(port),
            "--json-logs",
            "--reuse-port",
            "--store",
            "none",
            env={"PYTHONPATH": path},
        )
    )
    await wait_healthy(port)
    stop = asyncio.Event()
    loop = asyncio.ensure_future(_connect_loop(port, stop))
    await asyncio.sleep(0.5)
    old.signal(signal.SIGHUP)
    deadline = time.monotonic() + 45
    while not [e for e in log_events(old) if e.get("event") == "replacement"]:
        assert time.monotonic() < deadline, "no replacement started"
        await asyncio.sleep(0.1)
    started = next(e for e in log_events(old) if e.get("event") == "replacement")
    replacement_pids.append(started["replacement_pid"])
    while "handover failed" not in old.stderr_text():
        assert time.monotonic() < deadline, "the handover did not fail"
        await asyncio.sleep(0.1)
    stop.set()
    counts = await asyncio.wait_for(loop, 20)
    steering = [e for e in log_events(old) if e.get("event") == "handover_steering"]
    assert [e["kept"] for e in steering] == [True]
    assert counts["ok"] >= 200, counts  # ~30 s of the loop, all served
    assert counts["refused"] + counts["status"] + counts["other"] == 0, counts
    assert not is_tether_process(started["replacement_pid"])  # killed
    assert (await wait_healthy(port)) == old.pid  # still serving
