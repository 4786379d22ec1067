"""``tether serve`` nodes and streaming checker clients for the durability tests.

    node = TetherNode("--app", "echo", store="sqlite:///" + str(tmp_path / "s.db"))
    await spawn(node); await node.wait_healthy(10)
    node.kill()                                   # SIGKILL: no Close frame, clients see 1006
    again = node.again(); await spawn(again)      # same port, same arguments, a new process

    clients = StreamClients(url, clients=100, rate=10)
    await spawn(clients); await clients.wait_connected(timeout=20)
    report = await clients.report(settle=10)      # per-client sequence checks, both ways

Every process is a :class:`~tests.support.procs.JsonLineProcess` (stopped by PID by ``spawn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from tether.asyncio.handover import health_check

from .ports import LOOPBACK, free_port
from .procs import Event, JsonLineProcess, python_argv

PEERS_DIR = Path(__file__).resolve().parents[1] / "peers"


class TetherNode(JsonLineProcess):
    """One ``tether serve`` process on a loopback port, logging JSON lines on stderr.

    Args:
        args: extra ``tether serve`` arguments (``--app``, ``--ticker-interval``...).
        store: ``--store`` URL (None: the command's default).
        node_id: ``--node-id`` (default ``n<port>``).
        port: TCP port (a free one by default).
        ping: heartbeat interval in seconds (pong timeout twice that).
    """

    def __init__(
        self,
        *args: str,
        store: str | None = None,
        node_id: str | None = None,
        port: int | None = None,
        ping: float = 1.0,
    ) -> None:
        self.extra = list(args)
        self.store = store
        self.port = port if port is not None else free_port()
        self.node_id = node_id if node_id is not None else f"n{self.port}"
        self.ping = ping
        argv = [
            "-m", "tether", "serve", "--host", LOOPBACK, "--port", str(self.port),
            "--node-id", self.node_id, "--json-logs", "--ping-interval", str(ping),
            "--ping-timeout", str(2 * ping), *(["--store", store] if store else []), *args,
        ]  # fmt: skip
        super().__init__(
            python_argv(*argv), env={"PYTHONUNBUFFERED": "1"}, name=f"tether serve {self.node_id}"
        )

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/``."""
        return f"ws://{LOOPBACK}:{self.port}/"

    def again(self) -> TetherNode:
        """A new (not started) process with the same port, node id, store and arguments."""
        return TetherNode(
            *self.extra, store=self.store, node_id=self.node_id, port=self.port, ping=self.ping
        )

    async def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Wait until ``/healthz`` answers 200 with this process's PID; return the body."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise AssertionError(f"{self.name} exited ({self.returncode})\n{self.describe()}")
            try:
                status, body = await health_check(LOOPBACK, self.port, timeout=1.0)
            except (OSError, asyncio.TimeoutError):
                status = 0
            if status == 200 and body.get("pid") == self.pid:
                return body
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout} s ({body})\n{self.describe()}")

    def kill(self) -> None:
        """SIGKILL by PID: the process dies without a Close frame (clients see 1006)."""
        self.signal(signal.SIGKILL)

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log records (``--json-logs``) written on stderr so far."""
        records = []
        for line in self.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


class StreamClients(JsonLineProcess):
    """``tests/peers/tether_stream.py``: N tether clients streaming numbered messages.

    Args:
        url: server or load-balancer URL.
        clients: number of clients.
        rate: messages per second each client sends.
        resume: pass ``resume=`` to ``tether.connect`` (None: its default).
        ping: heartbeat interval in seconds (pong timeout twice that); 0 disables.
        loop: ``--loop`` of the clients' process (asyncio, uvloop).
    """

    def __init__(
        self,
        url: str,
        *,
        clients: int = 1,
        rate: float = 20.0,
        resume: bool | None = None,
        ping: float = 1.0,
        seed: int = 1,
        loop: str = "asyncio",
    ) -> None:
        self.clients = clients
        argv = [
            str(PEERS_DIR / "tether_stream.py"), "--url", url, "--clients", str(clients),
            "--rate", str(rate), "--seed", str(seed), "--ping-interval", str(ping),
            "--ping-timeout", str(2 * ping), "--loop", loop,
        ]  # fmt: skip
        if resume is not None:
            argv.append("--resume" if resume else "--no-resume")
        super().__init__(python_argv(*argv), env={"PYTHONUNBUFFERED": "1"}, name="tether_stream")

    async def wait_connected(self, timeout: float) -> None:
        """Wait until every client reported its first ``connected``."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < self.clients:
            remaining = deadline - time.monotonic()
            event = await self.expect(
                lambda ev: ev["event"] == "connected" and ev["id"] not in seen,
                timeout=max(remaining, 0.01),
            )
            seen.add(event["id"])

    def connected_since(self, since: float) -> set[int]:
        """Ids of the clients that (re)connected at or after monotonic time ``since``."""
        return {ev["id"] for ev in self.events if ev["event"] == "connected" and ev["t"] >= since}

    def events_named(self, name: str, since: float = 0.0) -> list[Event]:
        """All events called ``name`` stamped at or after ``since``."""
        return [ev for ev in self.events if ev["event"] == name and ev["t"] >= since]

    async def wait_reconnected(self, since: float, timeout: float) -> None:
        """Wait (bounded) until every client connected again after ``since``."""
        await self.wait_reconnected_ids(set(range(self.clients)), since=since, timeout=timeout)

    async def wait_reconnected_ids(self, ids: set[int], *, since: float, timeout: float) -> None:
        """Wait (bounded) until the clients ``ids`` connected again after ``since``."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):  # bounded by the deadline
            missing = sorted(ids - self.connected_since(since))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients {missing[:20]} not back after {timeout} s")
            await asyncio.sleep(0.05)

    async def stop_sending(self) -> int:
        """Stop every client's sender; return how many messages were sent in all."""
        await self.send({"cmd": "stop_sending"})
        event = await self.expect_event("stopped", timeout=5)
        return int(event["sent"])

    async def report(self, settle: float) -> dict[str, Any]:
        """Per-client sequence checks after waiting up to ``settle`` s for echoes to arrive."""
        await self.send({"cmd": "report", "settle": settle})
        return await self.expect_event("report", timeout=settle + 10)
