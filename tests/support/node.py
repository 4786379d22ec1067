"""Node ``ws`` peers (``tests/peers/ws_server.mjs``, ``ws_clients.mjs``) as async context managers.

async with NodeWsServer(echo=True) as server:      # server.url, server.port
    async with connect(server.url) as ws: ...
    await server.close_all(1012)
    ev = await server.expect_event("close", timeout=5)

async with NodeWsClients(url, count=3, reconnect_ms=100) as clients:
    await clients.expect_event("open", timeout=5)
    summary = await clients.stop_and_summarize()
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from .procs import REPO_ROOT, Event, JsonLineProcess

if TYPE_CHECKING:
    from typing_extensions import Self

PEERS_DIR = REPO_ROOT / "tests" / "peers"


def node_binary() -> str:
    """Path of ``node``; raises FileNotFoundError with the fix if it is missing."""
    path = shutil.which("node")
    if path is None:
        raise FileNotFoundError(
            "node is not installed (.ci/run installs it: apt-get install nodejs)"
        )
    return path


def peers_installed() -> bool:
    """True when ``npm ci`` ran in tests/peers (ws and playwright-core are present)."""
    modules = PEERS_DIR / "node_modules"
    return (modules / "ws").is_dir() and (modules / "playwright-core").is_dir()


def require_peers() -> None:
    """Raise FileNotFoundError with the fix when the Node peers are not installed."""
    node_binary()
    if not peers_installed():
        raise FileNotFoundError(f"Node peers missing: run 'npm ci' in {PEERS_DIR} (.ci/run does)")


class NodeWsServer(JsonLineProcess):
    """``ws_server.mjs``: a Node ``ws`` server on a loopback port, driven by JSON lines.

    Args:
        port: TCP port; 0 picks a free one (read it from ``.port`` after start).
        host: Listen address (loopback).
        echo: Echo every message back.
        auto_pong: Answer pings (False makes a peer that lets heartbeats time out).
        start_timeout: Seconds to wait for the ``listening`` event.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        echo: bool = False,
        auto_pong: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        argv = [
            node_binary(),
            str(PEERS_DIR / "ws_server.mjs"),
            "--port",
            str(port),
            "--host",
            host,
        ]
        if echo:
            argv.append("--echo")
        if not auto_pong:
            argv.append("--no-auto-pong")
        super().__init__(argv, cwd=PEERS_DIR, name="node-ws-server")
        self.host = host
        self.port = port
        self.start_timeout = start_timeout

    async def start(self) -> Self:
        """Start the server and wait until it listens."""
        require_peers()
        await super().start()
        listening = await self.expect_event("listening", timeout=self.start_timeout)
        self.port = int(listening["port"])
        return self

    @property
    def url(self) -> str:
        """``ws://host:port/``."""
        return f"ws://{self.host}:{self.port}/"

    async def command(self, cmd: str, timeout: float = 5.0, **fields: Any) -> Event:
        """Send one command and wait for its ``ack`` (or raise on its ``error``)."""
        await self.send({"cmd": cmd, **fields})
        reply = await self.expect(
            lambda ev: ev["event"] in ("ack", "error") and ev.get("cmd") == cmd, timeout=timeout
        )
        if reply["event"] == "error":
            raise AssertionError(f"node-ws-server refused {cmd}: {reply.get('message')}")
        return reply

    async def send_all(self, data: str) -> None:
        """Send a text message to every connection."""
        await self.command("send", data=data)

    async def close_all(self, code: int, reason: str = "") -> None:
        """Send a Close frame with ``code`` on every connection (RFC 6455 §5.5.1)."""
        await self.command("close", code=code, reason=reason)

    async def terminate_all(self) -> None:
        """Drop every connection's TCP stream without a Close frame; peers see 1006."""
        await self.command("terminate")

    async def stop_listening(self) -> None:
        """Close the listening socket, keeping live connections (new connects are refused)."""
        await self.command("stop_listening")

    async def start_listening(self) -> None:
        """Listen again on the same port."""
        await self.command("start_listening")

    async def set_echo(self, on: bool) -> None:
        """Turn echo mode on or off."""
        await self.command("echo", on=on)


class NodeWsClients(JsonLineProcess):
    """``ws_clients.mjs``: ``count`` Node ``ws`` clients to ``url``.

    Args:
        url: WebSocket URL (loopback).
        count: Number of clients (ids 0..count-1 in the events).
        reconnect_ms: When > 0, every client reconnects this many milliseconds after a close or
            a failed attempt, counting failures (``refused`` = ECONNREFUSED, ``rejected`` = the
            handshake got an HTTP status instead of 101, such as 503 while a server drains).
        max_attempts: Upper bound on attempts per client (bounds the reconnect loop).
    """

    def __init__(
        self, url: str, *, count: int = 1, reconnect_ms: int = 0, max_attempts: int = 10_000
    ) -> None:
        argv = [
            node_binary(),
            str(PEERS_DIR / "ws_clients.mjs"),
            "--url",
            url,
            "--count",
            str(count),
            "--reconnect-ms",
            str(reconnect_ms),
            "--max-attempts",
            str(max_attempts),
        ]
        super().__init__(argv, cwd=PEERS_DIR, name="node-ws-clients")
        self.url = url
        self.count = count

    async def start(self) -> Self:
        """Start the clients (they connect at once; ``expect_event("open")`` to wait)."""
        require_peers()
        await super().start()
        return self

    async def wait_all_open(self, timeout: float) -> list[Event]:
        """Wait until each of the ``count`` clients reported one ``open``."""
        return [await self.expect_event("open", timeout=timeout, id=i) for i in range(self.count)]

    async def summary(self, timeout: float = 5.0) -> Event:
        """Current counters: attempts, opens, failures, refused, rejected, statuses, closes.

        ``failures`` counts every attempt that never opened; ``refused`` those that got
        ECONNREFUSED; ``rejected`` those the server answered with an HTTP status instead of
        101, and ``statuses`` maps each such status to its count (``{503: 2}``).
        """
        await self.send({"cmd": "summary"})
        return _summary(await self.expect_event("summary", timeout=timeout))

    async def stop_and_summarize(self, timeout: float = 5.0) -> Event:
        """Stop reconnecting, close all clients with 1000, return the final counters."""
        await self.send({"cmd": "stop"})
        return _summary(await self.expect_event("summary", timeout=timeout))

    def failures(self, *, reason: str | None = None, status: int | None = None) -> list[Event]:
        """The ``failed`` events so far, only those with ``reason`` / HTTP ``status`` if given.

        ``reason`` is ``refused``, ``status`` (handshake answered with ``status``), ``error`` or
        ``closed``.
        """
        return [
            ev
            for ev in self.events
            if ev.get("event") == "failed"
            and (reason is None or ev.get("reason") == reason)
            and (status is None or ev.get("status") == status)
        ]


def _summary(event: Event) -> Event:
    # JSON object keys are strings; tests compare HTTP statuses as ints.
    return {**event, "statuses": {int(k): n for k, n in event.get("statuses", {}).items()}}
