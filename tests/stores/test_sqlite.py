"""The SQLite store: conformance, durability across reopen and a SIGKILLed writer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import math
import os
import random
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tether.exceptions import ConfigurationError, StoreError
from tether.stores import sqlite as sqlite_module
from tether.stores.base import (
    Fenced,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoredMessage,
    StoreUnavailable,
    Write,
)
from tether.stores.sqlite import SCHEMA_VERSION, SQLiteStore, _Job

from .conformance import HASH, SID, SharedStoreConformance, StoreConformance, batch
from .restart_scenario import resume_after_restart


class TestSQLiteStore(StoreConformance, SharedStoreConformance):
    """Conformance of :class:`SQLiteStore` (``other``: another process's store on the file)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SessionStore]:
        """A fresh SQLite store in a temporary file."""
        store = SQLiteStore(tmp_path / "sessions.db")
        yield store
        await store.close()

    @pytest.fixture
    async def other(self, store: SQLiteStore) -> AsyncIterator[SessionStore]:
        """A second store on the same file."""
        other = SQLiteStore(store.path)
        yield other
        await other.close()


class TestSQLiteStoreWritingInBulk(TestSQLiteStore):
    """The same conformance with every write_many write run as bulk statements.

    (By default only runs of four writes or more of a commit group take that path.)
    """

    @pytest.fixture(autouse=True)
    def every_write_in_bulk(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sqlite_module, "_BULK_MIN", 1)


class TestSQLiteStoreWithoutBulk(TestSQLiteStore):
    """The same conformance on an SQLite without what bulk statements need (before 3.33)."""

    @pytest.fixture(autouse=True)
    def no_bulk(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sqlite_module, "_bulk_supported", lambda db: False)


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    """Closing and reopening the file gives back the epoch, records and held messages."""
    path = tmp_path / "sessions.db"
    first = SQLiteStore(path)
    await first.create(SID, token_hash=HASH, principal="alice", now=1.5)
    written = await first.write(SID, 1, append=batch(1, 5), acked=2, rx=7)
    await first.detach(SID, 1, expires_at=121.5)
    epoch = await first.epoch()
    await first.close()

    second = SQLiteStore(path)
    try:
        assert await second.epoch() == epoch
        loaded = await second.load(SID)
        assert loaded == dataclasses.replace(written, expires_at=121.5)
        assert await second.messages(SID, after=0) == batch(3, 5)
    finally:
        await second.close()


async def test_new_file_new_epoch(tmp_path: Path) -> None:
    """A different (or deleted and recreated) file has a different epoch."""
    first, second = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    try:
        assert await first.epoch() != await second.epoch()
    finally:
        await first.close()
        await second.close()


async def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    """The database file is switched to write-ahead logging."""
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path)
    await store.epoch()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_store_connection_syncs_fully(tmp_path: Path) -> None:
    """The store's own connection runs with synchronous = FULL (2): a COMMIT is on disk."""
    seen: list[int] = []

    class Watched(SQLiteStore):
        def _thread_connect(self) -> sqlite3.Connection:
            db = super()._thread_connect()
            # (synchronous is per connection: ask the store's own, on its thread)
            seen.append(db.execute("PRAGMA synchronous").fetchone()[0])
            return db

    store = Watched(tmp_path / "sessions.db")
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    finally:
        await store.close()
    assert seen
    assert set(seen) == {2}


async def test_newer_schema_refused(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused, not misread."""
    path = tmp_path / "sessions.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(path)
    try:
        with pytest.raises(StoreError, match="schema version"):
            await store.epoch()
    finally:
        await store.close()


# The schema version 1 wrote (before orphan expiry), to check the upgrade.
_SCHEMA_1 = """
CREATE TABLE store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    sid TEXT PRIMARY KEY, token_hash TEXT NOT NULL, previous_token_hash TEXT, principal TEXT,
    generation INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL,
    tx INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0,
    rx INTEGER NOT NULL DEFAULT 0, lost TEXT
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE messages (
    sid TEXT NOT NULL, seq INTEGER NOT NULL, is_text INTEGER NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (sid, seq)
) WITHOUT ROWID;
INSERT INTO store_info VALUES ('epoch', 'e1');
INSERT INTO sessions (sid, token_hash, generation, created_at, tx) VALUES ('old', 'h', 1, 5.0, 1);
INSERT INTO messages VALUES ('old', 1, 1, X'6869');
PRAGMA user_version = 1;
"""


async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """Sessions, messages and the epoch stay; the file gains owners, renewals, ends, attempts."""
    path = tmp_path / "sessions.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_SCHEMA_1)
    store = SQLiteStore(path)
    try:
        assert await store.epoch() == "e1"
        assert (await store.load("old")).tx == 1  # type: ignore[union-attr]
        assert await store.messages("old", after=0) == [StoredMessage(1, "hi")]
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.renew(100.0)
        # Orphan expiry works on the upgraded file; the session from version 1 names
        # no owner, so it is never taken for an orphan.
        assert await store.expire(200.0) == 1
        assert await store.load(SID) is None
        assert await store.load("old") is not None
        # So does recording an ended session (SessionStore.end).
        await store.end("old", 1, code=4000, reason="done")
        old = await store.load("old")
        assert old is not None
        assert (old.end_code, old.end_reason, old.tx) == (4000, "done", 1)
        # And numbering hellos: the old session starts at 0 and keeps a claim's number.
        assert old.attempt == 0
        claimed = await store.claim("old", 1, token_hash=HASH, previous_token_hash="h", attempt=4)
        assert claimed.attempt == 4
        assert await store.load("old") == claimed
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        # Still version 1: an older tether (a rollback) opens it and ignores the rest.
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
        columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
        assert {"owner", "owner_generation", "end_code", "end_reason", "attempt"} <= columns


async def test_an_older_tethers_claim_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    """A claim that does not record its node (an older tether) still moves the session on."""
    path = tmp_path / "sessions.db"
    store, sweeper = SQLiteStore(path), SQLiteStore(path)
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        await store.renew(100.0)
        with contextlib.closing(sqlite3.connect(path)) as db, db:  # what its claim changes
            db.execute("UPDATE sessions SET generation = generation + 1, expires_at = NULL")
        assert await sweeper.expire(200.0) == 0
        assert await sweeper.load(SID) is not None
    finally:
        await store.close()
        await sweeper.close()


async def test_two_stores_on_one_file_fence_each_other(tmp_path: Path) -> None:
    """Two processes sharing the file: a claim through one fences writes through the other."""
    path = tmp_path / "sessions.db"
    node_a, node_b = SQLiteStore(path), SQLiteStore(path)
    try:
        await node_a.create(SID, token_hash=HASH, principal=None, now=0.0)
        await node_a.write(SID, 1, append=batch(1, 2))
        await node_b.claim(SID, 1, token_hash="b" * 64, previous_token_hash=HASH)
        with pytest.raises(Fenced):
            await node_a.write(SID, 1, append=batch(3, 3))
        assert (await node_b.write(SID, 2, append=batch(3, 3))).tx == 3
    finally:
        await node_a.close()
        await node_b.close()


async def test_unavailable_then_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that cannot be opened raises StoreUnavailable, logged once; it recovers later."""
    directory = tmp_path / "missing"
    store = SQLiteStore(directory / "sessions.db")
    caplog.set_level(logging.WARNING, logger="tether.store")
    try:
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as caught:
                await store.load(SID)
            assert isinstance(caught.value.__cause__, sqlite3.Error)
        directory.mkdir()
        assert await store.load(SID) is None
    finally:
        await store.close()
    levels = [record.levelname for record in caplog.records]
    assert levels == ["ERROR", "WARNING"]
    assert "recovered" in caplog.records[1].getMessage()


@pytest.mark.timeout(10)
async def test_waiting_for_the_lock_does_not_block_the_loop(tmp_path: Path) -> None:
    """While another process holds the write lock, the event loop keeps running."""
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, busy_timeout=5.0)
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.write(SID, 1, append=batch(1, 1)))
        ticks = 0
        for _ in range(20):  # 20 loop turns of 10 ms while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        other.execute("COMMIT")
        assert (await asyncio.wait_for(write, 5.0)).tx == 1
        assert ticks == 20
    finally:
        other.close()
        await store.close()


@pytest.mark.timeout(10)
async def test_a_lock_held_past_busy_timeout_is_store_busy(tmp_path: Path) -> None:
    """Another writer holding the lock too long: StoreBusy (a StoreUnavailable), nothing done.

    The resume layer tells a client 1013 for it instead of losing its session.
    """
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusy) as caught:
            await store.resume(
                SID, lambda record: True, token_hash="b" * 64, previous_token_hash=HASH
            )
        assert isinstance(caught.value, StoreUnavailable)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        other.execute("COMMIT")
        record = await store.load(SID)
        assert record is not None
        assert (record.generation, record.token_hash) == (1, HASH)  # the claim did not happen
    finally:
        other.close()
        await store.close()


async def test_a_failure_that_is_not_a_lock_is_not_store_busy(tmp_path: Path) -> None:
    """A path that cannot be opened (a directory) is unavailable, not busy."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    store = SQLiteStore(directory)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.load(SID)
        assert not isinstance(caught.value, StoreBusy)
    finally:
        await store.close()


# A writer process: appends numbered batches and prints each committed tx, until killed.
WRITER = """
import asyncio, sys
from tether.stores.base import StoredMessage
from tether.stores.sqlite import SQLiteStore

async def main(path):
    store = SQLiteStore(path)
    await store.create("s", token_hash="a" * 64, principal=None, now=0.0)
    tx = 0
    while True:
        batch = [StoredMessage(seq, f"m{seq}") for seq in range(tx + 1, tx + 11)]
        record = await store.write("s", 1, append=batch, acked=max(0, tx - 50), rx=tx)
        tx = record.tx
        print(tx, flush=True)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_sigkilled_writer_loses_nothing_committed(tmp_path: Path) -> None:
    """A writer SIGKILLed mid-stream: the reopened file holds every write that returned."""
    path = tmp_path / "sessions.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        last_committed = 0
        while last_committed < 500:  # bounded by the count and by wait_for
            line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
            assert line, "the writer exited early"
            last_committed = int(line)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 5.0)
        # The writer runs ahead of this reader: the lines still in the pipe are writes
        # that returned before the kill, so the last of them is the real last commit.
        rest = await asyncio.wait_for(proc.stdout.read(), 5.0)
        for line in rest.split():
            last_committed = int(line)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert last_committed >= 500

    store = SQLiteStore(path)
    try:
        record = await store.load("s")
        assert record is not None
        # Every write that returned is there; at most the one batch in flight more.
        assert last_committed <= record.tx <= last_committed + 10
        held = await store.messages("s", after=0)
        assert [m.seq for m in held] == list(range(record.acked + 1, record.tx + 1))
        assert all(m.payload == f"m{m.seq}" for m in held)
        assert record.rx == record.tx - 10
    finally:
        await store.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A store on a new file, closed after the test."""
    store = SQLiteStore(tmp_path / "sessions.db")
    yield store
    await store.close()


async def test_concurrent_writes_share_commits(store: SQLiteStore) -> None:
    """Writes of 50 sessions queued in one loop turn take far fewer than 50 commits."""
    sids = [f"s{number}" for number in range(50)]
    for sid in sids:
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    before = store.transactions
    records = await asyncio.gather(*(store.write(sid, 1, append=batch(1, 3)) for sid in sids))
    assert [record.tx for record in records] == [3] * 50
    assert store.transactions - before <= 5


async def test_a_group_wakes_the_event_loop_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answering a group of 500 writes takes one call_soon_threadsafe, not 500.

    Each such call writes a byte to the loop's self-pipe, which holds a few hundred:
    a full pipe loses the signals asyncio reads from it (a handover's SIGHUP).
    """
    sids = [f"s{number}" for number in range(500)]
    for sid in sids:
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    wakeups = count_calls(monkeypatch, asyncio.get_running_loop(), "call_soon_threadsafe")
    before = store.transactions
    records = await asyncio.gather(*(store.write(sid, 1, append=batch(1, 2)) for sid in sids))
    assert [record.tx for record in records] == [2] * 500
    assert len(wakeups) == store.transactions - before
    assert len(wakeups) <= 5


async def test_write_many_is_one_group_answered_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_many() of 200 sessions: one transaction, one wake-up, one future for all."""
    sids = [f"s{number}" for number in range(200)]
    for sid in sids:
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    loop = asyncio.get_running_loop()
    wakeups = count_calls(monkeypatch, loop, "call_soon_threadsafe")
    futures = count_calls(monkeypatch, loop, "create_future")
    before = store.transactions
    results = await store.write_many([Write(sid, 1, batch(1, 2), rx=5) for sid in sids])
    assert results == [None] * 200
    assert (store.transactions - before, len(wakeups), len(futures)) == (1, 1, 1)
    record = await store.load("s199")
    assert record is not None
    assert (record.tx, record.rx) == (2, 5)


async def test_write_many_reports_a_backend_failure_per_write(tmp_path: Path) -> None:
    """A database that cannot be opened: every write of the call gets StoreUnavailable."""
    store = SQLiteStore(tmp_path / "missing" / "sessions.db")
    try:
        results = await store.write_many([Write("a", 1, rx=1), Write("b", 1, rx=1)])
        assert [type(result) for result in results] == [StoreUnavailable, StoreUnavailable]
        assert all(isinstance(result.__cause__, sqlite3.Error) for result in results)
    finally:
        await store.close()


async def test_a_full_database_is_reported_as_full(tmp_path: Path) -> None:
    """SQLITE_FULL rolls the transaction back by itself: the error says "full", not "rollback"."""

    class Capped(SQLiteStore):
        def _thread_connect(self) -> sqlite3.Connection:
            fresh = self._connection is None
            db = super()._thread_connect()
            if fresh:  # a file that may grow by three pages: a full disk, in small
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages + 3}")
            return db

    store = Capped(tmp_path / "sessions.db")
    try:
        await store.create(SID, token_hash=HASH, principal=None, now=0.0)
        failure: StoreUnavailable | None = None
        for seq in range(1, 100):
            try:
                await store.write(SID, 1, append=[StoredMessage(seq, os.urandom(3000))])
            except StoreUnavailable as exc:
                failure = exc
                break
        assert failure is not None
        assert "database or disk is full" in str(failure)
        # The store still answers: the session holds what was committed before.
        record = await store.load(SID)
        assert record is not None
        assert 1 <= record.tx < 99
    finally:
        await store.close()


async def test_write_many_refuses_an_inconsistent_batch_before_the_thread(
    store: SQLiteStore,
) -> None:
    """A batch whose seqs skip is refused at once; the call's other writes still land."""
    for sid in ("a", "b"):
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    skipping = [StoredMessage(1, "x"), StoredMessage(3, "y")]
    before = store.transactions
    results = await store.write_many([Write("a", 1, skipping), Write("b", 1, batch(1, 1))])
    assert isinstance(results[0], StoreError)
    assert results[1] is None
    assert store.transactions - before == 1
    results = await store.write_many([Write("a", 1, skipping)])
    assert isinstance(results[0], StoreError)
    assert store.transactions - before == 1  # nothing left to send to the thread
    assert await store.messages("a", after=0) == []


async def test_resume_is_one_transaction_judged_on_the_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resume(): load, judgement, claim and replay in one transaction, answered once."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    await store.write(SID, 1, append=batch(1, 3), acked=1)
    await store.detach(SID, 1, expires_at=50.0)
    statements = trace_statements(store)
    wakeups = count_calls(monkeypatch, asyncio.get_running_loop(), "call_soon_threadsafe")
    before = store.transactions
    judged_on: list[int] = []

    def admit(record: SessionRecord) -> bool:
        judged_on.append(threading.get_ident())
        return True

    record, messages = await store.resume(SID, admit, token_hash="b" * 64, previous_token_hash=HASH)
    assert record is not None
    assert (record.generation, messages) == (2, batch(2, 3))
    assert (store.transactions - before, len(wakeups)) == (1, 1)
    assert len(judged_on) == 1
    assert judged_on[0] != threading.get_ident()
    assert [q.split()[0] for q in statements] == [
        "BEGIN",
        "SELECT",  # the session's row, judged
        "UPDATE",  # the claim
        "SELECT",  # the replay
        "COMMIT",
    ]


async def test_resume_whose_judgement_fails_changes_nothing(store: SQLiteStore) -> None:
    """An exception from ``admit`` reaches the caller; the session is not claimed."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)

    def admit(record: SessionRecord) -> bool:
        raise RuntimeError("judge broke")

    with pytest.raises(RuntimeError, match="judge broke"):
        await store.resume(SID, admit, token_hash="b" * 64, previous_token_hash=HASH)
    record = await store.load(SID)
    assert record is not None
    assert (record.generation, record.token_hash) == (1, HASH)


def count_calls(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> list[None]:
    """Count the calls of ``target.name`` from now on: the list grows by one per call."""
    calls: list[None] = []
    original = getattr(target, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, counting)
    return calls


_T = TypeVar("_T")


def on_store_thread(
    store: SQLiteStore, function: Callable[[], _T]
) -> concurrent.futures.Future[_T]:
    """Run ``function`` on the store's (started) thread, after what is queued there."""
    done: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(function())
        except BaseException as exc:
            done.set_exception(exc)

    assert store._thread is not None
    store._tasks.put(run)
    return done


def hold_thread(store: SQLiteStore) -> threading.Event:
    """Keep the store's thread busy until the event is set: calls queue into one group."""
    release = threading.Event()
    on_store_thread(store, lambda: release.wait(5.0))
    return release


def trace_statements(store: SQLiteStore) -> list[str]:
    """The SQL the store's connection runs from now on (traced on the store's thread)."""
    statements: list[str] = []
    connection = store._connection
    assert connection is not None
    on_store_thread(store, lambda: connection.set_trace_callback(statements.append)).result(5.0)
    return statements


async def test_refused_operation_in_a_group_is_alone(store: SQLiteStore) -> None:
    """A fenced write committed together with a good one changes nothing; the good one lands.

    It is refused before it changes anything, so the group commits once, with no
    rollback and no second attempt.
    """
    for sid in ("stale", "good"):
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    await store.claim("stale", 1, token_hash="b" * 64, previous_token_hash=HASH)
    statements = trace_statements(store)
    release = hold_thread(store)
    calls = asyncio.gather(
        store.write("stale", 1, append=batch(1, 2)),
        store.write("good", 1, append=batch(1, 2)),
        return_exceptions=True,
    )
    await asyncio.sleep(0)
    assert len(store._pending) == 2  # one group
    release.set()
    stale, good = await calls
    assert [q for q in statements if q in ("BEGIN IMMEDIATE", "ROLLBACK", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    assert isinstance(stale, Fenced)
    assert isinstance(good, SessionRecord)
    assert good.tx == 2
    assert (await store.load("stale")).tx == 0  # type: ignore[union-attr]
    assert await store.messages("stale", after=0) == []
    assert await store.messages("good", after=0) == batch(1, 2)


@pytest.mark.parametrize("error", [StoreError("refused late"), RuntimeError("a bug")])
async def test_operation_failing_after_a_change_is_rolled_back_alone(
    store: SQLiteStore, error: Exception
) -> None:
    """An operation that changed a row and then raised leaves no trace; the group still lands.

    The group runs without a SAVEPOINT per operation (every operation checks before it
    changes); one that breaks that rule puts the group in doubt: the group is rolled
    back, that operation fails, and the others run again as one group.
    """
    for sid in ("good", "faulty", "later"):
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)

    def change_then_fail(db: sqlite3.Connection) -> None:
        db.execute("UPDATE sessions SET tx = 99 WHERE sid = 'faulty'")
        raise error

    statements = trace_statements(store)
    release = hold_thread(store)
    calls = asyncio.gather(
        store.write("good", 1, append=batch(1, 2)),
        store._call("test", change_then_fail),
        store.write("later", 1, append=batch(1, 3)),
        return_exceptions=True,
    )
    await asyncio.sleep(0)
    assert len(store._pending) == 3  # one group
    release.set()
    good, faulty, later = await calls
    # The group, rolled back; then the two good writes as one group, committed once.
    assert [q for q in statements if q in ("BEGIN IMMEDIATE", "ROLLBACK", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "ROLLBACK",
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    assert type(faulty) is type(error)
    assert isinstance(good, SessionRecord)
    assert isinstance(later, SessionRecord)
    assert (good.tx, later.tx) == (2, 3)
    assert (await store.load("faulty")).tx == 0  # type: ignore[union-attr]
    assert await store.messages("good", after=0) == batch(1, 2)
    assert await store.messages("later", after=0) == batch(1, 3)


async def test_session_resumes_after_server_restart(tmp_path: Path) -> None:
    """A server restarted on the same file resumes the session: nothing lost or doubled."""
    path = tmp_path / "sessions.db"

    async def reopen() -> SessionStore:
        return SQLiteStore(path)

    got_by_client, got_by_server = await resume_after_restart(SQLiteStore(path), reopen, now=0.0)
    assert got_by_client == ["s1", b"s2", "s3"]
    assert got_by_server == ["c1", "c2", "c3"]


async def test_epoch_is_read_once_per_connection(tmp_path: Path) -> None:
    """Asking again costs no trip to the store's thread; a new connection reads it again."""
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path)
    try:
        first = await store.epoch()
        transactions = store.transactions
        assert [await store.epoch() for _ in range(3)] == [first] * 3
        assert store.transactions == transactions
        # The connection dropped (as after an I/O error) and the file replaced meanwhile.
        await asyncio.wrap_future(on_store_thread(store, store._disconnect))
        for suffix in ("", "-wal", "-shm"):  # the last close removes the WAL files
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        assert await store.epoch() != first
    finally:
        await store.close()


async def test_close_joins_the_stores_thread(tmp_path: Path) -> None:
    """After close() the store's thread is gone; the next operation is refused, not queued."""
    before = set(threading.enumerate())
    store = SQLiteStore(tmp_path / "sessions.db")
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    assert len(set(threading.enumerate()) - before) == 1  # the store's own
    await store.close()
    assert set(threading.enumerate()) - before == set()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.load(SID)
    (refused,) = await store.write_many([Write(SID, 1, batch(1, 1))])
    assert isinstance(refused, StoreError)
    assert "closed" in str(refused)


async def test_close_answers_what_was_queued_before_it(store: SQLiteStore) -> None:
    """An operation queued while the thread was busy still runs, then close() returns."""
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    release = hold_thread(store)
    write = asyncio.ensure_future(store.write(SID, 1, append=batch(1, 2)))
    await asyncio.sleep(0)  # (the write queued)
    close = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(close, 5.0)
    assert (await write).tx == 2
    reopened = SQLiteStore(store.path)
    try:
        assert await reopened.messages(SID, after=0) == batch(1, 2)
    finally:
        await reopened.close()


async def test_a_store_never_used_closes_without_a_thread(tmp_path: Path) -> None:
    """Nothing touched the file: close() starts no thread to stop it."""
    before = set(threading.enumerate())
    store = SQLiteStore(tmp_path / "sessions.db")
    await store.close()
    assert set(threading.enumerate()) == before
    assert not (tmp_path / "sessions.db").exists()


async def test_a_store_dropped_unclosed_stops_its_thread(tmp_path: Path) -> None:
    """The thread keeps no store alive: once the store is collected, its thread ends."""
    store = SQLiteStore(tmp_path / "sessions.db")
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    thread = store._thread
    assert thread is not None
    del store
    gc.collect()
    thread.join(5.0)
    assert not thread.is_alive()


async def test_a_closed_loop_in_a_group_does_not_stop_the_others(store: SQLiteStore) -> None:
    """An operation whose event loop closed before its answer: the rest of its group is answered.

    (Raising there left the other loops' callers of the group waiting forever.)
    """
    await store.create(SID, token_hash=HASH, principal=None, now=0.0)
    gone = asyncio.new_event_loop()
    release = hold_thread(store)
    store._enqueue([_Job(lambda db: None, False, gone, gone.create_future())])
    gone.close()
    write = asyncio.ensure_future(store.write(SID, 1, append=batch(1, 1)))
    await asyncio.sleep(0)
    assert len(store._pending) == 2  # one group, the closed loop's first
    release.set()
    assert (await asyncio.wait_for(write, 5.0)).tx == 1
    assert (await store.load(SID)).tx == 1  # type: ignore[union-attr]


# A process that uses a store and exits without closing it (the store still referenced).
UNCLOSED = """
import asyncio, sys
from tether.stores.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
asyncio.run(store.create("s", token_hash="a" * 64, principal=None, now=0.0))
print("created", flush=True)
"""


async def _run_python(script: str, path: Path) -> tuple[int | None, bytes]:
    """Run ``script`` with ``path`` as its argument in a new interpreter (bounded, killed
    by its PID if it hangs); its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_a_process_exits_with_a_store_left_open(tmp_path: Path) -> None:
    """The store's thread is no daemon, yet it does not keep the process from exiting."""
    path = tmp_path / "sessions.db"
    assert await _run_python(UNCLOSED, path) == (0, b"created\n")
    store = SQLiteStore(path)
    try:
        assert (await store.load("s")) is not None
    finally:
        await store.close()


# A store used before a fork, then in the child (a pre-forking server that opened its
# store first): the child gets a thread of its own; the parent's store still works after.
USED_THEN_FORKED = """
import asyncio, os, signal, sys
from tether.stores.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
asyncio.run(store.create("before", token_hash="a" * 64, principal=None, now=0.0))
pid = os.fork()
if pid == 0:
    signal.alarm(5)  # a child that hangs ends by itself (and the parent reports it)
    asyncio.run(store.create("child", token_hash="a" * 64, principal=None, now=0.0))
    asyncio.run(store.close())
    os._exit(0)
_, status = os.waitpid(pid, 0)
asyncio.run(store.create("parent", token_hash="a" * 64, principal=None, now=0.0))
asyncio.run(store.close())
print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.integration
@pytest.mark.timeout(20)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_store_used_before_a_fork_works_in_the_child(tmp_path: Path) -> None:
    """The parent's thread does not come along with a fork: the child starts its own
    (before: the child's first operation was queued for a thread that was not there,
    and waited for ever)."""
    path = tmp_path / "sessions.db"
    assert await _run_python(USED_THEN_FORKED, path) == (0, b"0\n")
    store = SQLiteStore(path)
    try:
        for sid in ("before", "child", "parent"):
            assert await store.load(sid) is not None, sid
    finally:
        await store.close()


# A store built before a fork and first used in the child (a pre-forking server): the
# thread is started there, on first use; the parent's store still works after.
FORKED = """
import asyncio, os, sys
from tether.stores.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
pid = os.fork()
if pid == 0:
    asyncio.run(store.create("child", token_hash="a" * 64, principal=None, now=0.0))
    os._exit(0)
_, status = os.waitpid(pid, 0)
asyncio.run(store.create("parent", token_hash="a" * 64, principal=None, now=0.0))
print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.integration
@pytest.mark.timeout(20)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_store_built_before_a_fork_works_in_the_child(tmp_path: Path) -> None:
    """Nothing started before the first operation: the child starts its own thread."""
    path = tmp_path / "sessions.db"
    assert await _run_python(FORKED, path) == (0, b"0\n")
    store = SQLiteStore(path)
    try:
        assert await store.load("child") is not None
        assert await store.load("parent") is not None
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (None, "must be a str or os.PathLike, not NoneType"),
        (5, "must be a str or os.PathLike, not int"),
        (b"s.db", "must be text"),
        ("", "is not a file; use MemoryStore"),
        (":memory:", "is not a file; use MemoryStore"),
        ("s\0.db", "NUL character"),
    ],
)
def test_a_path_that_is_not_a_file_is_refused(path: object, message: str) -> None:
    """Refused when the store is built, not as a raw error at its first operation."""
    with pytest.raises(ConfigurationError, match=message):
        SQLiteStore(path)  # type: ignore[arg-type]


@pytest.mark.parametrize("busy_timeout", [math.nan, math.inf, -1.0, "5", True, None])
def test_a_bad_busy_timeout_is_refused(tmp_path: Path, busy_timeout: object) -> None:
    """NaN, inf, negatives and non-numbers: ConfigurationError naming busy_timeout."""
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SQLiteStore(tmp_path / "s.db", busy_timeout=busy_timeout)  # type: ignore[arg-type]


# -- a commit group's writes as bulk statements (_thread_bulk_writes) -----------------------


@contextlib.asynccontextmanager
async def bulk_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk: bool, count: int
) -> AsyncIterator[tuple[SQLiteStore, list[str], list[tuple[int, bool]]]]:
    """A store on a new file, with or without bulk statements, its ``count`` sessions
    (see :func:`sessions`) and its bulk attempts (see :func:`spy_bulk`)."""
    monkeypatch.setattr(sqlite_module, "_bulk_supported", lambda db: bulk)
    attempts = spy_bulk(monkeypatch)
    store = SQLiteStore(tmp_path / ("bulk.db" if bulk else "one-by-one.db"))
    try:
        yield store, await sessions(store, count), attempts
    finally:
        await store.close()


async def sessions(store: SQLiteStore, count: int) -> list[str]:
    """``count`` new sessions "s0", "s1", ... at generation 1, nothing written yet."""
    sids = [f"s{number}" for number in range(count)]
    for sid in sids:
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    return sids


def spy_bulk(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(writes, written) per bulk attempt from now on."""
    attempts: list[tuple[int, bool]] = []
    original = sqlite_module._thread_bulk_writes

    def spying(db: sqlite3.Connection, rows: Any) -> bool:
        written = original(db, rows)
        attempts.append((len(rows.updates), written))
        return written

    monkeypatch.setattr(sqlite_module, "_thread_bulk_writes", spying)
    return attempts


def dump(path: str) -> list[tuple[Any, ...]]:
    """Every row of both tables as SQLite holds it, each value with its storage class."""
    db = sqlite3.connect(path)
    try:
        sessions = db.execute(
            "SELECT sid, generation, typeof(generation), tx, typeof(tx), acked, typeof(acked),"
            " rx, typeof(rx), expires_at, typeof(expires_at) FROM sessions ORDER BY sid"
        ).fetchall()
        messages = db.execute(
            "SELECT sid, seq, typeof(seq), is_text, payload, typeof(payload) FROM messages"
            " ORDER BY sid, seq"
        ).fetchall()
    finally:
        db.close()
    return sessions + messages


def mixed_writes(sids: list[str]) -> list[Write]:
    """Writes of every kind write_many takes: text (some with quotes, non-ASCII, NUL),
    binary, acks that trim some of what the same write appends, rx, detaches."""
    writes = []
    for number, sid in enumerate(sids):
        kind = number % 5
        if kind == 0:
            append = [StoredMessage(1, f'tick "{number}" é ✓\n'), StoredMessage(2, "two")]
            writes.append(Write(sid, 1, append, acked=1, rx=number))
        elif kind == 1:
            writes.append(Write(sid, 1, [StoredMessage(1, bytes([number % 256, 0, 255]))]))
        elif kind == 2:
            writes.append(Write(sid, 1, [StoredMessage(1, "nul\x00inside")], rx=3, detach_at=99.25))
        elif kind == 3:
            writes.append(Write(sid, 1, (), rx=7, detach_at=1764300000.123456))
        else:
            writes.append(Write(sid, 1, batch(1, 3), acked=3))
    return writes


async def stored(store: SQLiteStore, sids: list[str]) -> list[object]:
    """Every session's record and held messages."""
    return [(await store.load(sid), await store.messages(sid, after=0)) for sid in sids]


async def test_a_groups_writes_run_as_three_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 sessions' text writes: one UPDATE, one INSERT, one DELETE, not one of each per write.

    What the store holds afterwards is what the same writes leave one by one.
    """
    writes = [
        Write(
            f"s{number}",
            1,
            [StoredMessage(1, f"one s{number}"), StoredMessage(2, "two")],
            acked=1,
            rx=4,
        )
        for number in range(200)
    ]
    results = {}
    for name, bulk in (("bulk", True), ("one by one", False)):
        async with bulk_or_not(tmp_path, monkeypatch, bulk, 200) as (store, sids, _):
            statements = trace_statements(store)
            assert await store.write_many(writes) == [None] * 200
            ran = len(statements)
            results[name] = (await stored(store, sids), ran)
    assert results["bulk"][0] == results["one by one"][0]
    held = results["bulk"][0][0]
    assert isinstance(held, tuple)
    assert held[1] == [StoredMessage(2, "two")]  # what the ack left
    # BEGIN, SAVEPOINT, UPDATE, INSERT, DELETE, RELEASE, COMMIT; one by one, per write:
    # an UPDATE, an INSERT per message and a DELETE.
    assert (results["bulk"][1], results["one by one"][1]) == (7, 2 + 4 * 200)


async def test_bulk_writes_keep_every_kind_of_write_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text with quotes, non-ASCII and NUL, binary, trims, rx, detach times: bulk == one by one."""
    results = {}
    for name, bulk in (("bulk", True), ("one by one", False)):
        async with bulk_or_not(tmp_path, monkeypatch, bulk, 50) as (store, sids, attempts):
            assert await store.write_many(mixed_writes(sids)) == [None] * 50
            results[name] = await stored(store, sids)
        assert attempts == ([(50, True)] if bulk else [])
    assert results["bulk"] == results["one by one"]
    nul_record, nul_messages = results["bulk"][2]  # type: ignore[misc]
    assert nul_messages == [StoredMessage(1, "nul\x00inside")]
    assert nul_record.expires_at == 99.25
    detached, _ = results["bulk"][3]  # type: ignore[misc]
    assert detached.expires_at == 1764300000.123456


async def test_a_refused_write_among_bulk_writes_gets_its_own_answer(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fenced write and one whose seq does not continue tx: each refused alone, the rest land.

    The bulk UPDATE matches fewer sessions than it was given: it is undone and the
    writes run one by one, in the same transaction.
    """
    sids = await sessions(store, 10)
    await store.claim("s3", 1, token_hash="b" * 64, previous_token_hash=HASH)  # now gen 2
    attempts = spy_bulk(monkeypatch)
    before = store.transactions
    writes = [Write(sid, 1, [StoredMessage(1, "one")], rx=1) for sid in sids]
    writes[7] = Write("s7", 1, [StoredMessage(2, "skips tx 1")])
    results = await store.write_many(writes)
    assert isinstance(results[3], Fenced)
    assert isinstance(results[7], StoreError)
    assert not isinstance(results[7], Fenced)
    assert [r for i, r in enumerate(results) if i not in (3, 7)] == [None] * 8
    assert attempts == [(10, False)]
    assert store.transactions - before == 1
    for number, sid in enumerate(sids):
        record = await store.load(sid)
        assert record is not None
        refused = number in (3, 7)
        assert (record.tx, record.rx) == ((0, 0) if refused else (1, 1))
        assert await store.messages(sid, after=0) == ([] if refused else [StoredMessage(1, "one")])


async def test_a_write_that_cannot_be_sent_fails_alone_in_bulk(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session id that is not UTF-8 (a lone surrogate): that write fails, the others land.

    The bulk statements cannot be sent. Run one by one, that write fails with
    something other than a StoreError, which puts the group in doubt, as any such
    failure does: the group runs again without it, in bulk.
    """
    sids = await sessions(store, 6)
    attempts = spy_bulk(monkeypatch)
    writes = [Write(sid, 1, [StoredMessage(1, "one")]) for sid in sids]
    writes.insert(2, Write("bad\ud800", 1, (), rx=1))
    results = await store.write_many(writes)
    assert isinstance(results[2], UnicodeEncodeError)
    assert results[:2] + results[3:] == [None] * 6
    assert attempts == [(7, False), (6, True)]
    for sid in sids:
        assert await store.messages(sid, after=0) == [StoredMessage(1, "one")]


async def test_two_writes_of_a_session_in_one_group_stay_in_order(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two write_many calls queued into one group, the second continuing the first's seqs.

    A bulk UPDATE takes one row per session: the run ends where a session comes
    again, and the second call's writes run as a run of their own, after it.
    """
    sids = await sessions(store, 5)
    attempts = spy_bulk(monkeypatch)
    release = hold_thread(store)
    calls = asyncio.gather(
        store.write_many([Write(sid, 1, [StoredMessage(1, "one")]) for sid in sids]),
        store.write_many([Write(sid, 1, [StoredMessage(2, "two")], acked=1) for sid in sids]),
    )
    await asyncio.sleep(0)
    assert len(store._pending) == 10  # one group
    release.set()
    assert await calls == [[None] * 5, [None] * 5]
    assert attempts == [(5, True), (5, True)]
    for sid in sids:
        record = await store.load(sid)
        assert record is not None
        assert (record.tx, record.acked) == (2, 1)
        assert await store.messages(sid, after=0) == [StoredMessage(2, "two")]


async def test_short_runs_and_other_operations_keep_one_statement_each(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three writes (under _BULK_MIN) between two other operations: no bulk attempt."""
    sids = await sessions(store, 3)
    attempts = spy_bulk(monkeypatch)
    release = hold_thread(store)
    calls = asyncio.gather(
        store.load("s0"),
        store.write_many([Write(sid, 1, [StoredMessage(1, "one")]) for sid in sids]),
        store.detach("s0", 1, expires_at=5.0),
    )
    await asyncio.sleep(0)
    release.set()
    loaded, results, _ = await calls
    assert loaded is not None
    assert results == [None] * 3
    assert attempts == []
    record = await store.load("s0")
    assert record is not None
    assert (record.tx, record.expires_at) == (1, 5.0)
    # One more write in the run and it does go in bulk (so the above is the threshold's).
    await store.create("s3", token_hash=HASH, principal=None, now=0.0)
    writes = [Write(f"s{number}", 1, [StoredMessage(2, "two")]) for number in range(4)]
    writes[3] = Write("s3", 1, [StoredMessage(1, "one")])
    assert await store.write_many(writes) == [None] * 4
    assert attempts == [(4, True)]


def random_writes(rng: random.Random, sids: list[str], tx: dict[str, int]) -> list[Write]:
    """A write_many call's writes: mostly valid, on sessions with counters already set;
    now and then a refused one (wrong generation, a seq that skips, an ack beyond tx)
    or a session twice. ``tx`` is what each session's tx will be if all land."""
    writes = []
    for sid in rng.sample(sids, rng.randint(4, len(sids))):
        refused = rng.random() < 0.08
        first = tx[sid] + 1 + (1 if refused and rng.random() < 0.5 else 0)
        count = rng.choice((0, 0, 1, 1, 2, 3))
        append = [
            StoredMessage(seq, rng.choice((f"t{seq} é", f'q"{seq}\\', b"\x00b", "n\x00ul")))
            for seq in range(first, first + count)
        ]
        top = tx[sid] + count
        acked = rng.choice((None, None, rng.randint(0, top), top, top + (3 if refused else 0)))
        writes.append(
            Write(
                sid,
                2 if refused and rng.random() < 0.5 else 1,
                append,
                acked=acked,
                rx=rng.choice((None, rng.randint(0, 50))),
                detach_at=rng.choice((None, None, rng.uniform(0, 2e9))),
            )
        )
        if rng.random() < 0.05:
            writes.append(Write(sid, 1, (), rx=rng.randint(0, 50)))  # the session again
    return writes


async def test_bulk_writes_leave_what_one_by_one_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 rounds of random write_many calls on two stores, bulk and one by one: the same
    answers, and the same rows with the same storage classes, after every round.

    The sessions carry counters and expiry times from earlier rounds, so the bulk
    UPDATE's max() and coalesce() meet values above and below the writes' own.
    """
    rng = random.Random(7)
    sids = [f"s{number}" for number in range(12)]
    stores: dict[bool, SQLiteStore] = {}
    for bulk in (True, False):
        monkeypatch.setattr(sqlite_module, "_bulk_supported", lambda db, b=bulk: b)
        stores[bulk] = SQLiteStore(tmp_path / f"{bulk}.db")
        for sid in sids:
            await stores[bulk].create(sid, token_hash=HASH, principal=None, now=0.0)
        await stores[bulk].epoch()  # (connected: _bulk_supported asked)
    attempts = spy_bulk(monkeypatch)
    tx = dict.fromkeys(sids, 0)
    try:
        for _ in range(40):
            writes = random_writes(rng, sids, tx)
            answers = {}
            for bulk, store in stores.items():
                answers[bulk] = [type(a) for a in await store.write_many(writes)]
            assert answers[True] == answers[False]
            assert dump(stores[True].path) == dump(stores[False].path)
            for sid in sids:
                record = await stores[True].load(sid)
                assert record is not None
                tx[sid] = record.tx
    finally:
        for store in stores.values():
            await store.close()
    assert sum(1 for _, written in attempts if written) >= 10  # the bulk path did run
    assert any(not written for _, written in attempts)  # and so did its fallback


async def test_a_session_id_with_nul_is_not_taken_for_its_prefix(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's JSON ends a string at NUL: "x\\x00evil" would have become "x". Such a
    write ends the run and goes one by one; "x" stays as it was."""
    sids = ["x", "x\x00evil", "b", "c", "d", "e"]
    for sid in sids:
        await store.create(sid, token_hash=HASH, principal=None, now=0.0)
    attempts = spy_bulk(monkeypatch)
    writes = [Write(sid, 1, [StoredMessage(1, "m")]) for sid in ("b", "c", "d", "e")]
    writes.append(Write("x\x00evil", 1, [StoredMessage(1, "hi")], acked=1, rx=5))
    assert await store.write_many(writes) == [None] * 5
    assert attempts == [(4, True)]
    untouched = await store.load("x")
    written = await store.load("x\x00evil")
    assert untouched is not None
    assert written is not None
    assert (untouched.tx, untouched.rx) == (0, 0)
    assert (written.tx, written.acked, written.rx) == (1, 1, 5)


@pytest.mark.parametrize(
    "odd",
    [
        {"detach_at": math.inf},
        {"detach_at": math.nan},
        {"detach_at": 10**400},
        {"detach_at": "123.5"},
        {"rx": 2**63},
        {"rx": -(2**63) - 1},
        {"detach_at": 10**20},
        {"append": [StoredMessage(None, "no seq")]},  # type: ignore[arg-type]
    ],
    ids=["inf", "nan", "10**400", "str", "2**63", "-2**63-1", "10**20", "seq None"],
)
async def test_an_odd_value_fails_or_lands_as_one_by_one_and_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd: dict[str, Any]
) -> None:
    """A value JSON cannot carry exactly (or at all) among good writes: the good ones land
    in bulk, the odd one gets what it gets one by one, the stores end up the same.

    (One that fails other than with a StoreError puts the group in doubt: it runs
    again without it, in bulk again.)"""
    seen: dict[bool, tuple[list[Any], list[tuple[Any, ...]], list[tuple[int, bool]]]] = {}
    for bulk in (True, False):
        async with bulk_or_not(tmp_path, monkeypatch, bulk, 5) as (store, sids, attempts):
            writes = [Write(sid, 1, [StoredMessage(1, "m")]) for sid in sids[:4]]
            fields: dict[str, Any] = {"append": (), **odd}
            writes.append(Write("s4", 1, **fields))
            results = await store.write_many(writes)
            seen[bulk] = ([type(r) for r in results], dump(store.path), attempts)
    assert seen[True][0] == seen[False][0]
    assert seen[True][0][:4] == [type(None)] * 4
    assert seen[True][1] == seen[False][1]
    assert seen[True][2] in ([(4, True)], [(4, True), (4, True)])


def test_bulk_statements_need_sqlite_3_33_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's SQLite has them; one that says 3.32.3 is not asked to."""
    db = sqlite3.connect(":memory:")
    try:
        assert sqlite3.sqlite_version_info >= (3, 33, 0)
        assert sqlite_module._bulk_supported(db) is True
        monkeypatch.setattr(sqlite_module.sqlite3, "sqlite_version_info", (3, 32, 3))
        assert sqlite_module._bulk_supported(db) is False
    finally:
        db.close()


async def test_json_too_long_to_bind_goes_one_by_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit on bound strings (SQLITE_LIMIT_LENGTH) the group's JSON exceeds: no failure,
    the writes go one by one, each within it."""
    sids = await sessions(store, 4)
    connection = store._connection
    assert connection is not None
    on_store_thread(store, lambda: connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)).result(
        5.0
    )
    attempts = spy_bulk(monkeypatch)
    writes = [Write(sid, 1, [StoredMessage(1, "é" * 400)]) for sid in sids]
    assert await store.write_many(writes) == [None] * 4
    assert attempts == [(4, False)]
    for sid in sids:
        assert await store.messages(sid, after=0) == [StoredMessage(1, "é" * 400)]


async def test_a_run_stops_at_its_share_of_text(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most 250 characters of text per run, eight writes of 100 go as runs of 2:
    under _BULK_MIN, one by one; a long text keeps an INSERT of its own, in bulk."""
    monkeypatch.setattr(sqlite_module, "_BULK_MAX_CHARS", 250)
    monkeypatch.setattr(sqlite_module, "_BULK_TEXT_MAX", 150)
    sids = await sessions(store, 8)
    attempts = spy_bulk(monkeypatch)
    assert (
        await store.write_many([Write(sid, 1, [StoredMessage(1, "a" * 100)]) for sid in sids])
        == [None] * 8
    )
    assert attempts == []
    long = [Write(sid, 1, [StoredMessage(2, "b" * 200)]) for sid in sids]
    assert await store.write_many(long) == [None] * 8
    assert attempts == [(8, True)]
    for sid in sids:
        assert await store.messages(sid, after=0) == [
            StoredMessage(1, "a" * 100),
            StoredMessage(2, "b" * 200),
        ]


@pytest.mark.parametrize("messages", [0, 2], ids=["counters only", "with messages"])
async def test_an_ack_beyond_tx_is_refused_in_a_bulk_run(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, messages: int
) -> None:
    """The guard of the bulk UPDATE refuses an ack beyond the session's tx (after the
    write's own messages) as one by one does: that write alone, the others land."""
    sids = await sessions(store, 5)
    attempts = spy_bulk(monkeypatch)
    writes = [Write(sid, 1, [StoredMessage(1, "m")], acked=1) for sid in sids]
    writes[2] = Write(
        "s2", 1, [StoredMessage(seq, "m") for seq in range(1, messages + 1)], acked=messages + 1
    )
    results = await store.write_many(writes)
    assert isinstance(results[2], StoreError)
    assert results[:2] + results[3:] == [None] * 4
    assert attempts == [(5, False)]
    record = await store.load("s2")
    assert record is not None
    assert (record.tx, record.acked) == (0, 0)
