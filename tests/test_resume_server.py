"""``TetherV1ServerLayer``: the server's tether.v1 glue, over an in-memory fake transport."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.earlytimers import EarlyTimerLoop
from tests.support.eventually import eventually
from tests.support.tasks import tasks_started
from tests.support.virtualtime import run_virtual
from tests.test_session import FakeTransport

import tether
from tether.asyncio import resume_server
from tether.asyncio.engine import ClosedInfo, TransportClosed
from tether.asyncio.resume_server import LAZY_ACK_WRITE_S, TetherV1ServerLayer
from tether.asyncio.session import RequestInfo, Session
from tether.exceptions import ConfigurationError, ConnectionClosedError, ProtocolError
from tether.protocol import Ack, Data, Hello, Welcome, decode, encode
from tether.ratelimit import ResumeLimit
from tether.resume import ResumeConfig
from tether.stores.base import (
    Resumption,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoredMessage,
    StoreUnavailable,
    Write,
)
from tether.stores.memory import MemoryStore

pytestmark = pytest.mark.timeout(10)

REQUEST = RequestInfo("/", remote_address=("127.0.0.1", 5555))


def v1_transport(*frames: str) -> FakeTransport:
    transport = FakeTransport()
    transport.subprotocol = "tether.v1"
    for frame in frames:
        transport.feed(frame)
    return transport


async def settle(transport: FakeTransport, count: int) -> None:
    """Wait (bounded) until ``count`` frames were sent."""
    for _ in range(200):
        if len(transport.sent) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {len(transport.sent)} frame(s) sent: {transport.sent}")


async def new_session(
    layer: TetherV1ServerLayer,
) -> tuple[Session, FakeTransport, Welcome]:
    transport = v1_transport(encode(Hello(rx=0)))
    session = await layer.open(transport, REQUEST)
    session.attach(transport)
    await settle(transport, 1)
    welcome = decode(transport.sent[0])
    assert isinstance(welcome, Welcome)
    return session, transport, welcome


async def drop(session: Session, link: FakeTransport) -> None:
    """The link dies (1006); return once the layer let the session go of it."""
    link.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)


async def resume_on(
    layer: TetherV1ServerLayer,
    welcome: Welcome,
    *,
    rx: int,
    token: str | None = None,
    attempt: int | None = None,
) -> tuple[Session, FakeTransport]:
    """A client's resume of ``welcome``'s session on ``layer``, its welcome sent."""
    hello = Hello(welcome.sid, token or welcome.token, welcome.epoch, rx=rx, attempt=attempt)
    link = v1_transport(encode(hello))
    session = await layer.open(link, REQUEST)
    session.attach(link)
    await settle(link, 1)
    return session, link


def resumed_welcome(link: FakeTransport) -> Welcome:
    """The welcome ``link`` got, checked to be a resume's."""
    welcome = decode(link.sent[0])
    assert isinstance(welcome, Welcome)
    assert welcome.resumed is True
    return welcome


async def test_plain_client_gets_a_plain_session() -> None:
    """No tether.v1 negotiated: a plain session, messages unchanged."""
    layer = TetherV1ServerLayer()
    transport = FakeTransport()
    session = await layer.open(transport, REQUEST)
    session.attach(transport)
    assert layer.received(session, transport, "raw") == ("raw",)
    await session.send("out")
    assert transport.sent == ["out"]
    assert layer.connection_lost(session, ClosedInfo(1006, "", clean=False)) is True


async def test_hello_creates_a_stored_session_and_welcomes() -> None:
    """A new hello: a session in the store, welcome with its id and the store's epoch."""
    store = MemoryStore(epoch="e1")
    layer = TetherV1ServerLayer(store=store)
    session, _, welcome = await new_session(layer)
    assert (welcome.resumed, welcome.sid, welcome.epoch) == (False, session.id, "e1")
    assert await store.load(session.id) is not None


async def test_send_is_stored_before_it_is_sent() -> None:
    """session.send returns once the message is in the store; then the frame goes out."""
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await session.send("one")
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["one"]
    await settle(transport, 2)
    assert transport.sent[1] == "d1:0:one"


async def test_first_message_must_be_hello() -> None:
    """A data frame before hello fails the handshake with 1002."""
    layer = TetherV1ServerLayer()
    with pytest.raises(ProtocolError) as caught:
        await layer.open(v1_transport("d1:0:x"), REQUEST)
    assert caught.value.close_code == 1002


async def test_resume_of_a_live_session_takes_it_over_with_4901() -> None:
    """A second connection with the session's credentials: the old one is closed with 4901."""
    layer = TetherV1ServerLayer()
    session, old, welcome = await new_session(layer)
    hello = Hello(welcome.sid, welcome.token, welcome.epoch, 0)
    new = v1_transport(encode(hello))
    resumed = await layer.open(new, REQUEST)
    assert resumed is session
    await settle(new, 1)
    again = decode(new.sent[0])
    assert isinstance(again, Welcome)
    assert again.resumed is True
    for _ in range(100):
        if old.close_calls:
            break
        await asyncio.sleep(0.005)
    assert old.close_calls == [(4901, "taken over")]


class DownStore(MemoryStore):
    """A memory store whose load always fails."""

    async def load(self, sid: str) -> SessionRecord | None:
        raise StoreUnavailable("down (test)")


async def test_store_outage_on_resume_starts_a_new_session() -> None:
    """The store cannot be read: a new session, welcome.reason store_unavailable."""
    layer = TetherV1ServerLayer(store=DownStore(epoch="e1"))
    transport = v1_transport(encode(Hello("s" * 22, "t" * 43, "e1", 0)))
    await layer.open(transport, REQUEST)
    await settle(transport, 1)
    welcome = json.loads(str(transport.sent[0]))
    assert (welcome["resumed"], welcome["reason"]) == (False, "store_unavailable")


class BusyStore(MemoryStore):
    """A memory store whose next ``busy`` resumes find it held by another writer."""

    busy = 0

    async def resume(
        self, sid: str, admit: Callable[[SessionRecord], bool], **kwargs: Any
    ) -> Resumption:
        if self.busy:
            self.busy -= 1
            raise StoreBusy("locked by another writer (test)")
        return await super().resume(sid, admit, **kwargs)


async def test_a_busy_store_on_resume_closes_with_1013_and_keeps_the_session() -> None:
    """Busy is not down: no new session (store_unavailable), 1013, and a later resume works."""
    store = BusyStore(epoch="e1")
    first = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(first)
    await session.send("kept")
    await drop(session, link)
    other = TetherV1ServerLayer(store=store)  # another process's layer: reads the store
    store.busy = 1
    hello = Hello(welcome.sid, welcome.token, welcome.epoch, rx=0)
    refused = v1_transport(encode(hello))
    with pytest.raises(ProtocolError) as caught:
        await other.open(refused, REQUEST)
    assert caught.value.close_code == 1013
    assert refused.sent == []  # no welcome: the client learns nothing but "later"
    assert list(store._held) == [welcome.sid]  # no new session was made for it
    resumed, again = await resume_on(other, welcome, rx=0)
    assert resumed.id == welcome.sid
    assert resumed_welcome(again).sid == welcome.sid
    await settle(again, 2)
    replayed = decode(again.sent[1])
    assert isinstance(replayed, Data)
    assert (replayed.seq, replayed.payload) == (1, "kept")


async def test_principal_hook_binds_the_session() -> None:
    """A resume by another principal is refused as token_invalid."""
    who: dict[str, Any] = {"id": "alice"}
    layer = TetherV1ServerLayer(principal=lambda request: who["id"])
    _, _, welcome = await new_session(layer)
    who["id"] = "mallory"
    transport = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, 0)))
    await layer.open(transport, REQUEST)
    await settle(transport, 1)
    refused = decode(transport.sent[0])
    assert isinstance(refused, Welcome)
    assert (refused.resumed, refused.reason) == (False, "token_invalid")


def test_bad_store_is_a_configuration_error() -> None:
    """store must be 'memory', a URL or a SessionStore."""
    with pytest.raises(ConfigurationError):
        TetherV1ServerLayer(store=42)  # type: ignore[arg-type]


async def test_memory_store_send_is_stored_and_sent_before_it_returns() -> None:
    """send() returns with the message stored and its frame sent, in order (memory store)."""
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await eventually(lambda: len(transport.sent) == 1, 2.0)
    await session.send("one")
    await session.send(b"two")
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["one", b"two"]
    assert transport.sent[1:] == ["d1:0:one", encode(Data(2, 0, b"two"))]


def test_reply_carries_the_ack_of_the_request() -> None:
    """An echo: the reply acks the request; no standalone ack, even with ack_messages=1."""
    run_virtual(_reply_carries_the_ack_of_the_request())


async def _reply_carries_the_ack_of_the_request() -> None:
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(ack_messages=1, ack_delay=0.05))
    session, transport, _ = await new_session(layer)
    transport.feed("d1:0:hi")
    assert await session.recv() == "hi"
    await session.send("re")
    assert transport.sent[1:] == ["d1:1:re"]
    assert (await store.load(session.id)).rx == 1  # type: ignore[union-attr]
    await asyncio.sleep(1.0)  # virtual time: past every ack trigger (ack_delay 0.05)
    assert transport.sent[1:] == ["d1:1:re"]


def test_taken_message_without_reply_is_committed_then_acked() -> None:
    """No reply: rx is committed by the layer's timer and acked after ack_delay."""
    run_virtual(_taken_message_without_reply_is_committed_then_acked())


async def _taken_message_without_reply_is_committed_then_acked() -> None:
    loop = asyncio.get_running_loop()
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(ack_delay=0.2))
    session, transport, _ = await new_session(layer)
    transport.feed("d1:0:x")
    assert await session.recv() == "x"
    taken_at = loop.time()
    await asyncio.sleep(0.15)  # virtual time: before the ack delay, no ack yet
    assert len(transport.sent) == 1
    await eventually(lambda: len(transport.sent) == 2, 2.0)
    assert 0.2 <= loop.time() - taken_at <= 0.25
    assert decode(transport.sent[1]) == Ack(1)
    assert (await store.load(session.id)).rx == 1  # type: ignore[union-attr]


def test_ack_count_reached_commits_and_acks_at_once() -> None:
    """The count trigger does not wait for the ack delay: commit and ack at the end of the turn."""
    run_virtual(_ack_count_reached_commits_and_acks_at_once())


async def _ack_count_reached_commits_and_acks_at_once() -> None:
    store = MemoryStore()
    config = ResumeConfig(ack_messages=2, ack_delay=30.0)
    layer = TetherV1ServerLayer(store=store, config=config)
    session, transport, _ = await new_session(layer)
    transport.feed("d1:0:a")
    transport.feed("d2:0:b")
    assert [await session.recv(), await session.recv()] == ["a", "b"]
    await eventually(lambda: len(transport.sent) == 2, timeout=1.0)  # virtual: far below 30 s
    assert decode(transport.sent[1]) == Ack(2)
    assert (await store.load(session.id)).rx == 2  # type: ignore[union-attr]


async def test_fenced_inline_write_ends_the_session_with_4901() -> None:
    """Another node claimed the session: the next send is fenced, nothing more goes out."""
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await eventually(lambda: len(transport.sent) == 1, 2.0)
    await store.claim(session.id, 1, token_hash="b" * 64, previous_token_hash="c" * 64)
    with pytest.raises(ConnectionClosedError) as caught:  # (as from a store with I/O)
        await session.send("late")
    assert caught.value.code == 4901
    assert transport.sent[1:] == []
    assert session.closed is not None
    assert session.closed.code == 4901
    await eventually(lambda: transport.close_calls == [(4901, "taken over")], 2.0)
    assert await store.messages(session.id, after=0) == []


class Outage(MemoryStore):
    """A memory store that fails every operation it is asked while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed = 0

    def _check(self) -> None:
        if self.down:
            self.failed += 1
            raise StoreUnavailable("down (test)")

    def write_nowait(self, *args: Any, **kwargs: Any) -> bool:
        self._check()
        return super().write_nowait(*args, **kwargs)

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self._check()
        return await super().write(*args, **kwargs)

    async def load(self, sid: str) -> SessionRecord | None:
        self._check()
        return await super().load(sid)

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        self._check()
        await super().detach(sid, generation, expires_at=expires_at)


class OutageIO(Outage):
    """The same with I/O: the layer's writer and write_many, as for SQLite or Redis."""

    write_nowait = SessionStore.write_nowait


@pytest.mark.parametrize("store_class", [Outage, OutageIO], ids=["in-process", "io"])
def test_a_failed_write_holds_its_frames_until_a_retry_lands(store_class: type[Outage]) -> None:
    """The store fails: nothing it lacks goes out; retried, it lands and the frame follows.

    (Before, the session went on "non-durable": its frames went out while the store
    kept a record behind them, which a resume on another node then replayed from.)
    """
    run_virtual(_a_failed_write_holds_its_frames_until_a_retry_lands(store_class()))


async def _a_failed_write_holds_its_frames_until_a_retry_lands(store: Outage) -> None:
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    store.down = True
    sending = asyncio.ensure_future(session.send("a"))
    await asyncio.sleep(3.0)  # (virtual) retries after 0.05, 0.1, 0.2, ... 2 s at most
    assert 4 <= store.failed <= 8
    assert transport.sent[1:] == []
    assert not sending.done()
    store.down = False
    await asyncio.wait_for(sending, 3.0)
    await settle(transport, 2)
    assert transport.sent[1:] == ["d1:0:a"]
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["a"]
    await session.send("b")  # and on as before: durable, in order
    await settle(transport, 3)
    assert transport.sent[1:] == ["d1:0:a", "d2:0:b"]
    assert layer._states[session].durable
    await layer.stop()


def test_a_store_down_for_store_timeout_ends_the_session_with_1011() -> None:
    """Writes failing for store_timeout: 1011, and the waiting sender learns it was not sent."""
    run_virtual(_a_store_down_for_store_timeout_ends_the_session_with_1011())


async def _a_store_down_for_store_timeout_ends_the_session_with_1011() -> None:
    store = OutageIO()
    layer = TetherV1ServerLayer(store=store, store_timeout=5.0)
    session, transport, _ = await new_session(layer)
    store.down = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionClosedError) as caught:
        await asyncio.wait_for(session.send("a"), 30.0)
    assert caught.value.code == 1011
    assert 5.0 <= loop.time() - started <= 7.5  # (retries 2 s apart at most)
    await eventually(lambda: transport.close_calls == [(1011, "session store unavailable")], 2.0)
    assert transport.sent[1:] == []
    assert session.closed is not None
    assert session.closed.code == 1011
    await layer.stop()


def test_a_session_ended_by_the_store_timeout_gets_its_expiry_once_the_store_is_back() -> None:
    """Ended with 1011 and kept for its client: the record must not stay attached for ever.

    (Before, it stayed attached to this live process with no expiry: neither the
    expiry nor the sweep of dead processes' sessions ever removed it.)
    """
    run_virtual(_a_session_ended_by_the_store_timeout_gets_its_expiry())


async def _a_session_ended_by_the_store_timeout_gets_its_expiry() -> None:
    store = OutageIO()
    layer = TetherV1ServerLayer(store=store, store_timeout=5.0, resume_window=60.0)
    await layer.start()  # the sweep: every 15 s (a quarter of the window)
    session, _, _ = await new_session(layer)
    store.down = True
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(session.send("a"), 30.0)
    await asyncio.sleep(20.0)  # a sweep while the store is still down: the detach waits
    store.down = False
    record = await store.load(session.id)
    assert record is not None
    assert record.expires_at is None  # still attached to this process
    before = time.time()
    await asyncio.sleep(16.0)  # the next sweep detaches it
    record = await store.load(session.id)
    assert record is not None
    assert record.expires_at is not None
    assert before + 60.0 - 30.0 <= record.expires_at <= time.time() + 60.0
    await layer.stop()


def test_sessions_ending_together_are_detached_once_each() -> None:
    """K sessions given up by the store timeout at once: K detaches, not K x K.

    (Before, each ended session started a sweep of every session left attached,
    all of them before the first detach returned: 90,000 detaches for 300.)
    """
    run_virtual(_sessions_ending_together_are_detached_once_each(100))


async def _sessions_ending_together_are_detached_once_each(count: int) -> None:
    class Counting(OutageIO):
        detaches = 0

        async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
            self.detaches += 1
            await asyncio.sleep(0.001)  # a round trip
            await MemoryStore.detach(self, sid, generation, expires_at=expires_at)

    store = Counting()
    layer = TetherV1ServerLayer(store=store, store_timeout=5.0, resume_window=60.0)
    sessions = [(await new_session(layer))[0] for _ in range(count)]
    store.down = True  # writes fail; detaches go through
    await asyncio.gather(*(s.send("a") for s in sessions), return_exceptions=True)
    await asyncio.sleep(5.0)
    assert store.detaches == count
    assert layer._left_attached == {}
    await layer.stop()


@pytest.mark.parametrize("send_timeout", [0.5, 0.0])
def test_a_send_waiting_for_room_as_a_drain_closes_fails_with_the_drains_code(
    send_timeout: float,
) -> None:
    """A full buffer, a send during the drain's close: 1012, and the session stays
    resumable, whatever send_timeout (0 included: before, it took the overflow path,
    closed with 4202 over the goaway and abandoned the session)."""
    run_virtual(_a_send_waiting_for_room_as_a_drain_closes(send_timeout))


async def _a_send_waiting_for_room_as_a_drain_closes(send_timeout: float) -> None:
    class SlowClose(FakeTransport):
        async def close(self, code: int, reason: str = "") -> ClosedInfo:
            await asyncio.sleep(1.0)
            return await super().close(code, reason)

    store = MemoryStore()
    layer = TetherV1ServerLayer(
        store=store, send_timeout=send_timeout, config=ResumeConfig(max_messages=2)
    )
    transport = SlowClose()
    transport.subprotocol = "tether.v1"
    transport.feed(encode(Hello(rx=0)))
    session = await layer.open(transport, REQUEST)
    session.attach(transport)
    await settle(transport, 1)
    await session.send("a")
    await session.send("b")  # the buffer is full (nothing acknowledged)
    draining = asyncio.ensure_future(layer.drain(session, transport, 1012, "restart"))
    await asyncio.sleep(0.1)  # the goaway is out, the close under way
    with pytest.raises(ConnectionClosedError) as caught:
        await session.send("c")
    assert caught.value.code == 1012
    await draining
    assert transport.close_calls == [(1012, "restart")]
    record = await store.load(session.id)
    assert record is not None
    assert record.lost is None
    await layer.stop()


def test_store_timeout_must_be_positive() -> None:
    """store_timeout=0 would end a session at its first failed write: refused."""
    with pytest.raises(ConfigurationError):
        TetherV1ServerLayer(store_timeout=0)


def test_a_resume_elsewhere_after_a_failed_write_replays_every_message() -> None:
    """Node A's store fails a write once; the client comes back to node B: nothing lost.

    The client got only m1 before its connection died; m2 and m3 were sent after the
    failed write. B must replay m2 and m3 and number its own message 4.
    """
    run_virtual(_a_resume_elsewhere_after_a_failed_write_replays_every_message())


async def _a_resume_elsewhere_after_a_failed_write_replays_every_message() -> None:
    class Blip(MemoryStore):
        fail_next = False

        def write_nowait(self, *args: Any, **kwargs: Any) -> bool:
            if self.fail_next:
                self.fail_next = False
                raise StoreUnavailable("blip (test)")
            return super().write_nowait(*args, **kwargs)

    store = Blip()
    node_a, node_b = TetherV1ServerLayer(store=store), TetherV1ServerLayer(store=store)
    session, transport, welcome = await new_session(node_a)
    await session.send("m1")
    store.fail_next = True
    await session.send("m2")
    await session.send("m3")
    transport.peer_closed(ClosedInfo(1006, "", clean=False))
    await asyncio.sleep(1.0)
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    resumed = await node_b.open(again, REQUEST)
    resumed.attach(again)
    await resumed.send("n1")
    await settle(again, 4)
    assert again.sent[1:] == ["d2:0:m2", "d3:0:m3", "d4:0:n1"]
    await node_a.stop()
    await node_b.stop()


def test_a_write_whose_answer_was_lost_is_not_applied_twice() -> None:
    """The store wrote the batch but the caller got an error: the retry reads, then writes."""
    run_virtual(_a_write_whose_answer_was_lost_is_not_applied_twice())


async def _a_write_whose_answer_was_lost_is_not_applied_twice() -> None:
    class LostReply(MemoryStore):
        write_nowait = SessionStore.write_nowait  # (the layer's writer and write_many)
        lose_next = False

        async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
            record = await super().write(*args, **kwargs)
            if self.lose_next:
                self.lose_next = False
                raise StoreUnavailable("reply lost (test)")
            return record

    store = LostReply()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    store.lose_next = True
    await asyncio.wait_for(session.send("a"), 3.0)
    await session.send("b")
    await settle(transport, 3)
    assert transport.sent[1:] == ["d1:0:a", "d2:0:b"]
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["a", "b"]
    await layer.stop()


async def test_a_session_the_store_no_longer_knows_goes_on_alone() -> None:
    """The store lost the session (emptied): no record is left to lie; it goes on here."""
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await store.delete(session.id)
    await session.send("a")
    await settle(transport, 2)
    assert transport.sent[1:] == ["d1:0:a"]
    assert not layer._states[session].durable
    await layer.stop()


class CountingStore(MemoryStore):
    """A store that must be awaited (like SQLite or Redis); counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[dict[str, Any]] = []
        self.detached = 0

    # The base class's: never writes at once, so the layer awaits write() (SQLite, Redis).
    write_nowait = SessionStore.write_nowait

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self.writes.append(kwargs)
        return await super().write(*args, **kwargs)

    async def detach(self, *args: Any, **kwargs: Any) -> None:
        self.detached += 1
        await super().detach(*args, **kwargs)


class SlowClaimStore(MemoryStore):
    """A store whose claim answers 50 ms after it was applied (the answer's way back)."""

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        record = await super().claim(*args, **kwargs)
        await asyncio.sleep(0.05)
        return record


class SlowStore(CountingStore):
    """An I/O-like store whose writes take a little while."""

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        await asyncio.sleep(0.01)
        return await super().write(*args, **kwargs)


async def test_awaited_store_batches_concurrent_sends_in_order() -> None:
    """A store that needs I/O: the session's task writes; concurrent sends keep their order."""
    store = SlowStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await asyncio.gather(*(session.send(f"m{n}") for n in range(1, 21)))
    stored = await store.messages(session.id, after=0)
    assert [m.payload for m in stored] == [f"m{n}" for n in range(1, 21)]
    await eventually(lambda: len(transport.sent) == 21, 2.0)
    assert transport.sent[1:] == [f"d{n}:0:m{n}" for n in range(1, 21)]


# -- the layer's writer: one store call per loop turn for every session's batch -------------------


class GatedStore(CountingStore):
    """An I/O-like store whose write_many waits at a gate (open unless a test closes it).

    Records each call's writes and the session tasks (``_run``) running at the call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Write]] = []
        self.tasks_at_call: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def write_many(self, writes: Any) -> list[BaseException | None]:
        self.calls.append(list(writes))
        running = [t for t in asyncio.all_tasks() if "._run" in t.get_coro().__qualname__]
        self.tasks_at_call.append(len(running))
        self.entered.set()
        await self.gate.wait()
        return await super().write_many(writes)


async def test_sessions_sending_in_one_turn_share_one_store_call() -> None:
    """20 sessions send in one turn: one write_many of 20 batches, no task per session."""
    store = GatedStore()
    layer = TetherV1ServerLayer(store=store)
    opened = [await new_session(layer) for _ in range(20)]
    await eventually(lambda: all(state.task is None for state in layer._states.values()), 2.0)
    store.calls.clear()
    await asyncio.gather(*(session.send(f"m{n}") for n, (session, _, _) in enumerate(opened)))
    assert [len(call) for call in store.calls] == [20]
    assert store.tasks_at_call[-1] == 0
    assert {w.sid for w in store.calls[0]} == {session.id for session, _, _ in opened}
    for n, (session, transport, _) in enumerate(opened):
        assert [m.payload for m in await store.messages(session.id, after=0)] == [f"m{n}"]
        await settle(transport, 2)
        assert transport.sent[1] == f"d1:0:m{n}"


@dataclass
class HeldWrite:
    """A session whose ``send("one")`` the writer handed to the store, held at its gate."""

    store: GatedStore
    layer: TetherV1ServerLayer
    session: Session
    transport: FakeTransport
    welcome: Welcome
    sending: asyncio.Future[None]


async def held_write(store: GatedStore | None = None) -> HeldWrite:
    store = store if store is not None else GatedStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, welcome = await new_session(layer)
    store.gate.clear()
    store.entered.clear()
    sending = asyncio.ensure_future(session.send("one"))
    await store.entered.wait()
    return HeldWrite(store, layer, session, transport, welcome, sending)


def test_a_frame_leaves_only_after_the_writer_stored_it() -> None:
    run_virtual(_a_frame_leaves_only_after_the_writer_stored_it())


async def _a_frame_leaves_only_after_the_writer_stored_it() -> None:
    """Write-through: while the store holds the batch, send() waits and no frame goes out."""
    held = await held_write()
    await asyncio.sleep(0.02)
    assert (len(held.transport.sent), held.sending.done()) == (1, False)
    held.store.gate.set()
    await held.sending
    await settle(held.transport, 2)
    assert held.transport.sent[1] == "d1:0:one"


def test_a_resume_in_this_process_waits_for_the_write_in_flight() -> None:
    run_virtual(_a_resume_in_this_process_waits_for_the_write_in_flight())


async def _a_resume_in_this_process_waits_for_the_write_in_flight() -> None:
    """A claim while the writer holds a batch of the old generation waits for it to land.

    Claimed first, the write would be fenced and the resumed session ended as taken over.
    """
    held = await held_write()
    store, session, welcome = held.store, held.session, held.welcome
    new = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, 0)))
    opening = asyncio.ensure_future(held.layer.open(new, REQUEST))
    await asyncio.sleep(0.02)
    record = await store.load(session.id)
    assert record is not None
    assert (opening.done(), record.generation) == (False, 1)
    store.gate.set()
    assert await opening is session
    await held.sending
    assert session.closed is None
    record = await store.load(session.id)
    assert record is not None
    assert (record.generation, record.tx) == (2, 1)
    session.attach(new)
    await settle(new, 2)
    assert new.sent[1] == "d1:0:one"  # replayed on the resumed connection


def test_stop_waits_for_the_writes_in_flight() -> None:
    run_virtual(_stop_waits_for_the_writes_in_flight())


async def _stop_waits_for_the_writes_in_flight() -> None:
    """stop() lets a write the store is performing finish before it returns (and closes)."""
    held = await held_write()
    asyncio.get_running_loop().call_later(0.05, held.store.gate.set)
    await held.layer.stop()
    assert [m.payload for m in await held.store.messages(held.session.id, after=0)] == ["one"]
    await held.sending


async def test_a_fenced_batch_ends_its_session_only() -> None:
    """Two sessions in one store call, one claimed elsewhere: 4901 for it, the other goes on."""
    store = GatedStore()
    layer = TetherV1ServerLayer(store=store)
    stale, _, _ = await new_session(layer)
    good, good_transport, _ = await new_session(layer)
    record = await store.load(stale.id)
    assert record is not None
    await store.claim(stale.id, record.generation, token_hash="x" * 64, previous_token_hash="y")
    store.calls.clear()
    await asyncio.gather(stale.send("a"), good.send("b"), return_exceptions=True)
    assert [len(call) for call in store.calls] == [2]
    await eventually(lambda: stale.closed is not None, 2.0)
    assert stale.closed is not None
    assert stale.closed.code == 4901
    assert good.closed is None
    assert [m.payload for m in await store.messages(good.id, after=0)] == ["b"]
    await settle(good_transport, 2)
    assert good_transport.sent[1] == "d1:0:b"


async def test_connections_lost_in_one_turn_detach_in_one_store_call() -> None:
    """20 connections end at once: their detaches go in one write_many, no task per session."""
    store = GatedStore()
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(resume_window=30.0))
    opened = [await new_session(layer) for _ in range(20)]
    await eventually(lambda: all(state.task is None for state in layer._states.values()), 2.0)
    store.calls.clear()
    for _, transport, _ in opened:
        transport.abort()
    await eventually(lambda: store.detached == 20, 2.0)
    assert [len(call) for call in store.calls] == [20]
    assert store.tasks_at_call == [0]
    now = time.time()
    for session, _, _ in opened:
        record = await store.load(session.id)
        assert record is not None
        assert record.expires_at == pytest.approx(now + 30.0, abs=5.0)


class FailingFirstDetach(GatedStore):
    """The first store call that detaches fails (a backend blip); the rest work."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def write_many(self, writes: Any) -> list[BaseException | None]:
        if not self.failed and any(w.detach_at is not None for w in writes):
            self.failed = True
            self.calls.append(list(writes))
            return [StoreUnavailable("blip") for _ in writes]
        return await super().write_many(writes)


async def test_a_failed_detach_keeps_the_session_durable_and_is_written_at_its_end() -> None:
    """A detach the store refused: the session stays durable; the handler's return retries it.

    (Made non-durable, the session would never be detached: its record would never expire.)
    """
    store = FailingFirstDetach()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    state = layer._states[session]
    transport.abort()
    await eventually(lambda: store.failed and not state.writing, 2.0)
    assert state.durable
    await layer.finish(session)
    record = await store.load(session.id)
    assert record is not None
    assert record.expires_at is not None


async def test_a_resume_refused_after_its_claim_detaches_the_session_again() -> None:
    """The claim attached the session in the store, then the attach refused the hello.

    The session must be detached again (else its record never expires), although a
    detach of the previous connection was written already.
    """
    store = CountingStore()
    layer = TetherV1ServerLayer(store=store)
    session, old, welcome = await new_session(layer)
    state = layer._states[session]
    session.read_ahead(keep=True)
    await session.send("m1")
    await session.send("m2")
    await eventually(lambda: old.sent[-1:] == ["d2:0:m2"], 2.0)
    old.feed(encode(Ack(2)))  # the lazy ack: not written when the connection ends
    await eventually(lambda: state.endpoint.peer_acked == 2, 2.0)
    old.abort()
    await eventually(lambda: store.detached == 1 and not state.writing, 2.0)
    record = await store.load(session.id)
    assert record is not None
    assert (record.acked, record.expires_at is not None) == (0, True)
    # hello.rx = 1: the store (acked 0) accepts it, the session (acked 2) does not.
    new = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    with pytest.raises(ProtocolError):
        await layer.open(new, REQUEST)
    await layer.finish(session)
    record = await store.load(session.id)
    assert record is not None
    assert (record.generation, record.expires_at is not None) == (2, True)


def instant_writer(transport: Any) -> Any:
    """Like the engine's ``write_now`` on a socket with room: the frame is sent at once."""

    def write(message: Any) -> bool:
        transport.sent.append(message)
        return True

    return write


@pytest.fixture
def instant(monkeypatch: pytest.MonkeyPatch) -> tuple[GatedStore, TetherV1ServerLayer]:
    """A layer on a GatedStore whose transports take frames at once (as the engine's do)."""
    monkeypatch.setattr(resume_server, "fast_writer", instant_writer)
    store = GatedStore()
    return store, TetherV1ServerLayer(store=store)


def test_the_writers_answer_sends_the_frames_without_a_task(
    instant: tuple[GatedStore, TetherV1ServerLayer],
) -> None:
    run_virtual(_the_writers_answer_sends_the_frames_without_a_task(instant))


async def _the_writers_answer_sends_the_frames_without_a_task(
    instant: tuple[GatedStore, TetherV1ServerLayer],
) -> None:
    """With a transport that takes frames at once, no session task runs at all; order holds."""
    store, layer = instant
    opened = [await new_session(layer) for _ in range(5)]
    await eventually(lambda: all(state.task is None for state in layer._states.values()), 2.0)
    with tasks_started() as started:
        store.gate.clear()
        sends = [
            asyncio.ensure_future(session.send(f"m{k}")) for k in (1, 2) for session, _, _ in opened
        ]
        await store.entered.wait()
        await asyncio.sleep(0.02)
        assert [len(transport.sent) for _, transport, _ in opened] == [1] * 5  # welcome only
        store.gate.set()
        await asyncio.gather(*sends)
        await asyncio.gather(*(session.send("m3") for session, _, _ in opened))
    assert not [name for name in started if name.endswith("._run")]
    for _, transport, _ in opened:
        assert transport.sent[1:] == ["d1:0:m1", "d2:0:m2", "d3:0:m3"]


def test_a_handler_returning_during_the_detach_waits_without_a_task(
    instant: tuple[GatedStore, TetherV1ServerLayer],
) -> None:
    run_virtual(_a_handler_returning_during_the_detach_waits_without_a_task(instant))


async def _a_handler_returning_during_the_detach_waits_without_a_task(
    instant: tuple[GatedStore, TetherV1ServerLayer],
) -> None:
    """finish() while the writer holds the detach: it waits for it; no second detach, no task.

    (The handler's return wrote the detach again, a store write per session at every
    drain, and restarted the expiry clock, which counts from the disconnect.)
    """
    store, layer = instant
    session, transport, _ = await new_session(layer)
    state = layer._states[session]
    await eventually(lambda: state.task is None, 2.0)
    store.gate.clear()
    store.entered.clear()
    transport.abort()
    await store.entered.wait()  # the detach is with the store
    with tasks_started() as started:
        finishing = asyncio.ensure_future(layer.finish(session))
        await asyncio.sleep(0.02)
        assert not finishing.done()
        store.gate.set()
        await finishing
    assert store.detached == 1
    assert not [name for name in started if name.endswith("._run")]


async def test_the_welcome_and_the_replay_go_out_without_a_task(
    instant: tuple[GatedStore, TetherV1ServerLayer],
) -> None:
    """A transport that takes frames at once: open() sends them itself, in order, no task."""
    store, layer = instant
    with tasks_started() as started:
        session, old, welcome = await new_session(layer)
        await session.send("m1")
        await session.send("m2")
        old.abort()
        state = layer._states[session]
        await eventually(lambda: store.detached == 1 and not state.writing, 2.0)
        new = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
        assert await layer.open(new, REQUEST) is session
        assert new.sent[1:] == ["d2:0:m2"]  # before open() returned
    resumed = decode(new.sent[0])
    assert isinstance(resumed, Welcome)
    assert resumed.resumed is True
    assert not [name for name in started if name.endswith("._run")]


def test_a_write_answered_after_finish_arms_no_alarm() -> None:
    run_virtual(_write_answered_after_finish())


async def _write_answered_after_finish() -> None:
    """finish() gave up on a write; its late answer must not arm the forgotten session.

    An alarm set then would expire the session later and delete it from the store,
    although a client may have resumed it meanwhile.
    """
    store = GatedStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await session.send("m1")  # unacked: the alarm waits for its stall deadline
    state = layer._states[session]
    assert state.alarm is not None
    store.gate.clear()
    store.entered.clear()
    transport.feed("d1:0:hi")
    assert await session.recv() == "hi"  # taken: its rx goes to the writer
    await store.entered.wait()
    await layer.finish(session)  # its settle gives up after 2 s (virtual)
    assert (state.alarm, state.writing) == (None, True)
    store.gate.set()
    await eventually(lambda: not state.writing, 2.0)
    assert (state.alarm, state.task) == (None, None)


def test_stop_writes_the_batches_of_the_turn_first() -> None:
    run_virtual(_stop_writes_the_batches_of_the_turn_first())


async def _stop_writes_the_batches_of_the_turn_first() -> None:
    """stop() in the turn of a send: that batch is written before stop() returns."""
    store = GatedStore()
    layer = TetherV1ServerLayer(store=store)
    session, _, _ = await new_session(layer)
    store.gate.clear()
    sending = asyncio.ensure_future(session.send("one"))
    await asyncio.sleep(0)  # send() ran: its batch waits for the end of the turn
    assert (layer._write_scheduled, layer._writers) == (True, set())
    asyncio.get_running_loop().call_later(0.05, store.gate.set)
    await layer.stop()
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["one"]
    await sending


def test_stop_ends_the_sessions_of_a_write_that_never_returns() -> None:
    run_virtual(_stop_gives_up_on_a_hung_write())


async def _stop_gives_up_on_a_hung_write() -> None:
    """A store that never answers: stop() gives up after 5 s; the session ends with 1011."""
    held = await held_write()
    started = asyncio.get_running_loop().time()
    await held.layer.stop()
    assert asyncio.get_running_loop().time() - started == pytest.approx(5.0, abs=0.1)
    assert held.session.closed is not None
    assert held.session.closed.code == 1011
    with pytest.raises(ConnectionClosedError):
        await held.sending  # not stored: the sender is told


def test_stop_ends_even_if_a_hung_write_swallows_its_cancellation() -> None:
    """The write that hung is cancelled after 5 s; a store client that swallows that
    (redis-py under a stalled Redis did) kept stop() waiting without bound before."""
    run_virtual(_stop_ends_even_if_a_hung_write_swallows_its_cancellation())


async def _stop_ends_even_if_a_hung_write_swallows_its_cancellation() -> None:
    class Swallowing(GatedStore):
        async def write_many(self, writes: Any) -> list[BaseException | None]:
            while True:
                try:
                    return await super().write_many(writes)
                except asyncio.CancelledError:
                    continue  # (the bug being survived: the cancellation is lost)

    held = await held_write(Swallowing())
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(held.layer.stop(), 60.0)
    assert loop.time() - began == pytest.approx(10.0, abs=0.5)  # 5 s, then 5 s more
    held.store.gate.set()  # (let the swallowing task end with the test)
    await asyncio.wait([held.sending], timeout=1.0)


def test_a_connection_lost_during_a_write_detaches_after_it() -> None:
    run_virtual(_a_connection_lost_during_a_write_detaches_after_it())


async def _a_connection_lost_during_a_write_detaches_after_it() -> None:
    """The connection ends while its batch is with the store: the detach follows the write."""
    held = await held_write()
    store = held.store
    state = held.layer._states[held.session]
    held.transport.abort()
    await eventually(lambda: state.transport is None, 2.0)
    await asyncio.sleep(0.02)
    assert store.detached == 0
    store.gate.set()
    await held.sending
    await eventually(lambda: store.detached == 1, 2.0)
    record = await store.load(held.session.id)
    assert record is not None
    assert (record.tx, record.expires_at is not None) == (1, True)


class FailingGroups(GatedStore):
    """Every write_many fails as a whole (a backend gone), and so does every write."""

    async def write_many(self, writes: Any) -> list[BaseException | None]:
        self.calls.append(list(writes))
        raise StoreUnavailable("down")

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        raise StoreUnavailable("down")


def test_a_failed_store_call_holds_the_sessions_frames() -> None:
    """The writer's call fails: the session stays durable and waits; its frame is not sent."""
    run_virtual(_a_failed_store_call_holds_the_sessions_frames())


async def _a_failed_store_call_holds_the_sessions_frames() -> None:
    store = FailingGroups()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    sending = asyncio.ensure_future(session.send("one"))
    await eventually(lambda: bool(store.calls), 2.0)
    await asyncio.sleep(1.0)  # (virtual) several retries, all failed
    state = layer._states[session]
    assert (state.durable, session.closed, sending.done()) == (True, None, False)
    assert transport.sent[1:] == []
    sending.cancel()
    await layer.stop()


# -- the session's task and timer exist only while there is work ---------------------------------


async def test_an_idle_session_holds_no_task_and_no_timer() -> None:
    """After the welcome, with nothing unacked or due, the layer keeps no task or timer for it."""
    layer = TetherV1ServerLayer()
    session, _, _ = await new_session(layer)
    state = layer._states[session]
    await eventually(lambda: state.task is None, 2.0)
    assert state.alarm is None
    assert (state.outq, state.delivered, state.progress) == (None, None, None)


def test_unacked_message_on_an_open_connection_closes_it_after_the_window() -> None:
    """A first unacked send arms the timer at its stall deadline: 4202 after the window."""
    run_virtual(_unacked_message_closes_after_the_window())


async def _unacked_message_closes_after_the_window() -> None:
    loop = asyncio.get_running_loop()
    layer = TetherV1ServerLayer(config=ResumeConfig(resume_window=5.0))
    session, transport, _ = await new_session(layer)
    await eventually(lambda: layer._states[session].task is None, 2.0)
    sent_at = loop.time()
    await session.send("never acked")
    await eventually(lambda: bool(transport.close_calls), timeout=10.0)  # virtual time
    assert transport.close_calls[0][0] == 4202
    assert 5.0 <= loop.time() - sent_at <= 5.1


def test_detached_session_expires_after_the_window() -> None:
    """Connection lost and no resume: the session ends (expired) one window later."""
    run_virtual(_detached_session_expires())


async def _detached_session_expires() -> None:
    loop = asyncio.get_running_loop()
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(resume_window=5.0))
    session, transport, _ = await new_session(layer)
    transport.abort()
    lost_at = loop.time()
    await eventually(lambda: session.transport is None, 2.0)
    assert session.closed is None
    await eventually(lambda: session.closed is not None, timeout=10.0)  # virtual time
    assert session.closed is not None
    assert session.closed.reason == "session expired"
    assert 5.0 <= loop.time() - lost_at <= 5.1


# -- reading on demand: the handler's recv() reads; a reader task only while needed --------------


async def attached(
    layer: TetherV1ServerLayer, *frames: str
) -> tuple[Session, FakeTransport, asyncio.Future[ClosedInfo]]:
    """A new session whose welcome went out; ``frames`` fed after the hello."""
    transport = v1_transport(encode(Hello(rx=0)), *frames)
    session = await layer.open(transport, REQUEST)
    ended = session.attach(transport)
    await eventually(lambda: len(transport.sent) >= 1 and layer._states[session].task is None, 2.0)
    return session, transport, ended


async def test_recv_reads_the_connection_in_the_handlers_task() -> None:
    """No task reads for a handler that reads: recv() takes the frame off the connection itself."""
    layer = TetherV1ServerLayer()
    before = len(asyncio.all_tasks())
    session, transport, ended = await attached(layer)
    assert len(asyncio.all_tasks()) == before  # no pump, no session task
    transport.feed("d1:0:hi")
    transport.feed("d2:0:ho")
    assert [await session.recv(), await session.recv()] == ["hi", "ho"]
    assert session._reader_task is None
    assert len(asyncio.all_tasks()) == before
    assert not ended.done()


async def test_send_only_handler_reads_acks_and_frees_its_replay_buffer() -> None:
    """A handler that never calls recv(): the client's acks are still read and applied."""
    layer = TetherV1ServerLayer()
    session, transport, _ = await attached(layer)
    endpoint = layer._states[session].endpoint
    count = 20
    for n in range(1, count + 1):
        await session.send(f"m{n}")
        transport.feed(encode(Ack(n)))
    await eventually(lambda: endpoint.peer_acked == count, 2.0)
    assert len(endpoint.buffer) == 0
    assert session._reader_task is not None  # kept for good: the handler does not read


async def test_reader_task_hands_the_reading_back_to_recv() -> None:
    """A reader started while the handler did not read stops once recv() waits; recv() reads on."""
    layer = TetherV1ServerLayer()
    session, transport, _ = await attached(layer)
    session.read_ahead()  # a ping went out, say
    reader = session._reader_task
    assert reader is not None
    receiving = asyncio.ensure_future(session.recv())
    await asyncio.sleep(0)
    transport.feed("d1:0:first")
    assert await receiving == "first"
    await eventually(lambda: reader.done(), 2.0)
    assert session._reader_task is None
    transport.feed("d2:0:second")
    assert await session.recv() == "second"  # read directly, no task again
    assert session._reader_task is None


async def test_read_ahead_while_recv_reads_starts_no_second_reader() -> None:
    """read_ahead() while recv() reads: one reader at a time, every message once, in order."""
    layer = TetherV1ServerLayer()
    session, transport, _ = await attached(layer)
    receiving = asyncio.ensure_future(session.recv())
    await asyncio.sleep(0)
    session.read_ahead(keep=True)  # nothing to do: the handler reads
    assert session._reader_task is None
    transport.feed("d1:0:a")
    assert await receiving == "a"
    session.read_ahead(keep=True)
    transport.feed("d2:0:b")
    transport.feed("d3:0:c")
    assert [await session.recv(), await session.recv()] == ["b", "c"]


async def test_close_with_nobody_reading_delivers_what_came_before_and_ends_the_link() -> None:
    """The client closes while the handler does not read: the end is handled, messages kept."""
    layer = TetherV1ServerLayer()
    session, transport, ended = await attached(layer, "d1:0:last")
    transport.peer_closed(ClosedInfo(1001, "going away", clean=True))
    assert (await asyncio.wait_for(ended, 2.0)).code == 1001
    assert session.transport is None
    assert await session.recv() == "last"


async def test_send_only_handler_gets_a_reader_on_the_resumed_connection_too() -> None:
    """After a resume, the acks of a handler that never reads are read on the new connection."""
    layer = TetherV1ServerLayer()
    session, old, _ = await attached(layer)
    welcome = decode(old.sent[0])
    assert isinstance(welcome, Welcome)
    endpoint = layer._states[session].endpoint
    for n in range(1, 11):
        await session.send(f"m{n}")
    assert session._reader_task is not None
    hello = Hello(welcome.sid, welcome.token, welcome.epoch, 0)
    new = v1_transport(encode(hello))
    assert await layer.open(new, REQUEST) is session
    session.attach(new)
    await eventually(lambda: len(new.sent) >= 11, 2.0)  # welcome, then the replay
    new.feed(encode(Ack(10)))
    await eventually(lambda: endpoint.peer_acked == 10, 2.0)
    assert len(endpoint.buffer) == 0


# -- a client's ack is written with the next batch (stores that need I/O) -------------------------


async def acked_session(
    store: CountingStore,
) -> tuple[TetherV1ServerLayer, Session, FakeTransport]:
    """A session that sent m1, whose ack the client returned and the layer applied."""
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    session.read_ahead(keep=True)  # a handler that only sends: the layer reads the acks
    await session.send("m1")
    await eventually(lambda: transport.sent[-1:] == ["d1:0:m1"], 2.0)
    transport.feed(encode(Ack(1)))
    await eventually(lambda: layer._states[session].endpoint.peer_acked == 1, 2.0)
    return layer, session, transport


async def acked_session_gone(store: CountingStore) -> Welcome:
    """:func:`acked_session`, then its connection lost and the session detached."""
    _, _, transport = await acked_session(store)
    welcome = decode(transport.sent[0])
    assert isinstance(welcome, Welcome)
    transport.abort()
    await eventually(lambda: store.detached == 1, 2.0)
    return welcome


async def test_a_clients_ack_rides_with_the_next_write() -> None:
    """An ack alone costs no store write: the next batch carries it and trims the store."""
    store = CountingStore()
    layer, session, _ = await acked_session(store)
    writes = len(store.writes)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(store.writes) == writes  # no write for the ack alone
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["m1"]
    await session.send("m2")
    assert len(store.writes) == writes + 1
    assert store.writes[-1]["acked"] == 1
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["m2"]
    assert not layer._states[session].ack_armed


def test_a_clients_ack_is_written_after_the_lazy_delay_at_the_latest() -> None:
    run_virtual(_ack_written_after_the_lazy_delay())


async def _ack_written_after_the_lazy_delay() -> None:
    loop = asyncio.get_running_loop()
    store = CountingStore()
    _, session, _ = await acked_session(store)
    acked_at = loop.time()
    await eventually(lambda: store.writes and store.writes[-1].get("acked") == 1, timeout=30.0)
    assert LAZY_ACK_WRITE_S - 0.1 <= loop.time() - acked_at <= LAZY_ACK_WRITE_S + 0.5
    assert await store.messages(session.id, after=0) == []


class TimedWritesStore(CountingStore):
    """Records each write's session, ack and (loop) time."""

    def __init__(self) -> None:
        super().__init__()
        self.timed: list[tuple[str, int | None, float]] = []

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self.timed.append((args[0], kwargs.get("acked"), asyncio.get_running_loop().time()))
        return await super().write(*args, **kwargs)


def test_one_timer_writes_each_sessions_lazy_ack_at_its_own_deadline() -> None:
    run_virtual(_lazy_acks_share_one_timer())


async def _lazy_acks_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    store = TimedWritesStore()
    layer = TetherV1ServerLayer(store=store)
    sessions: list[Session] = []
    acked_at: dict[str, float] = {}
    for _ in range(3):  # three sessions whose acks arrive 1 s apart
        session, transport, _ = await new_session(layer)
        session.read_ahead(keep=True)
        await session.send("m1")
        await eventually(lambda t=transport: t.sent[-1:] == ["d1:0:m1"], 2.0)  # type: ignore[misc]
        transport.feed(encode(Ack(1)))
        await eventually(lambda s=session: layer._states[s].endpoint.peer_acked == 1, 2.0)  # type: ignore[misc]
        acked_at[session.id] = loop.time()
        sessions.append(session)
        await asyncio.sleep(1.0)
    assert list(layer._lazy_acks) == [layer._states[s] for s in sessions]
    scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert (
        sum(h._callback == layer._lazy_ack_timer_rang for h in scheduled) == 1
    )  # one for the three
    await sessions[1].send("m2")  # its write takes the ack along: no lazy write for it
    await eventually(lambda: len([t for t in store.timed if t[1] == 1]) == 3, 30.0)
    await asyncio.sleep(LAZY_ACK_WRITE_S)  # and nothing more comes
    acks = [(sid, at) for sid, acked, at in store.timed if acked == 1]
    first, second, third = (s.id for s in sessions)
    assert [sid for sid, _ in acks] == [second, first, third]  # the write's, then the timer's
    for sid, at in acks[1:]:  # the two lazy ones, each LAZY_ACK_WRITE_S after its own ack
        assert LAZY_ACK_WRITE_S - 0.1 <= at - acked_at[sid] <= LAZY_ACK_WRITE_S + 0.1
    assert not layer._lazy_acks
    assert layer._lazy_timer is None


async def test_a_connection_that_ends_leaves_the_ack_to_the_resume() -> None:
    """Connection lost: only the detach is written; the resume's hello.rx trims the rest.

    Written after the close, the ack would race the client's resume on another node.
    """
    store = CountingStore()
    layer, session, transport = await acked_session(store)
    writes = len(store.writes)
    transport.abort()
    await eventually(lambda: store.detached == 1, 2.0)
    assert len(store.writes) == writes
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["m1"]
    assert not layer._states[session].ack_armed


async def test_a_resume_elsewhere_does_not_replay_what_the_client_acked() -> None:
    """Another server restores from the store, which still holds m1: hello.rx drops it."""
    store = CountingStore()
    welcome = await acked_session_gone(store)
    assert [m.seq for m in await store.messages(welcome.sid, after=0)] == [1]
    replacement = TetherV1ServerLayer(store=store)  # the next process, same store
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    resumed = await replacement.open(again, REQUEST)
    resumed.attach(again)
    await eventually(lambda: len(again.sent) >= 1, 2.0)
    back = decode(again.sent[0])
    assert isinstance(back, Welcome)
    assert back.resumed
    assert back.tx == 1
    await resumed.send("m2")
    await eventually(lambda: len(again.sent) >= 2, 2.0)
    assert again.sent[1:] == ["d2:0:m2"]  # m1 not replayed
    assert store.writes[-1]["acked"] == 1  # and now trimmed from the store
    assert [m.seq for m in await store.messages(welcome.sid, after=0)] == [2]


class RecordingStore(CountingStore):
    """Records the resume path's store calls, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def load(self, sid: str) -> SessionRecord | None:
        self.calls.append("load")
        return await super().load(sid)

    async def claim(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self.calls.append("claim")
        return await super().claim(*args, **kwargs)

    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        self.calls.append("messages")
        return await super().messages(sid, after=after)

    async def resume(self, *args: Any, **kwargs: Any) -> Resumption:
        self.calls.append("resume")
        return await super().resume(*args, **kwargs)


async def test_a_resume_from_the_store_is_one_store_call() -> None:
    """Another process resumes with one resume() (load, judge, claim, replay in one trip)."""
    store = RecordingStore()
    welcome = await acked_session_gone(store)
    replacement = TetherV1ServerLayer(store=store)
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0)))
    store.calls.clear()
    resumed = await replacement.open(again, REQUEST)
    # The default resume() runs the three steps; a store may do them in one trip.
    assert store.calls == ["resume", "load", "claim", "messages"]
    resumed.attach(again)
    await eventually(lambda: len(again.sent) >= 2, 2.0)
    back = decode(again.sent[0])
    assert isinstance(back, Welcome)
    assert back.resumed
    assert again.sent[1] == "d1:0:m1"  # the replay resume() read
    refused = v1_transport(encode(Hello(welcome.sid, "x" * 43, welcome.epoch, rx=0)))
    store.calls.clear()
    await TetherV1ServerLayer(store=store).open(refused, REQUEST)
    assert store.calls == ["resume", "load"]  # judged, refused: no claim, no replay
    await settle(refused, 1)
    lost = decode(refused.sent[0])
    assert isinstance(lost, Welcome)
    assert (lost.resumed, lost.reason) == (False, "token_invalid")


class HeldLoad(GatedStore):
    """The next load() after ``hold_next_load()`` waits at the gate it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.held_load: asyncio.Event | None = None
        self.loading = asyncio.Event()

    def hold_next_load(self) -> asyncio.Event:
        self.held_load = asyncio.Event()
        self.loading.clear()
        return self.held_load

    async def load(self, sid: str) -> SessionRecord | None:
        gate, self.held_load = self.held_load, None
        if gate is not None:
            self.loading.set()
            await gate.wait()
        return await super().load(sid)


async def test_a_second_resume_of_one_session_waits_for_the_first_and_takes_it_over() -> None:
    """Two resumes of one session at once in a new process: one at a time, the later wins.

    B is at the store when A arrives: A waits until B's resume is done, then finds the
    session held here and takes it over (4901 to B). One Session, so one handler.
    (Before, both went to the store at once: A's claim and B's write raced, and the
    loser's state ended; with a handler that had sent meanwhile, the session was
    restored in a new Session and its handler started a second time.)
    """
    store = HeldLoad()
    _, gone, welcome = await new_session(TetherV1ServerLayer(store=store))
    gone.abort()
    await eventually(lambda: store.detached == 1, 2.0)
    layer = TetherV1ServerLayer(store=store)  # the replacement
    hello = encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0))
    load_b = store.hold_next_load()
    b = v1_transport(hello)
    opening_b = asyncio.ensure_future(layer.open(b, REQUEST))
    await store.loading.wait()  # B: at the store
    a = v1_transport(hello)
    opening_a = asyncio.ensure_future(layer.open(a, REQUEST))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not opening_a.done()  # A waits for B's resume
    load_b.set()
    session_b = await opening_b
    session_b.attach(b)
    session_a = await opening_a
    session_a.attach(a)
    assert session_a is session_b
    await eventually(lambda: b.close_calls == [(4901, "taken over")], 2.0)
    await settle(a, 1)
    back = decode(a.sent[0])
    assert isinstance(back, Welcome)
    assert back.resumed
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.generation == 3
    await session_a.send("y")  # under generation 3: not fenced
    await settle(a, 2)
    assert a.sent[1] == "d1:0:y"
    assert session_a.closed is None


class HeldLoadAndWrite(HeldLoad):
    """Also: write() (the session task's path) waits at ``write_gate`` while it is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.write_gate = asyncio.Event()
        self.write_gate.set()
        self.writing = asyncio.Event()

    async def write(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self.writing.set()
        await self.write_gate.wait()
        return await super().write(*args, **kwargs)


def test_a_second_resume_waits_for_the_write_the_first_ones_task_has_in_flight() -> None:
    run_virtual(_a_second_resume_waits_for_the_tasks_write())


async def _a_second_resume_waits_for_the_tasks_write() -> None:
    """A resume of a session whose task is writing (under its store lock) waits for it.

    The lazy ack's write goes that way (the task writes it, the writer is not
    involved): the claim must wait for the lock, not only for the writer, so that the
    write lands under its own generation and the session lives on.
    """
    store = HeldLoadAndWrite()
    _, gone, welcome = await new_session(TetherV1ServerLayer(store=store))
    gone.abort()
    await eventually(lambda: store.detached == 1, 2.0)
    layer = TetherV1ServerLayer(store=store)
    hello = encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0))
    b = v1_transport(hello)
    session = await layer.open(b, REQUEST)  # generation 2
    session.attach(b)
    session.read_ahead(keep=True)  # a handler that only sends: the layer reads the acks
    await session.send("m1")
    await eventually(lambda: b.sent[-1:] == ["d1:0:m1"], 2.0)
    store.write_gate.clear()
    store.writing.clear()
    b.feed(encode(Ack(1)))  # written lazily, by the session's task
    await eventually(store.writing.is_set, LAZY_ACK_WRITE_S + 5.0)
    state = layer._states[session]
    assert state.locked()
    assert not state.writing
    a = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    opening_a = asyncio.ensure_future(layer.open(a, REQUEST))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not opening_a.done()  # the claim waits for the store lock
    store.write_gate.set()  # the ack's write lands, under generation 2
    assert await opening_a is session
    session.attach(a)
    await settle(a, 1)
    back = decode(a.sent[0])
    assert isinstance(back, Welcome)
    assert back.resumed
    await eventually(lambda: b.close_calls == [(4901, "taken over")], 2.0)
    record = await store.load(welcome.sid)
    assert record is not None
    assert (record.generation, record.acked) == (3, 1)
    await layer.stop()


async def test_a_resume_is_judged_when_the_store_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait for the store counts: a window that ended meanwhile is expired."""
    clock = [1000.0]
    monkeypatch.setattr(resume_server, "time", SimpleNamespace(time=lambda: clock[0]))

    class SlowLoad(CountingStore):
        slow = False

        async def load(self, sid: str) -> SessionRecord | None:
            if self.slow:
                clock[0] += 5.0  # the store's queue, during a storm
            return await super().load(sid)

    store = SlowLoad()
    _, gone, welcome = await new_session(TetherV1ServerLayer(store=store, resume_window=60.0))
    gone.abort()
    await eventually(lambda: store.detached == 1, 2.0)
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.expires_at == 1060.0
    clock[0] = 1059.0  # the hello: 1 s of the window left
    store.slow = True
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0)))
    await TetherV1ServerLayer(store=store).open(again, REQUEST)
    await settle(again, 1)
    lost = decode(again.sent[0])
    assert isinstance(lost, Welcome)
    assert (lost.resumed, lost.reason) == (False, "expired")


async def test_a_clients_ack_is_written_when_the_handler_returns() -> None:
    """The handler returns with an ack pending: written as the session settles, no timer left."""
    store = CountingStore()
    layer, session, _ = await acked_session(store)
    state = layer._states[session]
    await layer.finish(session)
    assert store.writes[-1]["acked"] == 1
    assert await store.messages(session.id, after=0) == []
    assert not state.ack_armed


# -- detach races ------------------------------------------------------------------------------


class HeldClaim(CountingStore):
    """Claims wait at a gate: a resume in progress, caught between its claim's start and end."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def claim(self, *args: Any, **kwargs: Any) -> SessionRecord:
        self.entered.set()
        await self.gate.wait()
        return await super().claim(*args, **kwargs)


async def test_a_resume_in_this_process_during_the_detach_leaves_it_attached() -> None:
    """The old connection ends while a resume claims: no detach is written, nothing hangs.

    The detach waits for the claim's lock, then finds the session attached again. (A
    stale detach flag used to keep every later settle spinning for its whole timeout.)
    """
    store = HeldClaim()
    layer, session, old = await acked_session(store)
    welcome = decode(old.sent[0])
    assert isinstance(welcome, Welcome)
    state = layer._states[session]
    new = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    opening = asyncio.ensure_future(layer.open(new, REQUEST))
    await store.entered.wait()  # the resume holds the session's store lock
    old.abort()
    await eventually(lambda: state.transport is None, 2.0)
    store.gate.set()
    assert await opening is session
    session.attach(new)
    await eventually(lambda: state.task is None, 2.0)
    assert (state.transport, state.detach, store.detached) == (new, False, 0)
    record = await store.load(session.id)
    assert record is not None
    assert record.expires_at is None
    started = asyncio.get_running_loop().time()
    await layer._settle(state, timeout=2.0)
    assert asyncio.get_running_loop().time() - started < 0.1


def test_a_detach_fenced_by_a_resume_elsewhere_does_not_delete_the_session() -> None:
    run_virtual(_detach_fenced_by_a_resume_elsewhere())


async def _detach_fenced_by_a_resume_elsewhere() -> None:
    """Another node claimed the session before this one wrote its detach: keep it."""
    store = CountingStore()
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(resume_window=5.0))
    session, transport, _ = await new_session(layer)
    record = await store.load(session.id)
    assert record is not None
    await store.claim(session.id, record.generation, token_hash="x" * 64, previous_token_hash="y")
    transport.abort()  # a half-open link noticed late, say
    await eventually(lambda: session.closed is not None, 2.0)
    assert session.closed is not None
    assert session.closed.code == 4901
    await asyncio.sleep(10.0)  # virtual: past the resume window
    assert await store.load(session.id) is not None  # the new owner's session


async def test_a_stopped_layer_leaves_no_ack_timer() -> None:
    """stop() with an ack waiting: its timer is cancelled (it would write to a closed store)."""
    store = CountingStore()
    layer, session, _ = await acked_session(store)
    state = layer._states[session]
    assert state.ack_armed
    assert layer._lazy_timer is not None
    await layer.stop()
    assert not state.ack_armed
    assert layer._lazy_timer is None
    assert not layer._lazy_acks


class _RenewingStore(MemoryStore):
    """Records each renewal's ``expires_at``; the first one fails, as a store down would."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals: list[float] = []

    async def renew(self, expires_at: float) -> None:
        self.renewals.append(expires_at)
        if len(self.renewals) == 1:
            raise StoreUnavailable("down for the first renewal")


def test_the_layer_renews_its_sessions_at_start_and_every_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A renewal reaches a window and two sweeps ahead; a failed one warns and is retried."""
    run_virtual(_the_layer_renews(caplog))


async def _the_layer_renews(caplog: pytest.LogCaptureFixture) -> None:
    store = _RenewingStore()
    # A 4 s window sweeps every 1 s: each renewal reaches 4 + 2 * 1 = 6 s ahead.
    layer = TetherV1ServerLayer(store=store, config=ResumeConfig(resume_window=4.0))
    await layer.start()
    try:
        await asyncio.sleep(2.5)  # virtual time: the renewal at start, then two sweeps
        assert len(store.renewals) == 3
        for expires_at in store.renewals:  # (wall-clock time: it barely moved meanwhile)
            assert expires_at == pytest.approx(time.time() + 6.0, abs=1.0)
        assert "session store renewal failed: down for the first renewal" in caplog.text
    finally:
        await layer.stop()


async def test_a_session_abandoned_between_the_load_and_the_claim_is_refused() -> None:
    """A resume that loaded the session just before its overflow gets welcome(overflow).

    (Before, the claim went through and the client got a 1002 "hello rx outside"
    protocol error, which is final, instead of a SessionLost it could act on.)
    """

    class AbandonedAfterTheLoad(MemoryStore):
        async def load(self, sid: str) -> SessionRecord | None:
            record = await super().load(sid)
            # The overflow's abandon lands while the load's answer is on its way.
            await self.abandon(sid, 1, reason="overflow")
            return record

    store = AbandonedAfterTheLoad()
    layer = TetherV1ServerLayer(store=store)
    session, transport, welcome = await new_session(layer)
    await session.send("m1")
    transport.peer_closed(ClosedInfo(1006, "", clean=False))
    await asyncio.sleep(0)
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, 0)))
    fresh = await layer.open(again, REQUEST)
    fresh.attach(again)
    await settle(again, 1)
    refusal = decode(again.sent[0])
    assert isinstance(refusal, Welcome)
    assert (refusal.resumed, refusal.reason) == (False, "overflow")
    assert fresh is not session
    await layer.stop()


async def test_a_session_abandoned_by_another_node_during_a_resume_is_refused() -> None:
    """Node B's resume loaded the session just before node A abandoned it: overflow.

    The Redis store loads, judges and claims in two round trips, so the abandon can
    land in between. (Before, B restored the abandoned session and refused the
    client's hello with a final 1002.) The record B's claim attached is deleted.
    """

    class TwoTrips(MemoryStore):
        """resume() as the Redis store does it: load, judge, then claim and read."""

        between: Any = None

        async def resume(self, sid: str, admit: Any, **tokens: str) -> Any:
            record = await self.load(sid)
            if record is None or not admit(record):
                return Resumption(record, None)
            if self.between is not None:
                await self.between(sid)
            claimed = await self.claim(sid, record.generation, **tokens)
            return Resumption(claimed, await self.messages(sid, after=claimed.acked))

    store = TwoTrips()
    node_a = TetherV1ServerLayer(store=store)
    node_b = TetherV1ServerLayer(store=store)
    session, transport, welcome = await new_session(node_a)
    await session.send("m1")
    transport.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)

    async def node_a_abandons(sid: str) -> None:
        await store.abandon(sid, 1, reason="overflow")

    store.between = node_a_abandons
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, 0)))
    fresh = await node_b.open(again, REQUEST)
    fresh.attach(again)
    await settle(again, 1)
    refusal = decode(again.sent[0])
    assert isinstance(refusal, Welcome)
    assert (refusal.resumed, refusal.reason) == (False, "overflow")
    assert refusal.sid != welcome.sid
    await eventually(lambda: welcome.sid not in store._held, 2.0)
    await node_a.stop()
    await node_b.stop()


def test_a_close_while_the_client_is_away_waits_for_it_until_the_expiry() -> None:
    """session.close() with no connection waits for the client; never back: ends at expiry."""
    run_virtual(_a_close_while_the_client_is_away_waits_for_it_until_the_expiry())


async def _a_close_while_the_client_is_away_waits_for_it_until_the_expiry() -> None:
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store, resume_window=5.0)
    session, transport, _ = await new_session(layer)
    await session.send("last words")
    transport.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    closing = asyncio.ensure_future(session.close(1000))
    await asyncio.sleep(1.0)
    assert not closing.done()  # the client may still come back for "last words"
    await asyncio.wait_for(closing, 30.0)
    assert 3.5 <= loop.time() - started <= 6.0
    assert session.closed is not None
    assert await store.load(session.id) is None  # expired: gone from the store
    await layer.stop()


def test_the_expiry_here_spares_a_session_resumed_on_another_node() -> None:
    """A's copy of a session expires after the client resumed on B: B's record stays."""
    run_virtual(_the_expiry_here_spares_a_session_resumed_on_another_node())


async def _the_expiry_here_spares_a_session_resumed_on_another_node() -> None:
    store = MemoryStore()
    node_a = TetherV1ServerLayer(store=store, resume_window=2.0)
    node_b = TetherV1ServerLayer(store=store, resume_window=2.0)
    session, transport, welcome = await new_session(node_a)
    await session.send("m1")
    transport.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)
    again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=1)))
    resumed = await node_b.open(again, REQUEST)
    resumed.attach(again)
    await settle(again, 1)
    await asyncio.sleep(5.0)  # (virtual) A's window ends: A deletes its copy, at generation 1
    assert session.closed is not None
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.generation == 2
    await node_a.stop()
    await node_b.stop()


def test_stop_ends_even_if_the_store_swallows_the_sweepers_cancellation() -> None:
    """A store call that returns normally when cancelled does not keep stop() for ever.

    (redis-py did so under a stalled Redis: the sweeper, a ``while True`` loop, went on
    renewing and stop() waited for it without bound; a draining node never exited.)
    """
    run_virtual(_stop_ends_even_if_the_store_swallows_the_sweepers_cancellation())


async def _stop_ends_even_if_the_store_swallows_the_sweepers_cancellation() -> None:
    class Swallowing(MemoryStore):
        renewals = 0

        async def renew(self, expires_at: float) -> None:
            self.renewals += 1
            try:
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                return  # (the bug being survived: the cancellation is lost)

    store = Swallowing()
    layer = TetherV1ServerLayer(store=store, resume_window=2.0)
    await layer.start()
    await eventually(lambda: store.renewals >= 1, 5.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(layer.stop(), 60.0)
    assert loop.time() - began <= 6.0
    renewals = store.renewals
    await asyncio.sleep(10.0)
    assert store.renewals == renewals  # the sweeper stopped


def test_a_node_holding_a_stale_copy_resumes_from_the_store() -> None:
    """A -> B -> A: A's copy is stale once B sent; A resumes from the store, not from it.

    (Before, A claimed the store's generation and adopted its own old copy: B's
    message was never replayed, and the client's hello.rx, beyond A's old tx, was
    refused with a final 1002.)
    """
    run_virtual(_a_node_holding_a_stale_copy_resumes_from_the_store())


async def _a_node_holding_a_stale_copy_resumes_from_the_store() -> None:
    store = MemoryStore()
    node_a = TetherV1ServerLayer(store=store)
    node_b = TetherV1ServerLayer(store=store)
    on_a, link_a, welcome = await new_session(node_a)
    await on_a.send("a1")
    await drop(on_a, link_a)
    # The client resumes on B, which sends b2; then it drops again.
    on_b, link_b = await resume_on(node_b, welcome, rx=1)
    welcome_b = decode(link_b.sent[0])
    assert isinstance(welcome_b, Welcome)
    assert welcome_b.resumed
    await on_b.send("b2")
    await settle(link_b, 2)
    await drop(on_b, link_b)
    # Back to A (which never wrote since, so nothing told it), having seen b2: rx=2.
    again, link_a2 = await resume_on(node_a, welcome, rx=2, token=welcome_b.token)
    welcome_a2 = decode(link_a2.sent[0])
    assert isinstance(welcome_a2, Welcome)
    assert (welcome_a2.resumed, welcome_a2.sid) == (True, welcome.sid)
    assert again is not on_a  # the stale copy is not adopted: it ended as taken over
    assert on_a.closed is not None
    assert on_a.closed.code == 4901
    await again.send("a3")
    await settle(link_a2, 2)
    assert link_a2.sent[1] == "d3:0:a3"  # after B's b2: no sequence number reused
    await node_a.stop()
    await node_b.stop()


@pytest.mark.parametrize(
    ("link_survives_the_close", "store_records_ends", "all_acked"),
    [(True, True, False), (False, True, False), (False, False, False), (False, True, True)],
)
def test_a_close_keeps_the_session_until_the_client_closed_back(
    link_survives_the_close: bool, store_records_ends: bool, all_acked: bool
) -> None:
    """close() with messages unacknowledged: deleted after the client's Close, else kept.

    (Before, the record was deleted as the close began: a link that died before the
    client had read the last messages lost them, and the resume was refused unknown.)
    A store that cannot record the end: deleted as before (kept, its resume would
    start the handler again). Everything acknowledged: kept all the same, so that the
    client's resume still gets the close, not a new session (and a handler again).
    """
    run_virtual(
        _a_close_keeps_the_session_until_the_client_closed_back(
            link_survives_the_close, store_records_ends, all_acked
        )
    )


async def _a_close_keeps_the_session_until_the_client_closed_back(
    survives: bool, records_ends: bool, all_acked: bool
) -> None:
    class DiesOnClose(FakeTransport):
        async def close(self, code: int, reason: str = "") -> ClosedInfo:
            self.close_calls.append((code, reason))
            info = ClosedInfo(1006, "", clean=False, sent_code=code)  # no Close came back
            self.peer_closed(info)
            return info

    class Older(MemoryStore):
        async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
            raise NotImplementedError  # (SessionStore's default)

    store = MemoryStore() if records_ends else Older()
    node_a = TetherV1ServerLayer(store=store)
    node_b = TetherV1ServerLayer(store=store)
    link = FakeTransport() if survives else DiesOnClose()
    link.subprotocol = "tether.v1"
    link.feed(encode(Hello(rx=0)))
    session = await node_a.open(link, REQUEST)
    session.attach(link)
    await settle(link, 1)
    welcome = decode(link.sent[0])
    assert isinstance(welcome, Welcome)
    for n in range(3):
        await session.send(f"m{n}")
    if all_acked:
        session.read_ahead(keep=True)
        link.feed(encode(Ack(3)))
        await eventually(lambda: node_a._states[session].endpoint.peer_acked == 3, 2.0)
    info = await session.close(4000, "done")
    assert info.clean is survives  # (not a clean close announced for a link that died)
    assert session.closed == info
    await asyncio.sleep(1.0)  # (virtual) the delete, or the detach, lands
    record = await store.load(welcome.sid)
    if survives or not records_ends:
        assert record is None
    else:
        assert record is not None
        assert (record.end_code, record.end_reason, record.tx) == (4000, "done", 3)
        assert record.expires_at is not None  # detached: it expires if never resumed
        # The client comes back (to another node here): the rest, then the close.
        rx = 3 if all_acked else 1
        again = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=rx)))
        resumed = await node_b.open(again, REQUEST)
        resumed.attach(again)
        await settle(again, 1)
        if not all_acked:
            await settle(again, 3)
            assert again.sent[1:] == ["d2:0:m1", "d3:0:m2"]
        assert node_b.handler_ended(resumed) == (4000, "done")
    await node_a.stop()
    await node_b.stop()


def test_a_close_while_away_learns_of_a_resume_elsewhere_at_once() -> None:
    """close() while the client is away, resumed on B since: over at once (4901), not at expiry.

    (Before, the store's Fenced answer to the end's write was dropped and the close
    waited out the whole resume window.)
    """
    run_virtual(_a_close_while_away_learns_of_a_resume_elsewhere_at_once())


async def _a_close_while_away_learns_of_a_resume_elsewhere_at_once() -> None:
    store = MemoryStore()
    node_a = TetherV1ServerLayer(store=store, resume_window=60.0)
    node_b = TetherV1ServerLayer(store=store, resume_window=60.0)
    session, link, welcome = await new_session(node_a)
    await drop(session, link)
    await resume_on(node_b, welcome, rx=0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    info = await asyncio.wait_for(session.close(1000), 120.0)
    assert loop.time() - began < 5.0
    assert info.code == 4901
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.end_code is None  # B's session: A's end was refused
    await node_a.stop()
    await node_b.stop()


@pytest.mark.parametrize("stagger", [0.0, 0.01, 0.03])
def test_two_resumes_on_one_node_at_once_keep_the_session_alive(stagger: float) -> None:
    """Two hellos for one sid on one node, the store slow: the newer one takes it over.

    Neither may take the session held here for a stale copy (before, the second
    resume read the generation the first one's claim had just written, before the
    first adopted it: the live session ended with 4901 and its handler was started
    again, with messages in its inbox taken twice).
    """
    run_virtual(_two_resumes_on_one_node_at_once_keep_the_session_alive(stagger))


async def _two_resumes_on_one_node_at_once_keep_the_session_alive(stagger: float) -> None:
    class Slow(SlowClaimStore):
        async def load(self, sid: str) -> Any:
            await asyncio.sleep(0.02)  # the request's way there
            return await super().load(sid)

    store = Slow()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    await session.send("m1")
    link.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)
    hello = encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0))
    first, second = v1_transport(hello), v1_transport(hello)

    async def resume(link: FakeTransport) -> Session:
        resumed = await layer.open(link, REQUEST)
        resumed.attach(link)
        return resumed

    resuming = asyncio.ensure_future(resume(first))
    await asyncio.sleep(stagger)
    results = await asyncio.gather(resuming, resume(second))
    assert all(resumed is session for resumed in results)  # no new Session: no new handler
    assert session.closed is None
    await settle(second, 2)
    assert second.sent[1] == "d1:0:m1"
    record = await store.load(welcome.sid)
    assert record is not None
    await session.send("m2")  # the store's generation is the session's: not fenced
    await settle(second, 3)
    assert session.closed is None
    await layer.stop()


def test_a_close_keeps_the_session_when_frames_were_still_queued() -> None:
    """close() with frames not yet handed to a link whose send blocks: the session stays.

    The Close goes out after the settle's bound (2 s), cutting those frames off; the
    client's Close comes back clean, yet the session is kept with its end, and the
    client's resume gets the rest, then the close. (Before, the record was deleted:
    the rest was gone, with no error on either side.)
    """
    run_virtual(_a_close_keeps_the_session_when_frames_were_still_queued())


async def _a_close_keeps_the_session_when_frames_were_still_queued() -> None:
    class Slow(FakeTransport):
        async def send(self, message: Any) -> None:
            await asyncio.sleep(0.8)  # a slow client: 0.8 s per frame
            if self.closed is not None:
                raise TransportClosed(self.closed)
            self.sent.append(message)

    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    link.peer_closed(ClosedInfo(1006, "", clean=False))
    await eventually(lambda: session.transport is None, 2.0)
    for n in range(6):
        await session.send(f"m{n}")  # while away: stored, owed
    slow = Slow()
    slow.subprotocol = "tether.v1"
    slow.feed(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0)))
    again = await layer.open(slow, REQUEST)
    again.attach(slow)
    await again.close(4000, "done")
    assert slow.close_calls == [(4000, "done")]
    got = len(slow.sent) - 1
    assert got < 6
    await asyncio.sleep(1.0)  # (virtual) the detach lands
    record = await store.load(welcome.sid)
    assert record is not None
    assert (record.end_code, record.tx) == (4000, 6)
    assert record.expires_at is not None
    # The client comes back (acking what it got): the rest of the replay.
    rest = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=got)))
    resumed = await layer.open(rest, REQUEST)
    resumed.attach(rest)
    await settle(rest, 1 + 6 - got)
    assert rest.sent[1:] == [f"d{n + 1}:0:m{n}" for n in range(got, 6)]
    assert layer.handler_ended(resumed) == (4000, "done")
    await layer.stop()


def test_a_close_racing_a_resume_on_this_node_closes_the_new_connection() -> None:
    """The handler's close() while a resume here claims the session: the close goes there.

    (Before, the close went to the old connection, already closed with 4901, ended the
    session adopted by the new one and deleted the new generation's record.)
    """
    run_virtual(_a_close_racing_a_resume_on_this_node_closes_the_new_connection())


async def _a_close_racing_a_resume_on_this_node_closes_the_new_connection() -> None:
    store = SlowClaimStore()
    layer = TetherV1ServerLayer(store=store)
    session, old, welcome = await new_session(layer)
    for n in range(3):
        await session.send(f"m{n}")
    await settle(old, 4)
    # The client lost the old link (half-open here) and resumes on a new one.
    new = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0)))

    async def resume() -> Session:
        resumed = await layer.open(new, REQUEST)
        resumed.attach(new)
        return resumed

    resuming = asyncio.ensure_future(resume())
    await asyncio.sleep(0.01)  # the claim is in flight
    await session.close(4000, "done")
    assert await resuming is session
    assert new.close_calls == [(4000, "done")]
    assert new.sent[1:] == ["d1:0:m0", "d2:0:m1", "d3:0:m2"]  # the replay, then the close
    await asyncio.sleep(1.0)
    assert await store.load(welcome.sid) is None  # the new link's Close came back: done
    await layer.stop()


def test_a_close_does_not_wait_for_a_stalled_store_to_record_the_end() -> None:
    """close() with the store stalled: after 2 s it closes and deletes, as before ends were kept.

    (The end's write was unbounded: a stalled Redis held the handler's close().)
    """
    run_virtual(_a_close_does_not_wait_for_a_stalled_store_to_record_the_end())


async def _a_close_does_not_wait_for_a_stalled_store_to_record_the_end() -> None:
    class Stalled(MemoryStore):
        async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
            await asyncio.sleep(3600.0)

    store = Stalled()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    loop = asyncio.get_running_loop()
    began = loop.time()
    info = await asyncio.wait_for(session.close(4000, "done"), 60.0)
    assert loop.time() - began <= 2.5
    assert (info.code, info.clean) == (4000, True)
    assert link.close_calls == [(4000, "done")]
    await asyncio.sleep(1.0)
    assert await store.load(welcome.sid) is None
    await layer.stop()


def test_a_hello_whose_connection_died_while_it_waited_takes_nothing_over() -> None:
    """The live resume first, a late one from an attempt the client gave up behind it.

    The late one's connection is gone when its turn comes: it claims nothing. (Before,
    it claimed the session and took it from the live connection with 4901, final for
    the client: SessionLost(taken_over), its unacknowledged messages lost.)
    """
    run_virtual(_a_hello_whose_connection_died_while_it_waited_takes_nothing_over())


async def _a_hello_whose_connection_died_while_it_waited_takes_nothing_over() -> None:
    class Engine(FakeTransport):
        @property
        def closed(self) -> ClosedInfo | None:
            return self._ending  # (an engine knows at once, unread messages or not)

    store = SlowClaimStore()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    await drop(session, link)
    hello = encode(Hello(welcome.sid, welcome.token, welcome.epoch, rx=0))
    live, late = v1_transport(hello), Engine()
    late.subprotocol = "tether.v1"
    late.feed(hello)
    resuming = asyncio.ensure_future(layer.open(live, REQUEST))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(layer.open(late, REQUEST))
    await asyncio.sleep(0.01)  # the live claim is in flight; the late one waits its turn
    late.peer_closed(ClosedInfo(1006, "", clean=False))  # the client had given it up
    resumed = await resuming
    resumed.attach(live)
    with pytest.raises(TransportClosed):
        await waiting
    await settle(live, 1)
    assert live.close_calls == []
    assert resumed.closed is None
    record = await store.load(welcome.sid)
    assert record is not None
    assert record.generation == 2  # the late hello claimed nothing
    await layer.stop()


async def _late_hello_refused(*, nodes: int) -> None:
    store = MemoryStore()
    layers = [TetherV1ServerLayer(store=store) for _ in range(nodes)]
    live_node, late_node = layers[0], layers[-1]
    session, link, welcome = await new_session(live_node)
    await drop(session, link)
    # The client's first resume got no welcome in time and was given up (its
    # connection still open as far as any server knows); its second resume, with the
    # same token, is served first.
    given_up = Hello(welcome.sid, welcome.token, welcome.epoch, rx=0, attempt=1)
    resumed, live = await resume_on(live_node, welcome, rx=0, attempt=2)
    resumed_welcome(live)
    late = v1_transport(encode(given_up))
    with pytest.raises(ProtocolError) as caught:
        await late_node.open(late, REQUEST)
    assert caught.value.close_code == 4204
    await asyncio.sleep(0.1)  # what a takeover would have done meanwhile
    assert live.close_calls == []
    assert resumed.closed is None
    record = await store.load(welcome.sid)
    assert record is not None
    assert (record.generation, record.attempt) == (2, 2)
    # No session of its own either (the store's, or one held by the late node).
    assert [s.id for s in late_node._states] == ([] if nodes > 1 else [welcome.sid])
    assert list(store._held) == [welcome.sid]
    for layer in layers:
        await layer.stop()


@pytest.mark.parametrize("nodes", [1, 2], ids=["same-node", "other-node"])
def test_a_late_hello_after_the_clients_next_one_is_refused_with_4204(nodes: int) -> None:
    """A hello numbered at or below one already served: closed with 4204, nothing taken.

    Its connection is still open as far as the server knows (the client gave it up:
    no welcome in time). It presents the token the live resume presented, which the
    server still accepts as the previous one. (Before hellos were numbered it took the
    session over: the live connection got 4901, final for the client, SessionLost
    with its unacknowledged messages; on another node likewise through the store.)
    """
    run_virtual(_late_hello_refused(nodes=nodes))


def test_a_hello_without_a_number_is_served_as_before() -> None:
    """A client that does not number its hellos: no attempt stored, no hello refused as late."""
    run_virtual(_a_hello_without_a_number_is_served_as_before())


async def _a_hello_without_a_number_is_served_as_before() -> None:
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    await drop(session, link)
    resumed, _ = await resume_on(layer, welcome, rx=0)
    assert resumed is session
    record = await store.load(welcome.sid)
    assert record is not None
    assert (record.generation, record.attempt) == (2, 0)
    await layer.stop()


def test_a_store_written_before_numbered_hellos_still_resumes_them() -> None:
    """A store whose claim takes no ``attempt``: numbered hellos resume, unjudged by number."""
    run_virtual(_a_store_written_before_numbered_hellos_still_resumes_them())


async def _a_store_written_before_numbered_hellos_still_resumes_them() -> None:
    class Older(MemoryStore):
        async def claim(  # type: ignore[override]
            self, sid: str, expected_generation: int, *, token_hash: str, previous_token_hash: str
        ) -> SessionRecord:
            return await super().claim(
                sid,
                expected_generation,
                token_hash=token_hash,
                previous_token_hash=previous_token_hash,
            )

    store = Older()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    for attempt in (1, 1):  # the same number twice: nothing stored to judge it by
        await drop(session, link)
        resumed, link = await resume_on(layer, welcome, rx=0, attempt=attempt)
        assert resumed is session
        welcome = resumed_welcome(link)
    record = await store.load(welcome.sid)
    assert record is not None
    assert (record.generation, record.attempt) == (3, 0)
    await layer.stop()


def test_a_hello_late_by_two_resumes_gets_4204_not_a_session_nor_a_refusal() -> None:
    """Its token is no longer accepted (two rotations since): still late, nothing more.

    (Judged on its token, it was refused as token_invalid: it got a session of its own,
    whose handler ran for nobody, and counted as a refused resume against its address,
    so that behind one address, a load balancer's, the next real resumes were refused
    as rate_limited.)
    """
    run_virtual(_a_hello_late_by_two_resumes())


async def _a_hello_late_by_two_resumes() -> None:
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store, resume_limit=ResumeLimit(max_refused=1))
    session, link, first = await new_session(layer)
    welcome = first
    for attempt in (1, 2):
        await drop(session, link)
        resumed, link = await resume_on(layer, welcome, rx=0, attempt=attempt)
        assert resumed is session
        welcome = resumed_welcome(link)
    # Attempt 1's hello again, as a late copy would come: the first token, two rotations old.
    late = v1_transport(encode(Hello(first.sid, first.token, first.epoch, rx=0, attempt=1)))
    with pytest.raises(ProtocolError) as caught:
        await layer.open(late, REQUEST)
    assert caught.value.close_code == 4204
    assert list(store._held) == [first.sid]  # no session of its own
    assert link.close_calls == []
    # Not counted as a refusal: with one allowed, the client's next resume is judged.
    await drop(session, link)
    resumed, link = await resume_on(layer, welcome, rx=0, attempt=3)
    assert resumed is session
    resumed_welcome(link)
    await layer.stop()


def test_a_late_hello_for_a_session_held_here_is_refused_without_the_store() -> None:
    """The process knows the number it claimed the session with: no store read, no queue.

    (Each late hello otherwise read the store behind the session's resume lock: a
    stream of them, from anyone who knows the session id, held up its client's resume.)
    """
    run_virtual(_a_late_hello_for_a_session_held_here_is_refused_without_the_store())


async def _a_late_hello_for_a_session_held_here_is_refused_without_the_store() -> None:
    class Counting(MemoryStore):
        reads = 0

        async def load(self, sid: str) -> SessionRecord | None:
            Counting.reads += 1
            return await super().load(sid)

    store = Counting()
    layer = TetherV1ServerLayer(store=store)
    session, link, welcome = await new_session(layer)
    await drop(session, link)
    resumed, _ = await resume_on(layer, welcome, rx=0, attempt=2)
    assert resumed is session
    reads = Counting.reads
    for attempt in (1, 2):
        late = v1_transport(encode(Hello(welcome.sid, "Zm9yZ2Vk", welcome.epoch, 0, attempt)))
        with pytest.raises(ProtocolError) as caught:
            await layer.open(late, REQUEST)
        assert caught.value.close_code == 4204
    assert Counting.reads == reads
    await layer.stop()


def test_the_sweep_forgets_addresses_whose_refusals_left_the_window() -> None:
    """A refused resume puts its address in the limiter; once its refusals are older
    than the window, the layer's periodic sweep forgets it, so a burst of refused
    addresses does not stay in memory for ever (before: up to 65,536 of them, ~55 MB,
    until newer ones pushed them out)."""
    run_virtual(_the_sweep_forgets_stale_addresses())


async def _the_sweep_forgets_stale_addresses() -> None:
    store = MemoryStore()
    config = ResumeConfig(resume_window=8.0)  # the sweep: every 2 s
    layer = TetherV1ServerLayer(store=store, config=config, resume_limit=ResumeLimit(window=5.0))
    await layer.start()
    session, link, welcome = await new_session(layer)
    await drop(session, link)
    # A wrong token: refused, counted against 127.0.0.1.
    _, refused = await resume_on(layer, welcome, rx=0, token="A" * len(welcome.token))
    answer = decode(refused.sent[0])
    assert isinstance(answer, Welcome)
    assert answer.reason == "token_invalid"
    assert layer.limiter is not None
    assert layer.limiter.tracked() == 1
    await asyncio.sleep(4.0)  # (virtual) within the window: kept
    assert layer.limiter.tracked() == 1
    await asyncio.sleep(4.0)  # (virtual) the window ended, and a sweep ran since
    assert layer.limiter.tracked() == 0
    await layer.stop()


class GatedDeleteStore(MemoryStore):
    """A store whose deletes wait for ``gate``; it notes how many ran when it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.deleting = 0
        self.deleting_at_close: int | None = None

    async def delete(self, sid: str, *, generation: int | None = None) -> None:
        self.deleting += 1
        try:
            await self.gate.wait()
            await super().delete(sid, generation=generation)
        finally:
            self.deleting -= 1

    async def close(self) -> None:
        self.deleting_at_close = self.deleting
        await super().close()


async def _a_closed_session_deleting(store: GatedDeleteStore) -> tuple[TetherV1ServerLayer, str]:
    """A layer that owns ``store`` and a session it is deleting (closed with 1000)."""
    layer = TetherV1ServerLayer(store=store)
    layer._owns_store = True  # as when serve() opened it from a URL: stop() closes it
    session, _, welcome = await new_session(layer)
    await session.close(1000)
    await eventually(lambda: store.deleting == 1, 2.0)
    return layer, welcome.sid


def test_stop_lets_the_deletes_in_flight_finish_before_closing_the_store() -> None:
    run_virtual(_stop_lets_the_deletes_in_flight_finish())


async def _stop_lets_the_deletes_in_flight_finish() -> None:
    """A session closed just before the drain is deleted, then the store closed.

    (Before, stop() closed the store under the delete: "could not delete session ...:
    closed", and the session, with this node's ownership entry, stayed in Redis.)
    """
    store = GatedDeleteStore()
    layer, sid = await _a_closed_session_deleting(store)
    asyncio.get_running_loop().call_later(0.05, store.gate.set)
    await layer.stop()
    assert store.deleting_at_close == 0
    assert await store.load(sid) is None


def test_stop_gives_up_on_a_delete_that_hangs() -> None:
    run_virtual(_stop_gives_up_on_a_delete_that_hangs())


async def _stop_gives_up_on_a_delete_that_hangs() -> None:
    """A delete the store never answers is cancelled after _STOP_WRITES_S: stop() ends."""
    store = GatedDeleteStore()
    layer, _ = await _a_closed_session_deleting(store)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await layer.stop()
    assert loop.time() - began == pytest.approx(resume_server._STOP_WRITES_S, abs=0.1)
    assert store.deleting_at_close == 0  # (cancelled, then closed)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("principal", "alice", "principal must be a function of the request or None, not 'alice'"),
        ("resume_limit", 20, "resume_limit must be a tether.ratelimit.ResumeLimit or None, not 20"),
        ("resume_window", float("inf"), "resume_window must be a finite number of seconds > 0"),
    ],
)
def test_settings_that_would_fail_every_handshake_are_refused(
    option: str, value: object, message: str
) -> None:
    """A principal that cannot be called, a resume_limit that is not a ResumeLimit, an
    infinite window: refused at once (before: a traceback and 1011 on every hello)."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        TetherV1ServerLayer(store=MemoryStore(), **{option: value})


@pytest.mark.integration
def test_server_timers_run_before_their_deadline_are_not_set_again_for_it() -> None:
    """On a loop whose timers run early (as uvloop's can), the session's alarm and the
    heartbeat's timer handle what fell due at their deadline: each deadline gets one timer.

    (Before: both read loop.time(), found nothing due and set a timer again for the same
    deadline, which ran again at once until the clock reached it: on uvloop 36 alarms, each
    a task, for 9 deadlines.)
    """
    count, gap = 30, 0.03

    async def run() -> tuple[list[float], list[float]]:
        received = asyncio.Event()
        seen = 0

        async def sink(session: Session) -> None:
            nonlocal seen
            async for _ in session:
                seen += 1
                if seen == count:
                    received.set()

        beat = tether.Heartbeat(interval=0.1, timeout=1.0)
        server = await tether.serve(sink, "127.0.0.1", 0, heartbeat=beat).start()
        conn = tether.connect(f"ws://127.0.0.1:{server.port}/", heartbeat=None)
        alarms: list[float] = []
        pings: list[float] = []
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
            name = getattr(callback, "__qualname__", "")
            if name == "TetherV1ServerLayer._alarm_rang":
                alarms.append(when)
            elif name == "HeartbeatTimer._fire":
                pings.append(when)
            return call_at(when, callback, *args, **kw)

        try:
            await conn
            loop.call_at = counting_call_at  # type: ignore[assignment,method-assign]
            try:
                for n in range(count):
                    await conn.send(f"m{n}")
                    await asyncio.sleep(gap)
                await asyncio.wait_for(received.wait(), 5)
            finally:
                del loop.call_at
        finally:
            await conn.close()
            await server.shutdown(drain_window=0.0)
        return alarms, pings

    with asyncio.Runner(loop_factory=EarlyTimerLoop) as runner:
        alarms, pings = runner.run(run())
    assert alarms, "the session's alarm was never set (ack deadlines)"
    assert pings, "the heartbeat's timer was never set"
    # (A deadline can be set twice: once more when it is re-armed after it passed.)
    assert max(alarms.count(when) for when in alarms) <= 2, alarms
    assert max(pings.count(when) for when in pings) <= 2, pings


@pytest.mark.parametrize("durable", [True, False], ids=["memory", "io"])
async def test_text_utf8_cannot_encode_is_refused_before_it_is_numbered_or_stored(
    durable: bool,
) -> None:
    """A lone surrogate: send() raises UnicodeEncodeError and keeps nothing (kept, its
    frame would fail at every replay); the next message is number 1 and goes out."""

    class IOStore(MemoryStore):
        write_nowait = SessionStore.write_nowait  # (the awaited path: SQLite, Redis)

    store = MemoryStore() if durable else IOStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    with pytest.raises(UnicodeEncodeError):
        await session.send("lone \ud800")
    await session.send("caf\u00e9")
    await settle(transport, 2)
    assert transport.sent[1:] == ["d1:0:caf\u00e9"]
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["caf\u00e9"]
    assert [entry.payload for entry in layer._states[session].endpoint.buffer] == ["caf\u00e9"]
    await layer.stop()
