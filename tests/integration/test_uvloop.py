"""tether on uvloop end to end: ``tether serve --loop uvloop`` and tether.v1 clients on uvloop.

The library runs on whatever asyncio loop the application chooses; ``--loop uvloop`` is the
commands' way to choose libuv's (docs/server.md, "Event loop"). These tests prove the parts that
touch the loop most (accepting, signals, the ``--reuse-port`` handover's replacement process,
SQLite's thread handing results back, timers of the heartbeat) on uvloop with real processes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.integration.test_durable import assert_nothing_lost
from tests.support.cluster import StreamClients, TetherNode
from tests.support.procs import JsonLineProcess

pytest.importorskip("uvloop")  # (in the dev extra: present wherever the suite runs)

pytestmark = pytest.mark.integration

P = TypeVar("P", bound=JsonLineProcess)
Spawn = Callable[[P], Awaitable[P]]


def listening(node: TetherNode) -> dict[int, str]:
    """pid -> event loop, from the ``listening`` log lines (a replacement logs on our stderr)."""
    return {
        record["pid"]: record["loop"]
        for record in node.log_records()
        if record.get("event") == "listening"
    }


@pytest.mark.timeout(90)
async def test_a_handover_on_uvloop_resumes_every_session_and_loses_nothing(
    spawn: Spawn[Any], tmp_path: Path, replacement_pids: list[int]
) -> None:
    """SIGHUP with --reuse-port, SQLite store, server and clients on uvloop: every client
    closed with 1012 and resumed on the replacement (also on uvloop); 0 lost, 0 duplicated."""
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    node = await spawn(
        TetherNode(
            "--app", "echo", "--reuse-port", "--drain-window", "1", "--loop", "uvloop",
            store=store,
        )
    )  # fmt: skip
    await node.wait_healthy(10)
    assert listening(node) == {node.pid: "uvloop"}
    clients = await spawn(StreamClients(node.url, clients=5, rate=50, loop="uvloop"))
    ready = await clients.expect_event("ready", timeout=10)
    assert ready["loop"] == "uvloop"
    await clients.wait_connected(timeout=10)
    await asyncio.sleep(1.0)  # traffic before the restart (not a timer under test)

    restarted = time.monotonic()
    node.signal(signal.SIGHUP)
    assert await node.wait(30) == 0  # drained and handed over
    loops = listening(node)
    replacements = [pid for pid in loops if pid != node.pid]
    replacement_pids.extend(replacements)
    assert len(replacements) == 1, loops
    assert loops[replacements[0]] == "uvloop"
    await clients.wait_reconnected(since=restarted, timeout=20)
    await asyncio.sleep(1.0)  # traffic after it

    await clients.stop_sending()
    report = await clients.report(settle=5)
    assert_nothing_lost(report)
    codes = Counter(ev["code"] for ev in clients.events_named("disconnected", since=restarted))
    assert codes == Counter({1012: 5})
    resumed = {ev["id"] for ev in clients.events_named("resumed", since=restarted)}
    assert resumed == set(range(5))
    assert not clients.events_named("session_lost")
