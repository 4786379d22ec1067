"""A tether.v1 session that survives a server restart through a durable or shared store.

The sans-I/O endpoints talk over a fake link; the server side writes through the
store exactly as the adapter will (write before send, acks and rx after
receive, detach on loss). Then the "server process" is replaced: a new store
object (the reopened SQLite file, or another node's Redis client) is the only
thing the new server endpoint knows. Used by ``test_sqlite.py`` and
``test_redis.py``; ``test_memory.py`` runs the same story within one store.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tether.protocol import Hello, decode
from tether.resume import ClientEndpoint, MessageReceived, PeerAcked, ResumeConfig, ServerEndpoint
from tether.stores.base import SessionStore, StoredMessage
from tether.tokens import hash_token, judge_resume, new_session_id, new_token


async def resume_after_restart(
    before: SessionStore, after: Callable[[], Awaitable[SessionStore]], *, now: float
) -> tuple[list[object], list[object]]:
    """Run the story; return (what the client received, what the server received).

    Args:
        before: the first server process's store; closed by the story when that
            process "exits".
        after: opens the second server process's store (closed by the story).
        now: wall-clock seconds to start from (Redis turns ``expires_at`` into a TTL).
    """
    rng = random.Random(5)
    epoch = await before.epoch()
    client = ClientEndpoint(ResumeConfig(ack_messages=1))
    client.connection_made(now)
    assert isinstance(decode(client.data_to_send()[0]), Hello)
    sid = new_session_id(rng.randbytes)
    token, token_hash = new_token(rng.randbytes)
    record = await before.create(sid, token_hash=token_hash, principal=None, now=now)
    server = ServerEndpoint(sid, epoch, hold_acks=True)
    server.attach(now, token=token, resumed=False)
    got_by_client: list[object] = []
    got_by_server: list[object] = []

    batch = [StoredMessage(server.send(p, now), p) for p in ("s1", b"s2", "s3")]
    await before.write(sid, record.generation, append=batch)  # write-through first
    for message in server.data_to_send()[:3]:
        client.receive_message(message, now)  # welcome, s1, s2 arrive; s3 is lost
    for payload in ("c1", "c2"):
        client.send(payload, now)
    for message in client.data_to_send():
        server.receive_message(message, now)
    acked = max(e.seq for e in server.events_received() if isinstance(e, PeerAcked))
    await before.write(sid, record.generation, acked=acked, rx=server.rx)
    got_by_client += [e.payload for e in client.events_received() if isinstance(e, MessageReceived)]
    got_by_server += ["c1", "c2"]
    await before.detach(sid, record.generation, expires_at=now + 120.0)
    await before.close()  # the first server process is gone
    client.connection_lost(now + 1)
    client.send("c3", now + 1)  # queued while the server restarts

    store = await after()
    try:
        client.connection_made(now + 2)
        hello = decode(client.data_to_send()[0])
        assert isinstance(hello, Hello)
        assert hello.token is not None
        loaded = await store.load(sid)
        assert loaded is not None
        verdict = judge_resume(
            hello, loaded, epoch=await store.epoch(), principal=None, now=now + 2
        )
        assert verdict is None
        token, token_hash = new_token(rng.randbytes)
        record = await store.claim(
            sid,
            loaded.generation,
            token_hash=token_hash,
            previous_token_hash=hash_token(hello.token),
        )
        server = ServerEndpoint(sid, epoch, hold_acks=True, tx=record.tx, rx=record.rx)
        stored = await store.messages(sid, after=record.acked)
        server.restore(record.acked, [(m.seq, m.payload) for m in stored], now + 2)
        server.attach(now + 2, token=token, resumed=True, peer_rx=hello.rx)
        for message in server.data_to_send():
            client.receive_message(message, now + 2)
        for message in client.data_to_send():
            server.receive_message(message, now + 2)
        got_by_client += [
            e.payload for e in client.events_received() if isinstance(e, MessageReceived)
        ]
        got_by_server += [
            e.payload for e in server.events_received() if isinstance(e, MessageReceived)
        ]
    finally:
        await store.close()
    return got_by_client, got_by_server
