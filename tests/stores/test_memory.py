"""The memory store passes the store conformance suite."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from tether.protocol import Hello, decode
from tether.resume import ClientEndpoint, MessageReceived, PeerAcked, ResumeConfig, ServerEndpoint
from tether.stores.base import SessionStore, StoredMessage
from tether.stores.memory import MemoryStore
from tether.tokens import hash_token, judge_resume, new_session_id, new_token

from .conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    """Conformance of :class:`MemoryStore`."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SessionStore]:
        """A fresh memory store."""
        store = MemoryStore()
        yield store
        await store.close()


async def test_two_stores_have_different_epochs() -> None:
    """Two memory stores (two processes) never share an epoch."""
    assert await MemoryStore().epoch() != await MemoryStore().epoch()


async def test_explicit_epoch() -> None:
    """An epoch given at construction is the one reported."""
    assert await MemoryStore(epoch="e1").epoch() == "e1"


async def test_resume_after_server_restart_through_the_store() -> None:
    """A server endpoint rebuilt from the store after a restart resumes without loss."""
    rng = random.Random(5)
    store = MemoryStore()
    epoch = await store.epoch()
    client = ClientEndpoint(ResumeConfig(ack_messages=1))
    client.connection_made(0.0)
    hello = decode(client.data_to_send()[0])
    assert isinstance(hello, Hello)
    sid = new_session_id(rng.randbytes)
    token, token_hash = new_token(rng.randbytes)
    record = await store.create(sid, token_hash=token_hash, principal=None, now=0.0)
    server = ServerEndpoint(sid, epoch, hold_acks=True)
    server.attach(0.0, token=token, resumed=False)
    got_by_client: list[object] = []
    got_by_server: list[object] = []

    async def server_sends(payloads: list[str]) -> list[str | bytes]:
        batch = [StoredMessage(server.send(p, 0.0), p) for p in payloads]
        await store.write(sid, record.generation, append=batch)  # write-through first
        return server.data_to_send()

    for message in [*server.data_to_send(), *await server_sends(["s1", "s2", "s3"])][:3]:
        client.receive_message(message, 0.0)  # welcome, s1, s2 arrive; s3 is lost
    for payload in ["c1", "c2"]:
        client.send(payload, 0.0)
    for message in client.data_to_send():
        server.receive_message(message, 0.0)
    acked = max(e.seq for e in server.events_received() if isinstance(e, PeerAcked))
    await store.write(sid, record.generation, acked=acked, rx=server.rx)
    got_by_client += [e.payload for e in client.events_received() if isinstance(e, MessageReceived)]
    got_by_server += ["c1", "c2"]
    await store.detach(sid, record.generation, expires_at=120.0)
    client.connection_lost(1.0)
    client.send("c3", 1.0)  # queued while the server restarts

    # A new server process: everything comes from the store.
    client.connection_made(2.0)
    hello = decode(client.data_to_send()[0])
    assert isinstance(hello, Hello)
    loaded = await store.load(sid)
    assert judge_resume(hello, loaded, epoch=epoch, principal=None, now=2.0) is None
    assert loaded is not None
    assert hello.token is not None
    token, token_hash = new_token(rng.randbytes)
    record = await store.claim(
        sid, loaded.generation, token_hash=token_hash, previous_token_hash=hash_token(hello.token)
    )
    server = ServerEndpoint(sid, epoch, hold_acks=True, tx=record.tx, rx=record.rx)
    stored = await store.messages(sid, after=record.acked)
    server.restore(record.acked, [(m.seq, m.payload) for m in stored], 2.0)
    server.attach(2.0, token=token, resumed=True, peer_rx=hello.rx)
    for message in server.data_to_send():
        client.receive_message(message, 2.0)
    for message in client.data_to_send():
        server.receive_message(message, 2.0)
    got_by_client += [e.payload for e in client.events_received() if isinstance(e, MessageReceived)]
    got_by_server += [e.payload for e in server.events_received() if isinstance(e, MessageReceived)]
    assert got_by_client == ["s1", "s2", "s3"]
    assert got_by_server == ["c1", "c2", "c3"]


async def test_memory_store_writes_without_awaiting() -> None:
    """The memory store takes write_nowait (the server's per-message fast path)."""
    store = MemoryStore()
    await store.create("s", token_hash="a" * 64, principal=None, now=0.0)
    assert store.write_nowait("s", 1, append=[StoredMessage(1, "x")], rx=2) is True
    record = await store.load("s")
    assert record is not None
    assert (record.tx, record.rx) == (1, 2)


async def test_an_idle_session_holds_no_message_storage() -> None:
    """A session with nothing unacked costs no deque (~600 B each) in the store.

    Checked on a new session and on one whose messages were all acked; the messages
    written in between are still read back until then.
    """
    store = MemoryStore()

    async def heap_per_session(count: int, *, write: bool) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(count):
                sid = f"s{write}{n}"
                await store.create(sid, token_hash="h", principal=None, now=0.0)
                if write:
                    store.write_nowait(sid, 1, append=[StoredMessage(1, "x")])
                    assert [m.seq for m in await store.messages(sid, after=0)] == [1]
                    store.write_nowait(sid, 1, acked=1)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / count

    new = await heap_per_session(300, write=False)
    emptied = await heap_per_session(300, write=True)
    # A record, its holder, the sid and a dict slot (~340 B here); an empty deque
    # alone would add ~600-760 B.
    assert max(new, emptied) < 500, (new, emptied)
    assert await store.messages("sTrue0", after=0) == []
