"""Shared fixtures for tether's tests (see tests/support/README.md).

Markers: ``integration`` (real sockets and peers, bounded in time) and ``root`` (fails in CI and
skips locally, with the reason, when not root).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from tests.support.browser import ChromiumWebSocket, require_chromium
from tests.support.haproxy import HAProxy
from tests.support.netns import NetNamespace, missing_netns_requirements
from tests.support.node import NodeWsClients, NodeWsServer, require_peers
from tests.support.procs import JsonLineProcess, is_tether_process
from tests.support.redis import RedisServer
from tests.support.require import require, require_root, require_tools
from tests.support.uvicorn import UvicornServer

from tether.asyncio.chaos import ChaosProxy

P = TypeVar("P", bound=JsonLineProcess)


if os.environ.get("TETHER_TEST_LOOP") == "uvloop":
    # Run every pytest-asyncio test (and its async fixtures) on uvloop. pytest-asyncio 1.x
    # deprecates overriding ``event_loop_policy`` (a PytestDeprecationWarning, an error
    # under filterwarnings=error); its hook is the supported way. Subprocesses (``tether
    # serve``/``connect``, peers), sync tests that call ``asyncio.run`` and ``run_virtual``
    # keep their own (stdlib) loops.
    import uvloop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], Any]]:
        return {"uvloop": uvloop.new_event_loop}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``root`` fail in CI and skip locally (with the reason) when not root."""
    if item.get_closest_marker("root") is not None:
        require_root()


@pytest.fixture
def requires_root() -> None:
    """Fixture form of the ``root`` marker: fail in CI, skip locally with the reason."""
    require_root()


def _node_peers() -> None:
    try:
        require_peers()
    except FileNotFoundError as exc:
        require(False, str(exc))


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[[P], Awaitable[P]]]:
    """Start any JsonLineProcess (e.g. ``tether_cli(...)``); all are stopped by PID afterwards."""
    started: list[JsonLineProcess] = []

    async def start(proc: P) -> P:
        started.append(proc)
        await proc.start()
        return proc

    yield start
    for proc in reversed(started):
        await proc.stop()


@pytest.fixture
async def node_ws_server() -> AsyncIterator[NodeWsServer]:
    """A Node ``ws`` echo server on a free loopback port (``.url``, ``.close_all(1012)``...)."""
    _node_peers()
    async with NodeWsServer(echo=True) as server:
        yield server


@pytest.fixture
async def node_ws_clients() -> AsyncIterator[Callable[..., Awaitable[NodeWsClients]]]:
    """Factory: ``await node_ws_clients(url, count=3, reconnect_ms=100)``; stopped afterwards."""
    _node_peers()
    started: list[NodeWsClients] = []

    async def make(url: str, **kwargs: Any) -> NodeWsClients:
        clients = NodeWsClients(url, **kwargs)
        started.append(clients)
        return await clients.start()

    yield make
    for clients in reversed(started):
        await clients.stop()


@pytest.fixture
async def chromium() -> AsyncIterator[Callable[[str], Awaitable[ChromiumWebSocket]]]:
    """Factory: ``await chromium(url)`` opens a WebSocket from headless Chromium."""
    try:
        require_chromium()
    except FileNotFoundError as exc:
        require(False, str(exc))
    started: list[ChromiumWebSocket] = []

    async def make(url: str) -> ChromiumWebSocket:
        browser = ChromiumWebSocket(url)
        started.append(browser)
        return await browser.start()

    yield make
    for browser in reversed(started):
        await browser.stop()


@pytest.fixture
async def haproxy() -> AsyncIterator[Callable[..., Awaitable[HAProxy]]]:
    """Factory: ``await haproxy([(host, port), ...], timeout_tunnel=3.0, healthz=False)``."""
    require_tools("haproxy")
    started: list[HAProxy] = []

    async def make(backends: Sequence[tuple[str, int]], **kwargs: Any) -> HAProxy:
        proxy = HAProxy(backends, **kwargs)
        started.append(proxy)
        return await proxy.start()

    yield make
    for proxy in reversed(started):
        await proxy.stop()


@pytest.fixture
async def netns() -> AsyncIterator[NetNamespace]:
    """A private network namespace (lo up), deleted with its rules and processes afterwards."""
    missing = missing_netns_requirements()
    require(not missing, f"network namespace rig needs: {', '.join(missing)}")
    async with NetNamespace() as namespace:
        yield namespace


@pytest.fixture
async def uvicorn_server() -> AsyncIterator[UvicornServer]:
    """uvicorn serving the echo app on a free port; SIGTERM it to get a real 1012."""
    async with UvicornServer() as server:
        yield server


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A private redis-server on a free loopback port (``.url``), stopped by PID afterwards."""
    require_tools("redis-server")
    async with RedisServer() as server:
        yield server
    # A Redis connection the test left open and unreachable warns (ResourceWarning)
    # when it is collected, and with filterwarnings=error that fails whichever test
    # runs then (seen once: a later test failed on a connection to a private
    # redis-server). Collect here, so that such a warning names the test that leaked.
    gc.collect()


@pytest.fixture
async def chaos_proxy() -> AsyncIterator[Callable[..., Awaitable[ChaosProxy]]]:
    """Factory: ``await chaos_proxy(upstream_port, idle_timeout=3, ...)`` → started ChaosProxy.

    In-process fault injection (tether.asyncio.chaos): ``.port``, ``.kill_all()`` (1006 both
    ways), ``.blackhole_all()`` (half-open), ``.heal()``, ``await .wait_fault(n, timeout=)``.
    Closed (every connection reset) afterwards.
    """
    started: list[ChaosProxy] = []

    async def make(upstream_port: int, **settings: Any) -> ChaosProxy:
        proxy = ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", upstream_port), **settings)
        started.append(proxy)
        await proxy.start()
        return proxy

    yield make
    for proxy in reversed(started):
        await proxy.close()


@pytest.fixture
async def replacement_pids() -> AsyncIterator[list[int]]:
    """PIDs of replacement servers a test learned of; each is stopped by PID afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        # Replacements that already handed over have exited; never signal a reused PID.
        if is_tether_process(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
