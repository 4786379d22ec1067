"""The Redis store: conformance, layout, TTLs, fencing between nodes, failures, epoch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.redis import RedisServer
from tests.support.require import require
from tests.support.tasks import tasks_started

from tether.exceptions import ConfigurationError, StoreError
from tether.stores.base import (
    Fenced,
    SessionRecord,
    SessionStore,
    StoreUnavailable,
    UnknownSession,
    Write,
)
from tether.stores.redis import DEFAULT_PREFIX, RedisStore

from .conformance import HASH, SID, SharedStoreConformance, StoreConformance, batch
from .restart_scenario import resume_after_restart

SHARED_URL = "redis://127.0.0.1:6379/0"


async def _remove_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A random key prefix on the machine's Redis, removed afterwards."""
    client = aioredis.Redis.from_url(SHARED_URL, socket_connect_timeout=2)
    try:
        answered = bool(await client.ping())
    except (RedisError, OSError):
        answered = False
    finally:
        await client.aclose()
    require(answered, "no Redis answers on 127.0.0.1:6379 (.ci/run starts one)")
    prefix = f"tether-test-{secrets.token_hex(6)}:"
    yield prefix
    await _remove_prefix(SHARED_URL, prefix)


class TestRedisStore(StoreConformance, SharedStoreConformance):
    """Conformance of :class:`RedisStore` on the machine's Redis (``other``: another node)."""

    @pytest.fixture
    async def store(self, prefix: str) -> AsyncIterator[SessionStore]:
        """A Redis store isolated by a random prefix; its clock is the suite's (0)."""
        async with _node(prefix) as store:
            yield store

    @pytest.fixture
    async def other(self, prefix: str) -> AsyncIterator[SessionStore]:
        """Another node's store on the same prefix."""
        async with _node(prefix) as other:
            yield other


@contextlib.asynccontextmanager
async def _node(prefix: str, clock: float = 0.0) -> AsyncIterator[RedisStore]:
    store = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0, clock=lambda: clock)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[RedisStore]:
    """A Redis store on the machine's Redis whose clock stands at 1000 s."""
    async with _node(prefix, clock=1000.0) as store:
        yield store


@pytest.fixture
async def other_node(prefix: str) -> AsyncIterator[RedisStore]:
    """A second node's store on the same prefix, its clock also at 1000 s."""
    async with _node(prefix, clock=1000.0) as other:
        yield other


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the machine's Redis, to look at the keys."""
    client = aioredis.Redis.from_url(SHARED_URL)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def sessions_on(
    redis_server: RedisServer, count: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[RedisStore, aioredis.Redis, list[str]]]:
    """A store on the private Redis with ``count`` sessions created one after the other
    (one pooled connection), a plain client for its statistics, and the session ids."""
    store = RedisStore(redis_server.url, timeout=timeout)
    stats = aioredis.Redis.from_url(redis_server.url)
    sids = [f"s{number}" for number in range(count)]
    try:
        for sid in sids:
            await store.create(sid, token_hash=HASH, principal=None, now=0.0)
        yield store, stats, sids
    finally:
        await stats.aclose()
        await store.close()


async def connections_received(stats: aioredis.Redis) -> int:
    """Connections Redis accepted so far (a new one per pooled connection opened)."""
    return int((await stats.info("stats"))["total_connections_received"])


async def test_stream_ids_are_sequence_numbers(store: RedisStore, raw: aioredis.Redis) -> None:
    """Each message is a stream entry whose id is ``<seq>-0``."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    await store.write(SID, 1, append=batch(1, 3))
    entries = await raw.xrange(store.stream_key(SID))
    assert [entry_id for entry_id, _ in entries] == [b"1-0", b"2-0", b"3-0"]


async def test_trim_is_exact(store: RedisStore, raw: aioredis.Redis) -> None:
    """After an ack, the stream holds exactly the unacknowledged messages (XLEN)."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    await store.write(SID, 1, append=batch(1, 1000))
    await store.write(SID, 1, acked=997)
    assert await raw.xlen(store.stream_key(SID)) == 3
    await store.write(SID, 1, append=batch(1001, 1001), acked=1000)
    assert await raw.xlen(store.stream_key(SID)) == 1


async def test_keys_share_one_hash_slot(store: RedisStore, raw: aioredis.Redis) -> None:
    """A session's meta hash and stream carry the ``{sid}`` tag: one hash slot."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    await store.write(SID, 1, append=batch(1, 1))
    keys = sorted([key async for key in raw.scan_iter(match=f"{store.prefix}{{{SID}}}*")])
    assert keys == [store.meta_key(SID).encode(), store.stream_key(SID).encode()]
    assert key_slot(keys[0]) == key_slot(keys[1]) == key_slot(SID.encode())


async def test_brace_in_sid_refused(store: RedisStore) -> None:
    """A session id with a brace (which would break the hash tag) is refused."""
    with pytest.raises(StoreError, match="braces"):
        await store.create("a}b", token_hash=HASH, principal=None, now=0.0)


async def test_detach_sets_ttl_to_the_window(store: RedisStore, raw: aioredis.Redis) -> None:
    """detach() gives both keys a TTL equal to the resume window (store clock at 1000 s)."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.write(SID, 1, append=batch(1, 2))
    await store.detach(SID, 1, expires_at=1120.0)
    for key in (store.meta_key(SID), store.stream_key(SID)):
        assert 115_000 < await raw.pttl(key) <= 120_000


async def test_claim_removes_ttl(store: RedisStore, raw: aioredis.Redis) -> None:
    """A claimed (re-attached) session does not expire."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.write(SID, 1, append=batch(1, 2))
    await store.detach(SID, 1, expires_at=1120.0)
    await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
    assert await raw.pttl(store.meta_key(SID)) == -1
    assert await raw.pttl(store.stream_key(SID)) == -1


async def test_write_while_detached_keeps_ttl(store: RedisStore, raw: aioredis.Redis) -> None:
    """A stream first created after detach expires with the session, not never."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.detach(SID, 1, expires_at=1060.0)
    await store.write(SID, 1, append=batch(1, 1))
    assert 55_000 < await raw.pttl(store.stream_key(SID)) <= 60_000


async def test_an_instances_attached_set_keeps_only_its_attached_sessions(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """``<sid> <generation>`` while attached here; a detach or a delete takes it out."""
    owned = store.owned_key(store.node)
    for sid in ("a", "b", "c"):
        await store.create(sid, token_hash=HASH, principal=None, now=1000.0)
    assert await raw.smembers(owned) == {b"a 1", b"b 1", b"c 1"}
    await store.detach("a", 1, expires_at=1120.0)
    await store.write_many([Write("b", 1, detach_at=1120.0)])
    await store.delete("c")
    assert await raw.scard(owned) == 0
    await store.claim("a", 1, token_hash=HASH, previous_token_hash=HASH)
    await store.resume("b", lambda r: True, token_hash=HASH, previous_token_hash=HASH)
    assert await raw.smembers(owned) == {b"a 2", b"b 2"}


async def test_a_fenced_detach_leaves_the_claims_member(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """The old connection's late detach must not take the new claim out of the set."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.claim(SID, 1, token_hash=HASH, previous_token_hash=HASH)
    with pytest.raises(Fenced):
        await store.detach(SID, 1, expires_at=1120.0)
    [outcome] = await store.write_many([Write(SID, 1, detach_at=1120.0)])
    assert isinstance(outcome, Fenced)
    assert await raw.smembers(store.owned_key(store.node)) == {f"{SID} 2".encode()}


async def test_a_renewal_prunes_what_is_no_longer_attached_here(
    store: RedisStore, other_node: RedisStore, raw: aioredis.Redis
) -> None:
    """Taken over by another node, or a refused claim's member: gone after a renewal."""
    await store.create("taken", token_hash=HASH, principal=None, now=1000.0)
    await store.create("kept", token_hash=HASH, principal=None, now=1000.0)
    await other_node.claim("taken", 1, token_hash=HASH, previous_token_hash=HASH)
    await store.claim("kept", 1, token_hash=HASH, previous_token_hash=HASH)
    with pytest.raises(Fenced):
        await store.claim("kept", 1, token_hash=HASH, previous_token_hash=HASH)
    owned = store.owned_key(store.node)
    assert await raw.smembers(owned) == {b"taken 1", b"kept 1", b"kept 2"}
    await store.renew(1100.0)
    assert await raw.smembers(owned) == {b"kept 2"}


async def test_an_older_tethers_claim_is_not_taken_for_an_orphan(
    store: RedisStore, other_node: RedisStore, raw: aioredis.Redis
) -> None:
    """A claim that does not record its node (an older tether) still moves the session on."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.renew(1100.0)
    await raw.hincrby(store.meta_key(SID), "generation", 1)  # what its claim changes
    assert await other_node.expire(1200.0) == 0
    assert await other_node.load(SID) is not None


async def test_a_detached_member_left_behind_is_not_an_orphan(
    store: RedisStore, other_node: RedisStore, raw: aioredis.Redis
) -> None:
    """The re-check sees the detach even when the set still names the session."""
    await store.create(SID, token_hash=HASH, principal=None, now=1000.0)
    await store.detach(SID, 1, expires_at=1500.0)
    await raw.sadd(store.owned_key(store.node), f"{SID} 1")
    await store.renew(1100.0)
    assert await other_node.expire(1200.0) == 0
    assert await other_node.load(SID) is not None


async def test_renewals_are_judged_on_redis_clock(prefix: str) -> None:
    """Node clocks 5,000 s apart: each node's renewal means 'this far ahead of my clock'."""
    behind = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0, clock=lambda: 0.0)
    ahead = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0, clock=lambda: 5000.0)
    try:
        await behind.create(SID, token_hash=HASH, principal=None, now=0.0)
        await behind.renew(100.0)  # 100 s from now
        assert await ahead.expire(5050.0) == 0  # 50 s from now: still renewed
        assert await ahead.expire(5101.0) == 1
    finally:
        await behind.close()
        await ahead.close()


async def test_a_dead_instances_set_and_renewal_are_removed(
    store: RedisStore, other_node: RedisStore, raw: aioredis.Redis
) -> None:
    """Once its orphans are expired, nothing of the dead instance is left in Redis."""
    for index in range(7):
        await other_node.create(f"s{index}", token_hash=HASH, principal=None, now=1000.0)
    await other_node.renew(1100.0)  # its last renewal
    await store.renew(5000.0)
    assert await store.expire(1200.0, batch_size=3) == 7  # in three rounds (store's clock: 1000)
    assert not await raw.exists(store.owned_key(other_node.node))
    assert await raw.zrange(store.nodes_key, 0, -1) == [store.node.encode()]


async def test_fencing_between_two_nodes(prefix: str) -> None:
    """Node B claims a session node A wrote: A's writes and detach are fenced, B's go on."""
    node_a = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0)
    node_b = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0)
    try:
        await node_a.create(SID, token_hash=HASH, principal=None, now=0.0)
        await node_a.write(SID, 1, append=batch(1, 2), rx=5)
        claimed = await node_b.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        assert (claimed.generation, claimed.tx, claimed.rx) == (2, 2, 5)
        with pytest.raises(Fenced):
            await node_a.write(SID, 1, append=batch(3, 3))
        with pytest.raises(Fenced):
            await node_a.detach(SID, 1, expires_at=time.time() + 60)
        assert (await node_b.write(SID, 2, append=batch(3, 3))).tx == 3
        assert [m.seq for m in await node_a.messages(SID, after=0)] == [1, 2, 3]
    finally:
        await node_a.close()
        await node_b.close()


async def test_epoch_shared_by_nodes(prefix: str) -> None:
    """Two nodes on the same Redis and prefix see the same epoch."""
    node_a = RedisStore(SHARED_URL, prefix=prefix)
    node_b = RedisStore(SHARED_URL, prefix=prefix)
    try:
        assert await node_a.epoch() == await node_b.epoch()
    finally:
        await node_a.close()
        await node_b.close()


# -- tests on a private redis-server (killed, stopped, flushed): the `redis_server` rig --------


async def test_one_round_trip_per_batch(redis_server: RedisServer) -> None:
    """A write of 100 messages plus ack and rx is one script call on the server."""
    store = RedisStore(redis_server.url, timeout=2.0)
    stats = aioredis.Redis.from_url(redis_server.url)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 1))  # the script is loaded now
        await stats.config_resetstat()
        await store.write(SID, 1, append=batch(2, 101), acked=50, rx=7)
        info = await stats.info("commandstats")
        calls = {name: value["calls"] for name, value in info.items()}
        # commandstats also counts the commands the script ran: 100 XADDs inside one EVALSHA.
        assert (calls.pop("cmdstat_evalsha"), calls.pop("cmdstat_xadd")) == (1, 100)
        inside_the_script = {"hget", "hmget", "hset", "hgetall", "xtrim"}
        ours = {"config|resetstat", "info"}
        assert {name.removeprefix("cmdstat_") for name in calls} <= inside_the_script | ours
    finally:
        await stats.aclose()
        await store.close()


async def test_one_pipeline_per_loop_turn(redis_server: RedisServer) -> None:
    """Writes of 50 sessions made in one loop turn travel together (no new connections)."""
    async with sessions_on(redis_server, 50, timeout=2.0) as (store, stats, sids):
        before = await connections_received(stats)
        records = await asyncio.gather(*(store.write(sid, 1, append=batch(1, 2)) for sid in sids))
        assert [record.tx for record in records] == [2] * 50
        # One round trip per request would need 50 connections at once (redis-py's pool
        # opens one per concurrent command); the pipeline reused the one it had.
        assert await connections_received(stats) - before == 0


async def test_write_many_is_one_pipeline_without_a_task_per_write(
    redis_server: RedisServer,
) -> None:
    """write_many() of 200 sessions: one round trip, one pipeline task, no task per write."""
    async with sessions_on(redis_server, 200, timeout=2.0) as (store, stats, sids):
        await store.write(sids[0], 1, rx=1)  # the script is loaded now
        await stats.config_resetstat()
        before = await connections_received(stats)
        with tasks_started() as tasks:
            results = await store.write_many([Write(sid, 1, batch(1, 2), rx=3) for sid in sids])
        assert results == [None] * 200
        # The store's one pipeline task; the others are redis-py's own (sending, pool).
        ours = [name for name in tasks if name.startswith("RedisStore.")]
        assert ours == ["RedisStore._send_pipeline"]
        assert len(tasks) <= 10
        assert await connections_received(stats) - before == 0
        info = await stats.info("commandstats")
        assert info["cmdstat_evalsha"]["calls"] == 200
        record = await store.load(sids[-1])
        assert record is not None
        assert (record.tx, record.rx) == (2, 3)


async def test_resume_is_two_round_trips(redis_server: RedisServer) -> None:
    """resume(): the load, then one script that claims and reads the replay."""
    async with sessions_on(redis_server, 2, timeout=2.0) as (store, stats, sids):
        await store.write(sids[0], 1, append=batch(1, 3), acked=1)
        await store.resume(  # loads the script
            sids[1], lambda record: True, token_hash=HASH, previous_token_hash=HASH
        )
        await stats.config_resetstat()
        with tasks_started() as tasks:
            record, messages = await store.resume(
                sids[0], lambda record: True, token_hash="b" * 64, previous_token_hash=HASH
            )
        assert record is not None
        assert (record.generation, messages) == (2, batch(2, 3))
        ours = [name for name in tasks if name.startswith("RedisStore.")]
        assert ours == ["RedisStore._send_pipeline"] * 2
        # The claim and the read are one script: nothing can run between them.
        info = await stats.info("commandstats")
        assert info["cmdstat_evalsha"]["calls"] == 1
        assert info["cmdstat_xrange"]["calls"] == 1  # inside the script


async def test_write_many_reports_a_backend_failure_per_write() -> None:
    """Nothing listens: every write of the call gets StoreUnavailable, chained."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        results = await store.write_many([Write("a", 1, rx=1), Write("b", 1, rx=1)])
        assert [type(result) for result in results] == [StoreUnavailable, StoreUnavailable]
        assert all(isinstance(result.__cause__, (RedisError, OSError)) for result in results)
    finally:
        await store.close()


async def test_pipeline_keeps_calls_apart(store: RedisStore) -> None:
    """A fenced write pipelined with a good one fails alone; the good one lands."""
    for sid in ("stale", "good"):
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    await store.claim("stale", 1, token_hash="b" * 64, previous_token_hash=HASH)
    stale, good = await asyncio.gather(
        store.write("stale", 1, append=batch(1, 2)),
        store.write("good", 1, append=batch(1, 2)),
        return_exceptions=True,
    )
    assert isinstance(stale, Fenced)
    assert isinstance(good, SessionRecord)
    assert (await store.load("stale")).tx == 0  # type: ignore[union-attr]
    assert await store.messages("good", after=0) == batch(1, 2)


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_a_burst_over_many_loop_turns_waits_for_connections(
    redis_server: RedisServer,
) -> None:
    """300 operations started in 300 loop turns while Redis is slow all succeed.

    Each loop turn's calls travel in one pipeline on one pooled connection. A
    restart drain closes sessions in batches and each detaches: while the replies
    are late, every turn used to start a pipeline of its own, redis-py's pool
    (100 connections by default since redis-py 6) ran out, and the rest failed
    at once with ``Too many connections`` (a session never detached never expires).
    The store now keeps a bounded number of pipelines in flight; later calls wait
    and share the next one.
    """
    async with sessions_on(redis_server, 300) as (store, stats, sids):
        before = await connections_received(stats)
        issued = 0

        async def one(index: int) -> object:
            nonlocal issued
            for _ in range(index):  # a loop turn of its own for each operation
                await asyncio.sleep(0)
            sid = sids[index]
            issued += 1
            if index % 3 == 0:
                return await store.load(sid)
            if index % 3 == 1:
                return await store.write(sid, 1, append=batch(1, 2))
            return await store.detach(sid, 1, expires_at=time.time() + 60)

        redis_server.signal(signal.SIGSTOP)  # every reply is late until SIGCONT
        try:
            calls = asyncio.gather(*(one(index) for index in range(300)), return_exceptions=True)
            await eventually(lambda: issued == 300, timeout=5.0)
        finally:
            redis_server.signal(signal.SIGCONT)
        results = await calls
        failed = [result for result in results if isinstance(result, BaseException)]
        assert failed == []
        assert [(await store.load(sid)).tx for sid in sids[1::3]] == [2] * 100  # type: ignore[union-attr]
        assert await stats.zcard(f"{DEFAULT_PREFIX}detached") == 100
        assert await connections_received(stats) - before <= 32


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_a_burst_of_deletes_shares_the_pipelines(redis_server: RedisServer) -> None:
    """500 sessions ending at once (1000 from every client): deleted in one round trip.

    A delete used to be a pipeline of its own on a pooled connection: with redis-py's
    default pool, more than 100 at once failed with "Too many connections"; on the
    bounded pool they queued for its 12 connections. Now they join the loop turn's
    pipeline like every other call.
    """
    async with sessions_on(redis_server, 500) as (store, stats, sids):
        for sid in sids:
            await store.detach(sid, 1, expires_at=time.time() + 60)
        await stats.config_resetstat()
        before = await connections_received(stats)
        await asyncio.gather(*(store.delete(sid) for sid in sids))
        assert await connections_received(stats) - before <= 1
        assert [await store.load(sid) for sid in sids] == [None] * 500
        assert await stats.zcard(f"{DEFAULT_PREFIX}detached") == 0
        info = await stats.info("commandstats")
        assert info["cmdstat_del"]["calls"] == 500
        clients = await stats.client_list()
        assert len(clients) <= 12 + 1  # the store's bounded pool, and this one


async def test_scripts_reloaded_after_script_flush(redis_server: RedisServer) -> None:
    """After Redis forgot the scripts (restart, SCRIPT FLUSH), writes still run, once each."""
    store = RedisStore(redis_server.url, timeout=2.0)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await admin.script_flush()
        record = await store.write(SID, 1, append=batch(1, 3))
        assert record.tx == 3
        assert await store.messages(SID, after=0) == batch(1, 3)
    finally:
        await admin.aclose()
        await store.close()


async def test_a_claim_after_script_flush_stays_in_the_attached_set(
    redis_server: RedisServer,
) -> None:
    """The attached-set entry a claim adds must land after the claim, even when re-sent.

    After SCRIPT FLUSH only the scripts answered NOSCRIPT; the SADD queued behind
    the claim had run. A renewal's prune in the gap (forced here inside the script
    load) dropped it as stale, and a node dying then left the session where no
    sweep of dead nodes' sessions would ever find it.
    """
    store = RedisStore(redis_server.url, timeout=2.0)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.detach(SID, 1, expires_at=time.time() + 60)
        await admin.script_flush()
        load = store._client.script_load

        async def prune_in_the_gap(script: Any) -> Any:
            await store._prune()
            return await load(script)

        store._client.script_load = prune_in_the_gap  # type: ignore[method-assign]
        claimed = await store.claim(SID, 1, token_hash=HASH, previous_token_hash=HASH)
        assert claimed.generation == 2
        members = await admin.smembers(store.owned_key(store.node))
        assert f"{SID} 2".encode() in members
    finally:
        await admin.aclose()
        await store.close()


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_redis_killed_during_writes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis SIGKILLed mid-stream: StoreUnavailable (chained), one log line, no crash."""
    caplog.set_level(logging.INFO, logger="tether.store")
    store = RedisStore(redis_server.url, timeout=1.0)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        tx, failures = 0, []
        for round_number in range(200):  # bounded: 200 batches
            if round_number == 50:
                redis_server.signal(signal.SIGKILL)
                await redis_server.wait(5.0)
            try:
                tx = (await store.write(SID, 1, append=batch(tx + 1, tx + 10))).tx
            except StoreUnavailable as exc:
                failures.append(exc)
        assert tx == 500
        assert len(failures) == 150
        assert all(isinstance(exc.__cause__, (RedisError, OSError)) for exc in failures)
        logged = [r.levelname for r in caplog.records if r.name == "tether.store"]
        assert logged == ["ERROR"]
    finally:
        await store.close()


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_recovery_after_restart(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After Redis restarts (empty), the store recovers: new epoch, new sessions durable."""
    caplog.set_level(logging.INFO, logger="tether.store")
    store = RedisStore(redis_server.url, timeout=1.0)
    restarted = RedisServer(port=redis_server.port)
    try:
        old_epoch = await store.epoch()
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        redis_server.signal(signal.SIGKILL)
        await redis_server.wait(5.0)
        with pytest.raises(StoreUnavailable):
            await store.load(SID)
        await restarted.start()
        assert await store.epoch() != old_epoch  # resumes now fail with epoch_mismatch
        assert await store.load(SID) is None  # the session did not survive
        with pytest.raises(UnknownSession):
            await store.write(SID, 1, append=batch(1, 1))
        await store.create("fresh", token_hash=HASH, principal=None, now=0.0)
        assert (await store.write("fresh", 1, append=batch(1, 3))).tx == 3
        logged = [r.levelname for r in caplog.records if r.name == "tether.store"]
        assert logged == ["ERROR", "WARNING"]
    finally:
        await store.close()
        await restarted.stop()


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_the_first_operation_after_a_restart_works(redis_server: RedisServer) -> None:
    """A pooled connection that Redis closed while idle is replaced, not used and failed.

    (redis-py 7+'s maintenance notifications, on by default, made its pool skip the
    check that notices such a connection: the first operation on each one failed.)
    """
    store = RedisStore(redis_server.url, timeout=2.0)
    restarted = RedisServer(port=redis_server.port)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)  # a pooled connection
        redis_server.signal(signal.SIGTERM)  # a planned restart: Redis closes its clients
        await redis_server.wait(5.0)
        await restarted.start()
        assert await store.load(SID) is None  # (no persistence: the session is gone)
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        assert (await store.write(SID, 1, append=batch(1, 2))).tx == 2
    finally:
        await store.close()
        await restarted.stop()


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_hung_redis_times_out(redis_server: RedisServer) -> None:
    """A Redis that stops answering (SIGSTOP) fails the operation within the timeout."""
    store = RedisStore(redis_server.url, timeout=0.5)
    try:
        await store.epoch()
        redis_server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await store.load(SID)
            assert time.monotonic() - started < 2.0
            assert isinstance(caught.value.__cause__, RedisError)
        finally:
            redis_server.signal(signal.SIGCONT)
    finally:
        await store.close()


async def test_flushall_changes_epoch(redis_server: RedisServer) -> None:
    """Redis flushed: the epoch is new and the sessions are gone (never partial)."""
    store = RedisStore(redis_server.url, timeout=2.0)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        before = await store.epoch()
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 3))
        await admin.flushall()
        assert await store.epoch() != before
        assert await store.load(SID) is None
        with pytest.raises(UnknownSession):
            await store.messages(SID, after=0)
    finally:
        await admin.aclose()
        await store.close()


async def test_session_resumes_on_another_node(prefix: str) -> None:
    """A session resumed through another node's Redis client: nothing lost or doubled."""

    async def node_b() -> SessionStore:
        return RedisStore(SHARED_URL, prefix=prefix, timeout=2.0)

    node_a = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0)
    got_by_client, got_by_server = await resume_after_restart(node_a, node_b, now=time.time())
    assert got_by_client == ["s1", b"s2", "s3"]
    assert got_by_server == ["c1", "c2", "c3"]


async def test_operations_once_close_began_fail_and_open_no_connection(
    redis_server: RedisServer,
) -> None:
    """close() waits for what is under way; what starts after it fails, leaving nothing open.

    Before, a write queued while the pool was closing took a new connection from it,
    which nobody closed (a ResourceWarning when collected, a socket until then).
    """
    store = RedisStore(redis_server.url, timeout=2.0)
    stats = aioredis.Redis.from_url(redis_server.url)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        under_way = asyncio.ensure_future(store.write(SID, 1, append=batch(1, 1)))
        await asyncio.sleep(0)  # queued before the close: it lands
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable):
            await store.write(SID, 1, append=batch(2, 2))
        with pytest.raises(StoreUnavailable):
            await store.load(SID)
        await closing
        assert (await under_way).tx == 1
        pool = store._client.connection_pool  # what the close left behind
        assert not pool._in_use_connections
        assert not any(c.is_connected for c in pool._available_connections)
        clients = await stats.client_list()
        assert len(clients) == 1  # only the stats connection itself
    finally:
        await stats.aclose()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": 5}, "Redis URL must be a string, not int"),
        ({"url": "redis://127.0.0.1:0/9"}, "port 0"),
        ({"url": "redis://127.0.0.1:6379/sessions"}, "the database must be a number"),
        ({"url": "redis://127.0.0.1:6379/9?db=3"}, "two database numbers"),
        ({"prefix": 5}, "prefix must be a string, not 5"),
        ({"timeout": "5"}, "timeout must be a number of seconds, not '5'"),
        ({"timeout": math.nan}, "finite number of seconds > 0, not nan"),
        ({"timeout": -1}, "finite number of seconds > 0, not -1"),
        ({"timeout": 0}, "finite number of seconds > 0, not 0"),
    ],
)
def test_bad_arguments_are_refused_at_once(arguments: dict[str, Any], message: str) -> None:
    """Refused when the store is built: before, each was taken silently (port 0 as
    6379, a named database as 0, prefix 5 as the key "5epoch") or failed at the first
    operation with a raw TypeError."""
    with pytest.raises(ConfigurationError, match=message):
        RedisStore(**arguments)


async def test_no_timeout_is_allowed() -> None:
    """None (documented: wait forever) stays accepted."""
    store = RedisStore(SHARED_URL, timeout=None)
    await store.close()
