"""The conformance suite every :class:`~tether.stores.base.SessionStore` must pass.

Use it by subclassing :class:`StoreConformance` in ``tests/stores/test_<store>.py``
and providing a ``store`` fixture that yields a fresh, empty store::

    class TestMemoryStore(StoreConformance):
        @pytest.fixture
        async def store(self) -> AsyncIterator[SessionStore]:
            yield MemoryStore()

Times are plain numbers (a fake clock): the interface takes ``now`` and
``expires_at`` as arguments, so no test waits.
"""

from __future__ import annotations

import pytest

from tether.exceptions import StoreError
from tether.stores.base import (
    Fenced,
    SessionExists,
    SessionRecord,
    SessionStore,
    StoredMessage,
    UnknownSession,
    Write,
)

SID = "c2Vzc2lvbi1pZC0wMDAwMQ"
HASH = "a" * 64


def batch(first: int, last: int) -> list[StoredMessage]:
    """Messages ``first..last``, alternating text and binary payloads."""
    return [
        StoredMessage(seq, f"m{seq}" if seq % 2 else f"m{seq}".encode())
        for seq in range(first, last + 1)
    ]


class StoreConformance:
    """Behaviour shared by every session store."""

    async def test_epoch_is_stable(self, store: SessionStore) -> None:
        """The epoch is a non-empty string that does not change between calls."""
        first = await store.epoch()
        assert first
        assert await store.epoch() == first

    async def test_create_then_load(self, store: SessionStore) -> None:
        """A created session loads back at generation 1 with empty counters."""
        created = await store.create(SID, token_hash=HASH, principal="alice", now=10.0)
        loaded = await store.load(SID)
        assert loaded == created
        assert (loaded.generation, loaded.tx, loaded.acked, loaded.rx) == (1, 0, 0, 0)
        assert (loaded.principal, loaded.created_at, loaded.expires_at) == ("alice", 10.0, None)

    async def test_load_unknown_is_none(self, store: SessionStore) -> None:
        """Loading a session that was never created returns None."""
        assert await store.load("nope") is None

    async def test_create_twice_refused(self, store: SessionStore) -> None:
        """Creating an existing session id raises SessionExists."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        with pytest.raises(SessionExists):
            await store.create(SID, token_hash=HASH, principal=None, now=0.0)

    async def test_append_keeps_payload_types(self, store: SessionStore) -> None:
        """Appended messages come back in order with str and bytes kept apart."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        record = await store.write(SID, 1, append=batch(1, 4))
        assert record.tx == 4
        assert await store.messages(SID, after=0) == batch(1, 4)

    async def test_messages_after(self, store: SessionStore) -> None:
        """messages(after=n) returns only seq > n."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 5))
        assert [m.seq for m in await store.messages(SID, after=3)] == [4, 5]

    async def test_append_must_be_contiguous(self, store: SessionStore) -> None:
        """A batch that skips a sequence number is refused and changes nothing."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        with pytest.raises(StoreError):
            await store.write(SID, 1, append=[*batch(3, 3), *batch(5, 5)])
        assert (await store.load(SID)).tx == 2  # type: ignore[union-attr]
        assert [m.seq for m in await store.messages(SID, after=0)] == [1, 2]

    async def test_trim_by_ack_is_exact(self, store: SessionStore) -> None:
        """acked=n drops exactly the messages with seq <= n."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 10))
        record = await store.write(SID, 1, acked=7)
        assert record.acked == 7
        assert [m.seq for m in await store.messages(SID, after=0)] == [8, 9, 10]

    async def test_append_and_ack_in_one_batch(self, store: SessionStore) -> None:
        """One write can append, trim and record rx together."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        record = await store.write(SID, 1, append=batch(1, 3), acked=2, rx=5)
        assert (record.tx, record.acked, record.rx) == (3, 2, 5)
        assert [m.seq for m in await store.messages(SID, after=0)] == [3]

    async def test_ack_beyond_tx_refused(self, store: SessionStore) -> None:
        """An ack of a message never appended is refused."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        with pytest.raises(StoreError):
            await store.write(SID, 1, acked=3)

    async def test_ack_and_rx_never_go_back(self, store: SessionStore) -> None:
        """A lower acked or rx than stored is ignored (they are cumulative)."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 4), acked=3, rx=9)
        record = await store.write(SID, 1, acked=1, rx=2)
        assert (record.acked, record.rx) == (3, 9)

    async def test_claim_bumps_generation_and_rotates_token(self, store: SessionStore) -> None:
        """claim() with the current generation bumps it, stores the new hash, re-attaches."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.detach(SID, 1, expires_at=50.0)
        record = await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        assert (record.generation, record.token_hash, record.expires_at) == (2, "b" * 64, None)
        assert record.previous_token_hash == HASH
        assert await store.load(SID) == record

    async def test_claim_stores_the_hellos_attempt(self, store: SessionStore) -> None:
        """claim() keeps the hello's number; an unnumbered claim leaves the stored one."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        assert (await store.load(SID)).attempt == 0  # type: ignore[union-attr]
        record = await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH, attempt=3)
        assert (record.generation, record.attempt) == (2, 3)
        assert await store.load(SID) == record
        record = await store.claim(SID, 2, token_hash="c" * 64, previous_token_hash=HASH)
        assert (record.generation, record.attempt) == (3, 3)
        assert await store.load(SID) == record
        await store.write(SID, 3, append=batch(1, 1), acked=0, rx=2)
        assert (await store.load(SID)).attempt == 3  # type: ignore[union-attr]

    async def test_resume_stores_the_hellos_attempt(self, store: SessionStore) -> None:
        """resume() claims with the hello's number, which the next judgement sees."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.detach(SID, 1, expires_at=50.0)
        judged: list[int] = []

        def admit(record: SessionRecord) -> bool:
            judged.append(record.attempt)
            return True

        record, _ = await store.resume(
            SID, admit, token_hash="b" * 64, previous_token_hash=HASH, attempt=2
        )
        assert record is not None
        assert record.attempt == 2
        await store.resume(SID, admit, token_hash="c" * 64, previous_token_hash=HASH, attempt=7)
        assert judged == [0, 2]
        assert (await store.load(SID)).attempt == 7  # type: ignore[union-attr]

    async def test_claim_with_stale_generation_fenced(self, store: SessionStore) -> None:
        """Two claims from the same generation: the second one is fenced."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        with pytest.raises(Fenced) as caught:
            await store.claim(SID, 1, token_hash="c" * 64, previous_token_hash=HASH)
        assert (caught.value.expected, caught.value.actual) == (1, 2)

    async def test_resume_claims_and_reads_the_replay(self, store: SessionStore) -> None:
        """resume(): the loaded record is judged, then claimed, with what is held after acked."""
        await store.create(SID, token_hash=HASH, principal="alice", now=0.0)
        await store.write(SID, 1, append=batch(1, 5), acked=2, rx=7)
        await store.detach(SID, 1, expires_at=50.0)
        loaded = await store.load(SID)
        judged: list[SessionRecord] = []

        def admit(record: SessionRecord) -> bool:
            judged.append(record)
            return True

        record, messages = await store.resume(
            SID, admit, token_hash="b" * 64, previous_token_hash=HASH
        )
        assert judged == [loaded]
        assert record is not None
        assert (record.generation, record.token_hash, record.previous_token_hash) == (
            2,
            "b" * 64,
            HASH,
        )
        assert (record.expires_at, record.tx, record.acked, record.rx) == (None, 5, 2, 7)
        assert record.principal == "alice"
        assert messages == batch(3, 5)
        assert await store.load(SID) == record
        with pytest.raises(Fenced):  # the claim fenced the generation it judged
            await store.write(SID, 1, append=batch(6, 6))

    async def test_resume_refused_changes_nothing(self, store: SessionStore) -> None:
        """resume() whose judgement says no: the record as loaded, no claim, no replay."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        await store.detach(SID, 1, expires_at=50.0)
        loaded = await store.load(SID)
        assert await store.resume(
            SID, lambda record: False, token_hash="b" * 64, previous_token_hash=HASH
        ) == (loaded, None)
        assert await store.load(SID) == loaded
        await store.write(SID, 1, append=batch(3, 3))  # generation 1 still owns it

    async def test_resume_unknown_session(self, store: SessionStore) -> None:
        """resume() of a session the store does not know: (None, None), nothing judged."""
        judged: list[SessionRecord] = []

        def admit(record: SessionRecord) -> bool:
            judged.append(record)
            return True

        assert await store.resume("nope", admit, token_hash="b" * 64, previous_token_hash=HASH) == (
            None,
            None,
        )
        assert judged == []
        assert await store.load("nope") is None

    async def test_stale_writer_fenced(self, store: SessionStore) -> None:
        """After a takeover, a write with the old generation fails and changes nothing."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        with pytest.raises(Fenced):
            await store.write(SID, 1, append=batch(3, 3), rx=4)
        record = await store.load(SID)
        assert record is not None
        assert (record.tx, record.rx) == (2, 0)

    async def test_stale_detach_fenced(self, store: SessionStore) -> None:
        """A stale connection cannot start the expiry clock of a session it lost."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        with pytest.raises(Fenced):
            await store.detach(SID, 1, expires_at=5.0)
        assert (await store.load(SID)).expires_at is None  # type: ignore[union-attr]

    async def test_detach_sets_expiry(self, store: SessionStore) -> None:
        """detach() records when the session stops being resumable."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.detach(SID, 1, expires_at=120.0)
        assert (await store.load(SID)).expires_at == 120.0  # type: ignore[union-attr]

    async def test_expire_removes_only_ended_windows(self, store: SessionStore) -> None:
        """expire(now) removes detached sessions past their window and nothing else."""
        await store.create("old", token_hash=HASH, principal=None, now=0.0)
        await store.create("young", token_hash=HASH, principal=None, now=0.0)
        await store.create("attached", token_hash=HASH, principal=None, now=0.0)
        await store.write("old", 1, append=batch(1, 2))
        await store.detach("old", 1, expires_at=100.0)
        await store.detach("young", 1, expires_at=300.0)
        assert await store.expire(200.0) == 1
        assert await store.load("old") is None
        assert await store.load("young") is not None
        assert await store.load("attached") is not None

    async def test_expired_session_messages_gone(self, store: SessionStore) -> None:
        """Once expired, a session's messages are gone too."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        await store.detach(SID, 1, expires_at=1.0)
        await store.expire(2.0)
        with pytest.raises(UnknownSession):
            await store.messages(SID, after=0)

    async def test_abandon_marks_lost(self, store: SessionStore) -> None:
        """abandon() records the reason and drops the held messages."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 3))
        await store.abandon(SID, 1, reason="overflow")
        record = await store.load(SID)
        assert record is not None
        assert record.lost == "overflow"
        assert await store.messages(SID, after=0) == []

    async def test_end_is_recorded_and_kept_by_a_resume(self, store: SessionStore) -> None:
        """end() records the close, keeps the held messages; a resume's claim keeps both."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 3), acked=1)
        assert (await store.load(SID)).end_code is None  # type: ignore[union-attr]
        await store.end(SID, 1, code=4001, reason="fin ✓")
        await store.detach(SID, 1, expires_at=50.0)
        record = await store.load(SID)
        assert record is not None
        assert (record.end_code, record.end_reason, record.lost) == (4001, "fin ✓", None)
        resumed = await store.resume(
            SID, lambda r: True, token_hash="b" * 64, previous_token_hash=HASH
        )
        assert resumed.record is not None
        assert (resumed.record.generation, resumed.record.end_code) == (2, 4001)
        assert resumed.record.end_reason == "fin ✓"
        assert [m.seq for m in resumed.messages or []] == [2, 3]
        assert await store.load(SID) == resumed.record

    async def test_end_is_fenced_and_needs_the_session(self, store: SessionStore) -> None:
        """end() at a stale generation changes nothing; an unknown session is refused."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        with pytest.raises(Fenced):
            await store.end(SID, 1, code=1000, reason="")
        assert (await store.load(SID)).end_code is None  # type: ignore[union-attr]
        with pytest.raises(UnknownSession):
            await store.end("nope", 1, code=1000, reason="")

    async def test_delete(self, store: SessionStore) -> None:
        """delete() forgets the session; deleting twice is fine."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.delete(SID)
        await store.delete(SID)
        assert await store.load(SID) is None

    async def test_delete_at_a_generation_spares_a_session_claimed_since(
        self, store: SessionStore
    ) -> None:
        """delete(generation=1) after a claim (now 2) leaves it; at 2 it is gone."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.write(SID, 1, append=batch(1, 2))
        await store.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        await store.delete(SID, generation=1)
        record = await store.load(SID)
        assert record is not None
        assert (record.generation, record.tx) == (2, 2)
        assert [m.seq for m in await store.messages(SID, after=0)] == [1, 2]
        await store.delete(SID, generation=2)
        assert await store.load(SID) is None

    async def test_write_unknown_session(self, store: SessionStore) -> None:
        """Writing to a session that does not exist raises UnknownSession."""
        with pytest.raises(UnknownSession):
            await store.write("nope", 1, append=batch(1, 1))

    async def test_sessions_are_independent(self, store: SessionStore) -> None:
        """Messages and counters of one session never show up in another."""
        await store.create("a", token_hash=HASH, principal=None, now=0.0)
        await store.create("b", token_hash=HASH, principal=None, now=0.0)
        await store.write("a", 1, append=batch(1, 3), rx=3)
        assert await store.messages("b", after=0) == []
        assert (await store.load("b")).rx == 0  # type: ignore[union-attr]

    async def test_write_nowait_applies_a_write_or_declines(self, store: SessionStore) -> None:
        """write_nowait() either does exactly what write() does (True) or nothing (False)."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        if store.write_nowait(SID, 1, append=batch(1, 3), acked=1, rx=4):
            record = await store.load(SID)
            assert record is not None
            assert (record.tx, record.acked, record.rx) == (3, 1, 4)
            assert await store.messages(SID, after=0) == batch(2, 3)
            with pytest.raises(Fenced):
                store.write_nowait(SID, 2, rx=9)
            with pytest.raises(StoreError):
                store.write_nowait(SID, 1, append=batch(5, 5))  # skips 4: all or nothing
            assert (await store.load(SID)).rx == 4  # type: ignore[union-attr]
        else:
            record = await store.load(SID)
            assert record is not None
            assert (record.tx, record.acked, record.rx) == (0, 0, 0)
            assert await store.messages(SID, after=0) == []

    async def test_write_many_applies_each_write_on_its_own(self, store: SessionStore) -> None:
        """write_many(): each write as write() would do it; a refused one changes nothing else."""
        for sid in ("good", "stale", "gap"):
            await store.create(sid, token_hash=HASH, principal=None, now=0.0)
        await store.claim("stale", 1, token_hash="b" * 64, previous_token_hash=HASH)
        await store.write("gap", 1, append=batch(1, 1))
        results = await store.write_many(
            [
                Write("good", 1, batch(1, 3), acked=1, rx=7),
                Write("stale", 1, batch(1, 1)),
                Write("gap", 1, batch(3, 3)),  # skips 2
                Write("nope", 1, rx=1),
            ]
        )
        assert results[0] is None
        assert isinstance(results[1], Fenced)
        assert isinstance(results[2], StoreError)
        assert not isinstance(results[2], Fenced)
        assert isinstance(results[3], UnknownSession)
        good = await store.load("good")
        assert good is not None
        assert (good.tx, good.acked, good.rx) == (3, 1, 7)
        assert await store.messages("good", after=0) == batch(2, 3)
        assert await store.messages("stale", after=0) == []
        assert await store.messages("gap", after=0) == batch(1, 1)
        assert await store.write_many([]) == []

    async def test_write_many_checks_acks_and_keeps_counters_as_write_does(
        self, store: SessionStore
    ) -> None:
        """write_many(): acks beyond tx refused, lower acks and rx ignored, as write() does."""
        for sid in ("beyond", "beyond-append", "lower", "exact"):
            await store.create(sid, token_hash=HASH, principal=None, now=0.0)
            await store.write(sid, 1, append=batch(1, 3), acked=2, rx=5)
        results = await store.write_many(
            [
                Write("beyond", 1, acked=4),
                Write("beyond-append", 1, batch(4, 4), acked=5, rx=9),
                Write("lower", 1, batch(4, 5), acked=1, rx=2),
                Write("exact", 1, acked=3, rx=6),
            ]
        )
        assert isinstance(results[0], StoreError)
        assert isinstance(results[1], StoreError)
        assert not isinstance(results[1], Fenced)
        assert results[2:] == [None, None]
        for sid in ("beyond", "beyond-append"):  # refused: nothing of it happened
            record = await store.load(sid)
            assert record is not None
            assert (record.tx, record.acked, record.rx) == (3, 2, 5)
            assert await store.messages(sid, after=0) == batch(3, 3)
        lower = await store.load("lower")
        assert lower is not None
        assert (lower.tx, lower.acked, lower.rx) == (5, 2, 5)
        assert await store.messages("lower", after=0) == batch(3, 5)
        exact = await store.load("exact")
        assert exact is not None
        assert (exact.tx, exact.acked, exact.rx) == (3, 3, 6)
        assert await store.messages("exact", after=0) == []

    async def test_write_many_detaches_after_the_batch(self, store: SessionStore) -> None:
        """A write with ``detach_at``: the batch, then the expiry clock, as detach() would."""
        for sid in ("both", "only", "stale"):
            await store.create(sid, token_hash=HASH, principal=None, now=0.0)
        await store.claim("stale", 1, token_hash="b" * 64, previous_token_hash=HASH)
        results = await store.write_many(
            [
                Write("both", 1, batch(1, 2), acked=1, rx=4, detach_at=50.0),
                Write("only", 1, detach_at=60.0),
                Write("stale", 1, detach_at=70.0),
            ]
        )
        assert results[:2] == [None, None]
        assert isinstance(results[2], Fenced)
        both = await store.load("both")
        assert both is not None
        assert (both.tx, both.acked, both.rx, both.expires_at) == (2, 1, 4, 50.0)
        assert await store.messages("both", after=0) == batch(2, 2)
        only = await store.load("only")
        assert only is not None
        assert (only.tx, only.expires_at) == (0, 60.0)
        assert (await store.load("stale")).expires_at is None  # type: ignore[union-attr]
        assert await store.expire(55.0) == 1  # "both" ended its window; "only" not yet


class SharedStoreConformance:
    """Orphan expiry, for stores that several processes share (SQLite, Redis).

    Needs a ``store`` fixture and an ``other`` fixture: a second instance on the
    same backend, as another server process (another node) would open it.
    """

    async def test_orphans_expire_once_the_last_renewal_ran_out(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """A node that stopped renewing: its attached sessions go, messages and all."""
        assert store.node != other.node
        await store.create("created", token_hash=HASH, principal=None, now=0.0)
        await store.write("created", 1, append=batch(1, 3))
        await other.create("claimed", token_hash=HASH, principal=None, now=0.0)
        await store.claim("claimed", 1, token_hash=HASH, previous_token_hash=HASH)
        await other.create("resumed", token_hash=HASH, principal=None, now=0.0)
        await store.resume("resumed", lambda r: True, token_hash=HASH, previous_token_hash=HASH)
        await store.renew(100.0)
        await other.renew(1000.0)
        assert await other.expire(99.0) == 0  # renewed until 100: alive
        assert await other.expire(100.0) == 3
        for sid in ("created", "claimed", "resumed"):
            assert await other.load(sid) is None
            with pytest.raises(UnknownSession):
                await other.messages(sid, after=0)

    async def test_a_renewal_keeps_the_sessions(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """Only the last renewal counts: a live node's sessions stay."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.renew(100.0)
        await store.renew(300.0)
        assert await other.expire(200.0) == 0
        assert await other.load(SID) is not None
        assert await other.expire(300.0) == 1

    async def test_a_session_claimed_by_a_live_node_is_kept(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """The client came back to another node: the session is that node's now."""
        await store.create("by-claim", token_hash=HASH, principal=None, now=0.0)
        await store.create("by-resume", token_hash=HASH, principal=None, now=0.0)
        await store.renew(100.0)
        await other.claim("by-claim", 1, token_hash=HASH, previous_token_hash=HASH)
        await other.resume("by-resume", lambda r: True, token_hash=HASH, previous_token_hash=HASH)
        await other.renew(1000.0)
        assert await other.expire(200.0) == 0
        assert await other.load("by-claim") is not None
        assert await other.load("by-resume") is not None

    async def test_a_detached_session_keeps_its_own_expiry(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """Detached before its node died: it expires at its own ``expires_at``, once."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.detach(SID, 1, expires_at=500.0)
        await store.renew(100.0)
        assert await other.expire(200.0) == 0
        assert await other.load(SID) is not None
        assert await other.expire(500.0) == 1

    async def test_sessions_of_a_node_that_never_renewed_are_kept(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """No renewal on record: nothing says the node is gone (nor when it went)."""
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await other.renew(50.0)
        assert await other.expire(1e12) == 0
        assert await other.load(SID) is not None

    async def test_a_node_renewing_after_it_was_taken_for_dead(
        self, store: SessionStore, other: SessionStore
    ) -> None:
        """Its old sessions are gone; what it attaches after its new renewal stays."""
        await store.create("before", token_hash=HASH, principal=None, now=0.0)
        await store.renew(100.0)
        assert await other.expire(150.0) == 1
        await store.renew(400.0)
        await store.create("after", token_hash=HASH, principal=None, now=200.0)
        assert await other.expire(300.0) == 0
        assert await other.load("after") is not None
        with pytest.raises(UnknownSession):
            await store.write("before", 1, append=batch(1, 1))
