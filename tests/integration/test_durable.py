"""Durable sessions end to end: real ``tether serve`` processes, SQLite and Redis, HAProxy, faults.

Every test streams numbered messages with ``tests/peers/tether_stream.py`` (tether clients that
check each sequence both ways) and asserts, per client, what it lost, got twice and got out of
order, where it ended up, and which sessions were resumed or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.support.cluster import StreamClients, TetherNode
from tests.support.haproxy import HAProxy
from tests.support.procs import JsonLineProcess
from tests.support.redis import RedisServer

from tether.stores import open_store
from tether.stores.base import SessionStore
from tether.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

P = TypeVar("P", bound=JsonLineProcess)
Spawn = Callable[[P], Awaitable[P]]


def assert_nothing_lost(report: dict[str, Any]) -> None:
    """Every client: every message sent came back once, in order, both ways."""
    bad = [
        client for client in report["clients"]
        if client["up"]["missing"] or client["up"]["duplicates"] or client["up"]["out_of_order"]
        or client["down"]["missing"] or client["down"]["duplicates"]
        or client["down"]["out_of_order"] or client["lost"] or client["errors"]
    ]  # fmt: skip
    assert not bad, f"{len(bad)} client(s) saw loss/duplicates/errors; first: {bad[:3]}"
    assert all(client["sent"] > 0 for client in report["clients"])


async def lost_sessions(clients: Any, since: float, timeout: float) -> Counter[str]:
    """Wait (bounded) for every client's SessionLost since ``since``; count their reasons."""
    for _ in range(int(timeout / 0.05)):
        if len(clients.events_named("session_lost", since=since)) >= clients.clients:
            break
        await asyncio.sleep(0.05)
    return Counter(ev["reason"] for ev in clients.events_named("session_lost", since=since))


async def stream_for(seconds: float) -> None:
    """Let the clients stream (traffic, not a timer under test)."""
    await asyncio.sleep(seconds)


@pytest.mark.timeout(60)
async def test_sigkilled_sqlite_server_restarts_and_every_session_resumes(
    spawn: Spawn[Any], tmp_path: Path
) -> None:
    """SIGKILL mid-stream, same SQLite file, new process: 0 lost, 0 duplicated, both ways."""
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    node = await spawn(TetherNode("--app", "echo", store=store))
    await node.wait_healthy(10)
    clients = await spawn(StreamClients(node.url, clients=5, rate=50))
    await clients.wait_connected(timeout=10)
    await stream_for(1.5)

    crashed = time.monotonic()
    await freeze_then_kill(node)
    assert await node.wait(5) == -signal.SIGKILL
    await stream_for(0.5)  # clients keep sending into their queues while the port is dead
    again = await spawn(node.again())
    await again.wait_healthy(10)
    await clients.wait_reconnected(since=crashed, timeout=20)
    await stream_for(1.0)
    await clients.stop_sending()
    report = await clients.report(settle=10)

    assert_nothing_lost(report)
    assert all(client["resumes"] >= 1 for client in report["clients"])
    codes = Counter(ev["code"] for ev in clients.events_named("disconnected", since=crashed))
    assert set(codes) == {1006}
    # The frozen server had read nothing for 0.5 s: the clients replayed what it never acked.
    assert sum(ev["replayed_out"] for ev in clients.events_named("resumed", since=crashed)) > 0


@pytest.mark.timeout(90)
async def test_drained_node_moves_its_clients_to_the_other_node_through_haproxy(
    spawn: Spawn[Any],
    haproxy: Callable[..., Awaitable[HAProxy]],
    redis_server: RedisServer,
) -> None:
    """2 nodes + HAProxy + Redis, 100 clients; SIGTERM node A: all resume on B, nothing lost."""
    nodes = [
        TetherNode("--app", "ticker", "--ticker-interval", "200", "--drain-window", "1",
                   store=redis_server.url, node_id=name)
        for name in ("A", "B")
    ]  # fmt: skip
    for node in nodes:
        await spawn(node)
    for node in nodes:
        await node.wait_healthy(10)
    node_a = nodes[0]
    proxy = await haproxy(
        [("127.0.0.1", node.port) for node in nodes], healthz=True, check_interval=0.2
    )
    await proxy.wait_backends_up(timeout=10)
    clients = await spawn(StreamClients(proxy.url, clients=100, rate=5))
    await clients.wait_connected(timeout=30)
    await stream_for(1.5)
    before = await clients.report(settle=5)
    on_a = {client["id"] for client in before["clients"] if client["node"] == "A"}
    # Round robin: both nodes carry clients before the drain.
    assert 30 <= len(on_a) <= 70, Counter(client["node"] for client in before["clients"])

    drained = time.monotonic()
    node_a.signal(signal.SIGTERM)  # tether serve: SIGTERM is a restart, 1012 to every client
    assert await node_a.wait(20) == 0
    await clients.wait_reconnected_ids(on_a, since=drained, timeout=30)
    await stream_for(1.5)
    await clients.stop_sending()
    report = await clients.report(settle=10)

    assert_nothing_lost(report)
    assert Counter(client["node"] for client in report["clients"]) == {"B": 100}
    moved = [client for client in report["clients"] if client["id"] in on_a]
    assert all(client["resumes"] >= 1 for client in moved)
    codes = Counter(ev["code"] for ev in clients.events_named("disconnected", since=drained))
    assert codes == {1012: len(on_a)}


async def flushall(url: str) -> None:
    """FLUSHALL on a private Redis (never the shared one on 6379)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def freeze_then_kill(node: TetherNode, frozen: float = 0.5) -> None:
    """SIGSTOP, let the clients send for ``frozen`` s, SIGKILL: messages die unread in flight.

    A bare SIGKILL only catches a message in flight by chance; a frozen server leaves
    every client with sent-but-unacknowledged messages, every time.
    """
    node.signal(signal.SIGSTOP)
    await stream_for(frozen)
    node.kill()


async def restart_node(spawn: Spawn[Any], node: TetherNode, *, freeze: bool = False) -> TetherNode:
    """SIGKILL ``node`` (frozen first if asked) and start it again on its port; return it."""
    if freeze:
        await freeze_then_kill(node)
    else:
        node.kill()
    await node.wait(5)
    again: TetherNode = await spawn(node.again())
    await again.wait_healthy(10)
    return again


@pytest.mark.timeout(90)
async def test_redis_killed_during_traffic_loses_sessions_explicitly_then_recovers(
    spawn: Spawn[Any], redis_server: RedisServer
) -> None:
    """Redis SIGKILLed: no crash, errors logged, sessions lost explicitly; back after.

    The sessions wait for the store (nothing goes out that it lacks) for
    --store-timeout, then end with 1011: their clients resume, get SessionLost
    ('store_unavailable') and go on in new sessions without the store.
    """
    node = await spawn(TetherNode("--app", "echo", "--store-timeout", "1", store=redis_server.url))
    await node.wait_healthy(10)
    clients = await spawn(StreamClients(node.url, clients=5, rate=20))
    await clients.wait_connected(timeout=10)
    await stream_for(1.0)

    killed = time.monotonic()
    redis_server.signal(signal.SIGKILL)
    await redis_server.wait(5)
    assert await lost_sessions(clients, since=killed, timeout=10) == {"store_unavailable": 5}
    before = await clients.report(settle=0)
    await stream_for(1.5)
    after = await clients.report(settle=0)
    assert node.returncode is None  # the server did not crash
    assert clients.events_named("gave_up") == []
    # Live traffic goes on without the store: every client gets its echoes again.
    echoed = [
        later["up"]["received"] - earlier["up"]["received"]
        for earlier, later in zip(before["clients"], after["clients"], strict=True)
    ]
    assert min(echoed) > 0, echoed

    # A new process: the sessions can only come from the store, which is down.
    restarted = time.monotonic()
    node = await restart_node(spawn, node)
    await clients.wait_reconnected(since=restarted, timeout=20)
    assert await lost_sessions(clients, since=restarted, timeout=5) == {"store_unavailable": 5}
    assert node.returncode is None
    store_errors = [
        record for record in node.log_records()
        if record.get("logger") == "tether.store" and record.get("level") == "error"
    ]  # fmt: skip
    assert store_errors, node.describe()

    # Redis is back (empty): new sessions are durable again and survive the next crash.
    revived = await spawn(RedisServer(port=redis_server.port))
    assert revived.port == redis_server.port
    fresh = await spawn(StreamClients(node.url, clients=5, rate=20, seed=2))
    await fresh.wait_connected(timeout=10)
    await stream_for(1.0)
    crashed = time.monotonic()
    node = await restart_node(spawn, node)
    await fresh.wait_reconnected(since=crashed, timeout=20)
    await stream_for(1.0)
    await fresh.stop_sending()
    assert_nothing_lost(await fresh.report(settle=10))


@pytest.mark.timeout(60)
async def test_flushed_redis_fails_every_resume_with_epoch_mismatch(
    spawn: Spawn[Any], redis_server: RedisServer
) -> None:
    """FLUSHALL, then a node restart: every resume fails as epoch_mismatch, nothing partial."""
    node = await spawn(TetherNode("--app", "echo", store=redis_server.url))
    await node.wait_healthy(10)
    clients = await spawn(StreamClients(node.url, clients=5, rate=20))
    await clients.wait_connected(timeout=10)
    await stream_for(1.0)

    await flushall(redis_server.url)
    restarted = time.monotonic()
    node = await restart_node(spawn, node)
    await clients.wait_reconnected(since=restarted, timeout=20)
    assert await lost_sessions(clients, since=restarted, timeout=5) == {"epoch_mismatch": 5}
    assert not clients.events_named("resumed", since=restarted)
    assert node.returncode is None


@pytest.mark.timeout(60)
async def test_checker_sees_the_loss_without_resumption(spawn: Spawn[Any]) -> None:
    """Control: the same crash with --store none (plain WebSocket) is reported as loss."""
    node = await spawn(TetherNode("--app", "echo", store="none"))
    await node.wait_healthy(10)
    clients = await spawn(StreamClients(node.url, clients=5, rate=50))
    await clients.wait_connected(timeout=10)
    await stream_for(1.5)

    crashed = time.monotonic()
    node = await restart_node(spawn, node, freeze=True)
    await clients.wait_reconnected(since=crashed, timeout=20)
    await stream_for(1.0)
    await clients.stop_sending()
    report = await clients.report(settle=3)

    assert not clients.events_named("resumed")
    assert report["totals"]["missing"] > 0, report["totals"]


@pytest.mark.timeout(60)
async def test_sessions_of_a_sigkilled_sqlite_node_expire_once_its_renewal_ran_out(
    spawn: Spawn[Any], tmp_path: Path
) -> None:
    """SIGKILL with sessions attached, no client back: the expiry removes them from the file."""
    await orphans_expire(spawn, f"sqlite:///{tmp_path / 'sessions.db'}")


@pytest.mark.timeout(60)
async def test_sessions_of_a_sigkilled_redis_node_expire_once_its_renewal_ran_out(
    spawn: Spawn[Any], redis_server: RedisServer
) -> None:
    """The same with Redis: another node's expiry removes what the dead node attached."""
    await orphans_expire(spawn, redis_server.url)


async def orphans_expire(spawn: Spawn[Any], url: str) -> None:
    """Kill a node holding 3 attached sessions; another store instance expires them.

    Before orphan expiry they stayed in the store for ever. The node runs with a 2 s
    resume window (sweeps every 0.5 s, so its renewal reaches 3 s ahead); the expiry
    is judged at given times, so no test time is spent waiting for it.
    """
    node = await spawn(TetherNode("--app", "echo", "--resume-window", "2", store=url))
    await node.wait_healthy(10)
    clients = await spawn(StreamClients(node.url, clients=3, rate=20))
    await clients.wait_connected(timeout=10)
    await stream_for(0.5)

    node.kill()
    killed = time.time()
    assert await node.wait(5) == -signal.SIGKILL
    await clients.stop()  # the clients never come back
    other = open_store(url)
    try:
        assert await attached_sessions(other, url) == 3
        assert await other.expire(killed) == 0  # the last renewal still holds
        assert await other.expire(killed + 2.0 + 2 * 0.5 + 0.1) == 3
        assert await attached_sessions(other, url) == 0
    finally:
        await other.close()


async def attached_sessions(store: SessionStore, url: str) -> int:
    """How many sessions the store holds without an ``expires_at`` (attached)."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            row = db.execute("SELECT count(*) FROM sessions WHERE expires_at IS NULL").fetchone()
        return int(row[0])
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        count = 0
        async for key in client.scan_iter(match="tether:{*}:meta"):
            count += not await client.hexists(key, "expires_at")
        return count
    finally:
        await client.aclose()
