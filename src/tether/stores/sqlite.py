"""Embedded durable session store on the standard library's :mod:`sqlite3`.

One SQLite file holds every session; it survives a process restart or crash
on the same host (``tether serve`` uses it by default). Choices, and why:

* **WAL mode** (``journal_mode=WAL``): readers do not block the writer and a
  commit appends to the log instead of rewriting pages, so a commit costs one
  sequential write (and one fsync, below).
* **synchronous=FULL**: in WAL mode, ``NORMAL`` only syncs at checkpoints, so a
  power loss or kernel crash may roll back the last commits (an application
  crash cannot). tether promises that a message is in the store *before* it is
  sent and that what the client acknowledged is gone for good; with ``FULL``
  the WAL is fsynced on every commit, so "the write returned" means "it is on
  disk". The cost is one fsync per commit, paid once per event-loop turn
  because the adapter batches a turn's messages into one :meth:`write`.
* **Off the event loop, serialized**: every statement runs on one dedicated
  thread per store (started on first use, stopped and joined by ``close()``;
  it owns the connection), so the loop never blocks on disk and transactions
  never interleave.
* **Group commit**: operations queued while the thread was busy run together
  in one transaction, so the fsync per commit
  limits commits per second, not sessions: a hundred sessions writing in the
  same loop turn share one fsync.
* **Bulk statements** for a group's writes: a run of ``write_many`` writes of
  distinct sessions goes as one UPDATE, one INSERT and one DELETE whose rows travel
  as JSON, since each statement costs the thread a GIL hand-off, which waits while
  the event loop is busy (see :func:`_thread_bulk_writes`).
* **BEGIN IMMEDIATE** for writes: the write lock is taken up front, so two
  processes sharing the file (an old and a new server during a
  ``--reuse-port`` restart) serialize instead of failing at commit; they wait
  up to ``busy_timeout`` seconds for each other.
* **Schema versioned** with ``PRAGMA user_version``; the store epoch is a random
  id written when the schema is created, so a deleted or replaced file yields
  a new epoch (resumes then fail with ``epoch_mismatch``). Columns and tables
  added since version 1 are optional, created when missing, and ignored by an
  older tether: the file still says version 1, so a rollback can open it.
* **Orphans**: each session row names the store instance that attached it
  (``owner``) and the generation it attached (``owner_generation``), and
  ``nodes`` holds each instance's last :meth:`renew`; the expiry removes the
  attached sessions of an instance whose renewal ran out, unless a claim moved
  them on since (an older tether's claim included, which leaves ``owner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import queue
import secrets
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from ..exceptions import ConfigurationError, StoreError
from ._checks import check_batch, check_seconds
from ._incident import IncidentLog
from .base import (
    Fenced,
    Resumption,
    SessionExists,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoredMessage,
    StoreUnavailable,
    UnknownSession,
    Write,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

#: The schema this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE store_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE sessions (
    sid TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    previous_token_hash TEXT,
    principal TEXT,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    tx INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0,
    rx INTEGER NOT NULL DEFAULT 0,
    lost TEXT,
    owner TEXT,
    owner_generation INTEGER,
    end_code INTEGER,
    end_reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE messages (
    sid TEXT NOT NULL,
    seq INTEGER NOT NULL,
    is_text INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (sid, seq)
) WITHOUT ROWID;
"""

# Added to a file made before orphan expiry (still version 1: optional, and ignored by
# the tether that made it): who attached each session, and until when each node renewed.
_ORPHAN_COLUMNS = (
    "ALTER TABLE sessions ADD COLUMN owner TEXT",
    "ALTER TABLE sessions ADD COLUMN owner_generation INTEGER",
)
# Added to a file made before ended sessions were recorded (SessionStore.end; still
# version 1, ignored by an older tether).
_END_COLUMNS = (
    "ALTER TABLE sessions ADD COLUMN end_code INTEGER",
    "ALTER TABLE sessions ADD COLUMN end_reason TEXT",
)
# Added to a file made before hellos were numbered (Hello.attempt; still version 1).
_ATTEMPT_COLUMNS = ("ALTER TABLE sessions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",)
_NODES_TABLE = "CREATE TABLE IF NOT EXISTS nodes (node TEXT PRIMARY KEY, expires_at REAL NOT NULL)"

_RECORD_COLUMNS = (
    "sid, token_hash, previous_token_hash, principal, generation, created_at, expires_at,"
    " tx, acked, rx, lost, end_code, end_reason, attempt"
)

# Made once: the connection's statement cache is keyed by the SQL text, which a string
# formatted per call made (and hashed) anew on every read of a row.
_SELECT_ROW = f"SELECT {_RECORD_COLUMNS} FROM sessions WHERE sid = ?"
# What a write needs to check and update a session when it answers no record: four
# columns of the fourteen (each read is a Python object made on the store's thread).
_SELECT_COUNTERS = "SELECT generation, tx, acked, rx FROM sessions WHERE sid = ?"

_T = TypeVar("_T")


def _check_path(path: object) -> str:
    """The database file's path as a string, or ConfigurationError.

    SQLite's special names are refused: ``""`` and ``":memory:"`` make a database
    private to one connection, which this store drops and reopens after an error,
    so the sessions would vanish without a word (``MemoryStore`` is the store for
    one process).
    """
    try:
        text = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigurationError(
            f"SQLite store path must be a str or os.PathLike, not {type(path).__name__}"
        ) from None
    if not isinstance(text, str):
        raise ConfigurationError(f"SQLite store path must be text, not {text!r}")
    if text in ("", ":memory:"):
        raise ConfigurationError(
            f"SQLite store path {text!r} is not a file; use MemoryStore (store URL 'memory')"
            " for sessions kept in this process only"
        )
    if "\0" in text:
        raise ConfigurationError(f"SQLite store path {text!r} contains a NUL character")
    return text


class SQLiteStore(SessionStore):
    """Sessions in one SQLite file (see the module doc for the guarantees).

    Nothing touches the file until the first operation, so constructing the
    store is cheap and never blocks the event loop.

    Args:
        path: the database file; created (with its schema) if missing. Its
            directory must exist.
        busy_timeout: seconds to wait for another process holding the write
            lock before the operation fails with :class:`StoreUnavailable`.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = _check_path(path)
        self._busy_timeout_ms = round(
            check_seconds(busy_timeout, "busy_timeout", positive=False) * 1000
        )
        # What the store's thread runs, in order (see _run_tasks); None stops it.
        self._tasks: _Tasks = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started by the first operation
        # Owned by the store's thread only: created, used and closed there.
        self._connection: sqlite3.Connection | None = None
        # The epoch as read through that connection (see epoch()); set on the thread.
        self._epoch: str | None = None
        # Whether that connection's SQLite runs a group's writes as bulk statements
        # (see _thread_bulk_writes); set on the thread.
        self._bulk = False
        self._closed = False
        # Operations queued for the store's thread (see _thread_flush), _closed and
        # _thread: guarded by _lock.
        self._lock = threading.Lock()
        self._pending: list[_Job[Any]] = []
        self._flush_scheduled = False
        #: Transactions committed so far (each is one fsync); a statistic.
        self.transactions = 0
        self._incidents = IncidentLog(f"sqlite {self.path}")
        _STORES.add(self)

    # -- SessionStore ------------------------------------------------------------------

    async def epoch(self) -> str:
        """The random id written with the schema (see :meth:`SessionStore.epoch`).

        Read once per connection to the file, then remembered: every resume and new
        session asks, and a trip to the store's thread costs more than the read. The
        answer cannot change under an open connection (a file deleted or replaced
        meanwhile is still the one it reads); a new connection, after an error
        dropped the old one, reads it again.
        """
        epoch = self._epoch
        if epoch is not None:
            return epoch

        def read(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT value FROM store_info WHERE key = 'epoch'").fetchone()
            value = self._epoch = str(row[0])
            return value

        return await self._call("epoch", read, write=False)

    async def create(
        self, sid: str, *, token_hash: str, principal: str | None, now: float
    ) -> SessionRecord:
        """Create a session at generation 1 (see :meth:`SessionStore.create`)."""
        record = SessionRecord(sid, token_hash, principal, generation=1, created_at=now)
        owner = self.node

        def insert(db: sqlite3.Connection) -> SessionRecord:
            if db.execute("SELECT 1 FROM sessions WHERE sid = ?", (sid,)).fetchone():
                raise SessionExists(f"session {sid} already exists")
            db.execute(
                "INSERT INTO sessions"
                " (sid, token_hash, principal, generation, created_at, owner, owner_generation)"
                " VALUES (?, ?, ?, 1, ?, ?, 1)",
                (sid, token_hash, principal, now, owner),
            )
            return record

        return await self._call("create", insert)

    async def load(self, sid: str) -> SessionRecord | None:
        """The record for ``sid``, or None."""
        return await self._call("load", lambda db: _select(db, sid), write=False)

    async def claim(
        self,
        sid: str,
        expected_generation: int,
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> SessionRecord:
        """Compare-and-set the generation in one transaction (see :meth:`SessionStore.claim`)."""
        owner = self.node

        def swap(db: sqlite3.Connection) -> SessionRecord:
            row = _owned_row(db, sid, expected_generation)
            return _claim_row(db, row, token_hash, previous_token_hash, owner, attempt)

        return await self._call("claim", swap)

    async def resume(
        self,
        sid: str,
        admit: Callable[[SessionRecord], bool],
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> Resumption:
        """Load, judge, claim and read in one transaction (see :meth:`SessionStore.resume`).

        One operation on the store's thread instead of three: during a restart
        storm each of those waits for a whole commit group (and for the GIL,
        which the busy event loop holds), so a resume waited three times as
        long. ``admit`` runs on the store's thread. Never :class:`Fenced`: the
        claim and the load it judged are one transaction.
        """
        owner = self.node

        def take(db: sqlite3.Connection) -> Resumption:
            row = _row(db, sid)
            if row is None:
                return Resumption(None, None)
            record = _record(row)
            if not admit(record):
                return Resumption(record, None)
            claimed = _claim_row(db, row, token_hash, previous_token_hash, owner, attempt)
            return Resumption(claimed, _messages(db, sid, claimed.acked))

        return await self._call("resume", take)

    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        """Held messages with ``seq > after``, oldest first."""

        def read(db: sqlite3.Connection) -> list[StoredMessage]:
            _require(db, sid)
            return _messages(db, sid, after)

        return await self._call("messages", read, write=False)

    async def write(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> SessionRecord:
        """Append, trim by ack and record rx in one transaction (see :meth:`SessionStore.write`)."""
        work = _write_work(sid, generation, append, acked, rx, None, record=True)
        record = await self._call("write", work)
        assert record is not None  # (asked for)
        return record

    async def write_many(self, writes: Sequence[Write]) -> list[BaseException | None]:
        """Every batch as one operation of the next group, answered with one wake-up.

        The operations join the commit group as :meth:`write` would (each checked,
        refused or committed on its own, see :meth:`_thread_flush`); the caller
        waits on one future for all of them instead of one per write.
        """
        results: list[BaseException | None] = [None] * len(writes)
        if self._closed:
            closed = StoreError(f"sqlite store {self.path} is closed")
            return [closed] * len(writes)
        loop = asyncio.get_running_loop()
        group = _Group(loop.create_future())
        jobs: list[_Job[Any]] = []
        for index, w in enumerate(writes):
            try:
                work = _write_work(
                    w.sid, w.generation, w.append, w.acked, w.rx, w.detach_at, record=False
                )
            except Exception as exc:  # an inconsistent batch: refused before the thread
                results[index] = exc
                continue
            jobs.append(_Job(work, True, loop, None, group, index))
        if not jobs:
            return results
        group.remaining = len(jobs)
        try:
            self._enqueue(jobs)
        except StoreError as closed:  # by another thread since the check above
            return [closed] * len(writes)
        for index, ok, value in await group.future:
            if ok:
                self._incidents.succeeded()
            else:
                results[index] = self._failure("write", value)
        return results

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        """Start the expiry clock (see :meth:`SessionStore.detach`)."""

        def update(db: sqlite3.Connection) -> None:
            _owned_counters(db, sid, generation)
            db.execute("UPDATE sessions SET expires_at = ? WHERE sid = ?", (expires_at, sid))

        await self._call("detach", update)

    async def abandon(self, sid: str, generation: int, *, reason: str) -> None:
        """Mark the session lost and drop its messages (see :meth:`SessionStore.abandon`)."""

        def update(db: sqlite3.Connection) -> None:
            _owned_counters(db, sid, generation)
            db.execute("UPDATE sessions SET lost = ?, acked = tx WHERE sid = ?", (reason, sid))
            db.execute("DELETE FROM messages WHERE sid = ?", (sid,))

        await self._call("abandon", update)

    async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
        """Record the application's close (see :meth:`SessionStore.end`)."""

        def update(db: sqlite3.Connection) -> None:
            _owned_counters(db, sid, generation)
            db.execute(
                "UPDATE sessions SET end_code = ?, end_reason = ? WHERE sid = ?",
                (code, reason, sid),
            )

        await self._call("end", update)

    async def delete(self, sid: str, *, generation: int | None = None) -> None:
        """Forget the session and its messages (only at ``generation``, when given)."""

        def remove(db: sqlite3.Connection) -> None:
            if generation is not None:
                row = db.execute("SELECT generation FROM sessions WHERE sid = ?", (sid,)).fetchone()
                if row is not None and row[0] != generation:
                    return  # claimed since: another connection's now
            db.execute("DELETE FROM messages WHERE sid = ?", (sid,))
            db.execute("DELETE FROM sessions WHERE sid = ?", (sid,))

        await self._call("delete", remove)

    async def renew(self, expires_at: float) -> None:
        """Record this instance's renewal (see :meth:`SessionStore.renew`)."""
        node = self.node

        def upsert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO nodes (node, expires_at) VALUES (?, ?)"
                " ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at",
                (node, expires_at),
            )

        await self._call("renew", upsert)

    async def expire(self, now: float) -> int:
        """Remove every detached session whose window ended by ``now``, and orphans."""

        def remove(db: sqlite3.Connection) -> int:
            db.execute(
                "DELETE FROM messages WHERE sid IN"
                " (SELECT sid FROM sessions WHERE expires_at <= ?)",
                (now,),
            )
            removed: int = db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount
            # Orphans: only when a node's renewal ran out (rare), so the scan of the
            # attached sessions it then needs costs nothing on the usual sweep.
            if db.execute("SELECT 1 FROM nodes WHERE expires_at <= ?", (now,)).fetchone():
                # owner_generation: a claim since (an older tether's, which leaves the
                # owner as it was, included) moved the session on.
                orphaned = (
                    "SELECT sid FROM sessions WHERE expires_at IS NULL"
                    " AND generation = owner_generation AND owner IN"
                    " (SELECT node FROM nodes WHERE expires_at <= ?)"
                )
                db.execute(f"DELETE FROM messages WHERE sid IN ({orphaned})", (now,))
                removed += db.execute(
                    f"DELETE FROM sessions WHERE sid IN ({orphaned})", (now,)
                ).rowcount
                db.execute("DELETE FROM nodes WHERE expires_at <= ?", (now,))
            return removed

        return await self._call("expire", remove)

    async def close(self) -> None:
        """Close the database file and stop the store's thread; idempotent.

        Operations queued before run first (their callers are answered); any
        operation after raises :class:`StoreError`. Returns once the thread ended.
        """
        loop = asyncio.get_running_loop()  # (outside a loop: raises before closing anything)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is None:  # never used: no thread, no connection
                return
            closed: asyncio.Future[None] = loop.create_future()
            # Behind any flush already queued (put under the same lock), so those run first.
            self._tasks.put(functools.partial(self._thread_close, loop, closed))
            self._tasks.put(None)
        try:
            await closed
        finally:
            # Its last task done, the thread is returning: the join waits for no disk.
            # (Not when cancelled while waiting: it may still be on the disk then.)
            if not closed.cancelled():
                thread.join()

    # -- plumbing (the _thread_* methods run on the store's thread) -------------------

    async def _call(
        self,
        operation: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        write: bool = True,
    ) -> _T:
        """Run ``work`` on the store's thread inside a commit group; map backend errors."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._enqueue([_Job(work, write, loop, future)])
        try:
            result: _T = await future
        except (StoreError, sqlite3.Error, OSError) as exc:
            error = self._failure(operation, exc)
            if error is exc:
                raise
            raise error from exc
        self._incidents.succeeded()
        return result

    def _failure(self, operation: str, exc: BaseException) -> BaseException:
        """What a failed operation raises, counted for the incident log.

        A StoreError as it is (the backend answered: fenced, unknown, inconsistent
        batch; it works); a backend error as StoreUnavailable with it as the cause;
        anything else (a bug) as it is.
        """
        if isinstance(exc, StoreError):
            self._incidents.succeeded()
            return exc
        if isinstance(exc, (sqlite3.Error, OSError)):
            self._incidents.failed(operation, exc)
            kind = StoreBusy if _busy(exc) else StoreUnavailable
            unavailable = kind(f"sqlite store {self.path}: {operation} failed: {exc}")
            unavailable.__cause__ = exc
            return unavailable
        return exc

    def _enqueue(self, jobs: list[_Job[Any]]) -> None:
        """Queue ``jobs`` for the store's thread, together (they join the same group).

        Raises StoreError if the store is closed (checked under the lock: a close()
        from another thread cannot slip between the check and the queueing).
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"sqlite store {self.path} is closed")
            self._pending.extend(jobs)
            if self._flush_scheduled:
                return  # the flush queued already takes these too
            self._flush_scheduled = True
            if self._thread is None:
                self._thread = self._start_thread()
            # Under the lock, so a close() queues its stop behind this flush.
            self._tasks.put(self._thread_flush)

    def _forked(self) -> None:
        """In a child process after fork(): start afresh on the next operation.

        The parent's thread did not come along (only the forking thread does), so its
        queue would never be served, and its lock may have been held at the fork.
        Operations the parent had queued are the parent's. The parent's SQLite
        connection must not be used here (SQLite's rule for fork) nor closed (that
        would end what the parent's connection has under way in the file's journal):
        it is kept, unused, for the life of this process.
        """
        self._lock = threading.Lock()
        self._tasks = queue.SimpleQueue()
        self._thread = None
        self._pending = []
        self._flush_scheduled = False
        if self._connection is not None:
            _INHERITED_CONNECTIONS.append(self._connection)
            self._connection = None

    def _start_thread(self) -> threading.Thread:
        """Start the store's thread; it stops at close(), or when the store is collected."""
        tasks = self._tasks
        thread = threading.Thread(
            target=_run_tasks, args=(tasks,), name=f"tether-sqlite-{id(self):x}"
        )
        thread.start()
        # Not a daemon, so that a COMMIT under way finishes before the process exits;
        # then it must be told to stop: at exit, or when a store never closed is gone.
        _RUNNING.add(tasks)
        weakref.finalize(self, tasks.put, None).atexit = False
        return thread

    def _thread_close(self, loop: asyncio.AbstractEventLoop, closed: asyncio.Future[None]) -> None:
        try:
            self._disconnect()
        except BaseException as exc:
            _call_soon(loop, _settle_future, closed, False, exc)
        else:
            _call_soon(loop, _settle_future, closed, True, None)

    def _thread_flush(self) -> None:
        """Run every queued operation in one transaction: one commit (one fsync) for all.

        Group commit: the writes of many sessions queued during one event-loop turn
        share a transaction, so the fsync per commit caps commits, not sessions.
        An operation refused with a :class:`StoreError` (fenced, unknown,
        inconsistent) before it changed anything fails alone; the others commit.
        Every operation of this module checks before it changes, so the group needs
        no SAVEPOINT per operation (two statements each, 5-7 % of a write's
        instructions). One that fails after changing something (a bug) puts the
        group in doubt: the group is rolled back, that operation fails, and the
        others run again as one group. Each attempt commits all or nothing, so no
        caller is told of a failure that happened anyway, and no caller is answered
        before the COMMIT returned: "write returned" means "on disk".
        """
        with self._lock:
            jobs, self._pending = self._pending, []
            self._flush_scheduled = False
        if not jobs:
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            db = self._thread_connect()
            outcomes = self._thread_groups(db, jobs)
        except sqlite3.Error as exc:
            # The connection may be mid-transaction or broken (I/O error, file gone):
            # drop it; the next operation reconnects, which is how the store recovers.
            with contextlib.suppress(sqlite3.Error):
                self._disconnect()
            outcomes = [(False, exc)] * len(jobs)
        except BaseException as exc:  # a bug (or StoreError from the schema check): tell them all
            outcomes = [(False, exc)] * len(jobs)
        # One wake-up per event loop for the whole group, not one per operation: each
        # call_soon_threadsafe writes a byte to the loop's self-pipe, which holds only a
        # few hundred; a group of thousands filled it, and a signal arriving then (the
        # SIGHUP of a handover) was lost, since asyncio learns of signals through it.
        loop = jobs[0].loop
        if all(job.loop is loop for job in jobs):  # the usual case: one loop
            _call_soon(loop, _settle_all, jobs, outcomes)
            return
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[_Job[Any]], list[Any]]] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            mine, theirs = by_loop.setdefault(job.loop, ([], []))
            mine.append(job)
            theirs.append(outcome)
        for loop, (mine, theirs) in by_loop.items():
            _call_soon(loop, _settle_all, mine, theirs)

    def _thread_groups(
        self, db: sqlite3.Connection, jobs: list[_Job[Any]]
    ) -> list[tuple[bool, Any]]:
        """(ok, value) per job: the group committed, less any job that put it in doubt."""
        try:
            return self._thread_transaction(db, jobs)  # the usual case: none in doubt
        except _InDoubt as doubt:  # rolled back: nothing of this attempt happened
            outcomes = {doubt.position: (False, doubt.error)}
        left = [(index, job) for index, job in enumerate(jobs) if index not in outcomes]
        while left:
            try:
                results = self._thread_transaction(db, [job for _, job in left])
            except _InDoubt as doubt:
                index, _ = left.pop(doubt.position)
                outcomes[index] = (False, doubt.error)
                continue
            outcomes.update(zip((index for index, _ in left), results, strict=True))
            break
        return [outcomes[index] for index in range(len(jobs))]

    def _thread_transaction(
        self, db: sqlite3.Connection, jobs: list[_Job[Any]]
    ) -> list[tuple[bool, Any]]:
        """Run ``jobs`` in one transaction and commit it; (ok, value) per job.

        A job's StoreError is its own outcome only if the job changed nothing
        before raising (``total_changes`` tells). Any other failure of a job rolls
        the transaction back and raises :class:`_InDoubt` naming it; an
        ``sqlite3.Error`` rolls back and propagates (the group fails).
        """
        # Writes take the lock up front (see the module doc); reads get a snapshot.
        db.execute("BEGIN IMMEDIATE" if any(job.write for job in jobs) else "BEGIN")
        outcomes: list[tuple[bool, Any]] = []
        try:
            position, count = 0, len(jobs)
            while position < count:
                end, rows = _bulk_run(jobs, position) if self._bulk else (position, None)
                if (
                    rows is not None
                    and end - position >= _BULK_MIN
                    and _thread_bulk_writes(db, rows)
                ):
                    outcomes.extend([_WRITTEN] * (end - position))
                    position = end
                    continue
                # One at a time: a job of another kind, a run too short to bother, or
                # one whose bulk UPDATE did not match every session.
                end = max(end, position + 1)
                outcomes.extend(_thread_job(db, jobs[i], i) for i in range(position, end))
                position = end
        except BaseException:
            _rollback(db)
            raise
        db.execute("COMMIT")
        self.transactions += 1
        return outcomes

    def _thread_connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            self._thread_migrate(db)
            self._bulk = _bulk_supported(db)
        except BaseException:
            db.close()
            raise
        self._connection = db
        return db

    def _thread_migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # two processes opening a new file: one creates it
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO store_info (key, value) VALUES ('epoch', ?)",
                    (secrets.token_urlsafe(16),),
                )
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"sqlite store {self.path} has schema version {version}; this tether "
                    f"reads version {SCHEMA_VERSION}"
                )
            columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
            if "owner" not in columns:
                for statement in _ORPHAN_COLUMNS:
                    db.execute(statement)
            if "end_code" not in columns:
                for statement in _END_COLUMNS:
                    db.execute(statement)
            if "attempt" not in columns:
                for statement in _ATTEMPT_COLUMNS:
                    db.execute(statement)
            # One definition for new and older files; a no-op once it exists.
            db.execute(_NODES_TABLE)
        except BaseException:
            _rollback(db)
            raise
        db.execute("COMMIT")

    def _disconnect(self) -> None:
        db, self._connection = self._connection, None
        self._epoch = None
        if db is not None:
            db.close()


_Tasks = queue.SimpleQueue[Callable[[], object] | None]

# The task queues of the store threads running, told to stop when the interpreter
# exits (as concurrent.futures does for its workers): the threads are not daemons,
# and the interpreter waits for them before it exits.
_RUNNING: weakref.WeakSet[_Tasks] = weakref.WeakSet()
# Every store alive, told when this process is a fork's child (see _forked); and the
# connections the parent had open, which a child must neither use nor close.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    _RUNNING.clear()  # (the parent's threads are not here to stop)
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_all() -> None:
    for tasks in list(_RUNNING):
        tasks.put(None)


# The hook concurrent.futures uses too: run before the interpreter joins the threads
# that are not daemons (an atexit function runs after that join, so never).
threading._register_atexit(_stop_all)  # type: ignore[attr-defined]


def _run_tasks(tasks: _Tasks) -> None:
    """The store's thread: run each task in turn, until None.

    Holds no reference to the store between tasks, so that a store dropped without
    close() can be collected (which stops this thread, see _start_thread).
    """
    while True:
        task = tasks.get()
        if task is None:
            return
        task()
        del task


def _thread_job(db: sqlite3.Connection, job: _Job[Any], position: int) -> tuple[bool, Any]:
    """Run one job of a transaction: (ok, value), or :class:`_InDoubt` (see _thread_transaction)."""
    changes = db.total_changes
    try:
        return True, job.work(db)
    except sqlite3.Error:
        raise
    except StoreError as exc:
        if db.total_changes != changes:
            raise _InDoubt(position, exc) from exc  # refused after a change
        return False, exc
    except Exception as exc:
        raise _InDoubt(position, exc) from exc


#: Fewest consecutive writes of a group that run as bulk statements (_thread_bulk_writes).
_BULK_MIN = 4
#: Most writes, and most characters of text messages, in one run of bulk statements
#: (far below SQLite's 1 GB limit on a bound string, JSON's escapes included).
_BULK_MAX_WRITES = 20_000
_BULK_MAX_CHARS = 16 * 1024 * 1024
#: Text messages longer than this keep an INSERT of their own (bytes, no JSON escaping).
_BULK_TEXT_MAX = 64 * 1024
#: A write_many write's outcome when it committed (it answers no record).
_WRITTEN: tuple[bool, Any] = (True, None)
#: SQLite's integers: what JSON carries as an integer (beyond, it would be a REAL).
_INT64_MIN, _INT64_END = -(2**63), 2**63

# The bulk statements' rows come as one JSON array (json_each): a write's counters
# [sid, generation, tx before its messages or null, tx after them, ack, rx, detach_at],
# a message [sid, seq, text], a trim [sid, acked]. Each guard is _UPDATE_APPENDED's
# (messages) or _UPDATE_COUNTERS' (none) for its row.
_BULK_UPDATE = (
    "UPDATE sessions SET tx = coalesce(w.t, sessions.tx), acked = max(sessions.acked, w.a),"
    " rx = max(sessions.rx, w.r), expires_at = coalesce(w.d, sessions.expires_at)"
    " FROM (SELECT json_extract(value, '$[0]') AS s, json_extract(value, '$[1]') AS g,"
    " json_extract(value, '$[2]') AS p, json_extract(value, '$[3]') AS t,"
    " json_extract(value, '$[4]') AS a, json_extract(value, '$[5]') AS r,"
    " json_extract(value, '$[6]') AS d FROM json_each(?)) AS w"
    " WHERE sessions.sid = w.s AND sessions.generation = w.g AND CASE WHEN w.p IS NULL"
    " THEN sessions.tx >= w.a ELSE sessions.tx = w.p AND w.a <= w.t END"
)
# (CAST: text messages are stored as their UTF-8 bytes, as _write_work's rows.)
_BULK_INSERT = (
    "INSERT INTO messages (sid, seq, is_text, payload) SELECT json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]'), 1, CAST(json_extract(value, '$[2]') AS BLOB)"
    " FROM json_each(?)"
)
_BULK_TRIM = (
    "DELETE FROM messages WHERE (sid, seq) IN (SELECT m.sid, m.seq FROM json_each(?) AS w"
    " JOIN messages AS m ON m.sid = json_extract(w.value, '$[0]')"
    " AND m.seq <= json_extract(w.value, '$[1]'))"
)


def _bulk_supported(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has what the bulk statements use: UPDATE ... FROM (3.33), JSON."""
    if sqlite3.sqlite_version_info < (3, 33, 0):
        return False
    try:
        db.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.Error:
        return False
    return True


@dataclasses.dataclass(slots=True)
class _BulkRows:
    """What the bulk statements of one run of writes send (see _bulk_run)."""

    updates: list[tuple[str, int, int | None, int | None, int, int, float | int | None]] = (
        dataclasses.field(default_factory=list)
    )
    texts: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    others: list[tuple[str, int, int, bytes]] = dataclasses.field(default_factory=list)
    trims: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def _integer(value: object) -> bool:
    """Whether JSON carries ``value`` to SQLite as the integer it binds as (not a REAL)."""
    return type(value) is int and _INT64_MIN <= value < _INT64_END


def _write_args(job: _Job[Any]) -> tuple[Any, ...] | None:
    """The arguments of ``job`` if it is one write of :meth:`SQLiteStore.write_many`
    (see _write_work), else None."""
    work = job.work
    if isinstance(work, functools.partial) and work.func is _write_counters:
        return work.args
    return None


def _bulk_run(jobs: list[_Job[Any]], start: int) -> tuple[int, _BulkRows | None]:
    """The run of writes from ``start`` that bulk statements can carry: its end, its rows.

    None, and nothing built, when the job at ``start`` is of another kind (a resume,
    a load, a detach: most of a storm's groups are made of those).

    Such a write is one of :meth:`SQLiteStore.write_many` (no record asked), of a
    session no earlier write of the run has (one row per session in the UPDATE),
    whose values JSON carries exactly: a session id without NUL (SQLite's JSON ends
    a string there), integer counters and seqs of 64 bits, a finite detach time.
    Anything else (a caller's mistake, mostly) ends the run: one by one, such a
    write gets the answer it always got, alone.
    """
    if _write_args(jobs[start]) is None:
        return start, None
    rows = _BulkRows()
    seen: set[str] = set()
    chars = 0
    end = start
    for job in itertools.islice(jobs, start, start + _BULK_MAX_WRITES):
        args = _write_args(job)
        if args is None:
            break
        sid, generation, append, prebuilt, acked, rx, detach_at = args
        ack = 0 if acked is None else acked
        received = 0 if rx is None else rx
        if (
            type(sid) is not str
            or sid in seen
            or "\x00" in sid
            or not (_integer(generation) and _integer(ack) and _integer(received))
            or not (
                detach_at is None
                or _integer(detach_at)
                or (type(detach_at) is float and math.isfinite(detach_at))
            )
        ):
            break
        if append:
            first, last = append[0].seq, append[-1].seq
            if not (_integer(first) and _integer(last)):
                break
            texts: list[tuple[str, int, str]] = []
            others: list[tuple[str, int, int, bytes]] = []
            for message, row in zip(append, prebuilt, strict=True):
                payload = message.payload
                if (
                    isinstance(payload, str)
                    and len(payload) <= _BULK_TEXT_MAX
                    and "\x00" not in payload
                ):
                    texts.append((sid, message.seq, payload))
                    chars += len(payload)
                else:
                    others.append(row)
            if chars > _BULK_MAX_CHARS and end > start:
                break  # this write opens the next run
            rows.texts += texts
            rows.others += others
            rows.updates.append((sid, generation, first - 1, last, ack, received, detach_at))
        else:
            rows.updates.append((sid, generation, None, None, ack, received, detach_at))
        if acked is not None:
            rows.trims.append((sid, acked))
        seen.add(sid)
        end += 1
    return end, rows


def _thread_bulk_writes(db: sqlite3.Connection, rows: _BulkRows) -> bool:
    """Run a run of writes (see _bulk_run) as a few statements.

    Why: Python's sqlite3 lets go of the GIL around every statement it steps, and
    the store's thread must take it back after each. Behind a busy event loop every
    hand-off waits: up to the interpreter's switch interval when the loop runs long
    callbacks, and far longer when it turns over faster than that (each turn's
    select() lets go of the GIL and takes it back before the waiting thread wakes,
    and that resets the thread's claim: 0.1-0.4 s measured). In a storm of 10,000,
    a ticker's burst of 9,000 writes (some 27,000 statements) took 0.6-0.7 s
    from call to answer against 0.07 s with the loop idle, and the resumes queued
    behind it waited as long. Here the rows travel as JSON: one UPDATE of every
    session's counters, one INSERT of the text messages, one DELETE of every trim.
    Binary messages, and long texts or texts with a NUL (SQLite's JSON ends a
    string there), keep an INSERT each; a run stops at _BULK_MAX_WRITES writes or
    _BULK_MAX_CHARS characters of text, and the next one goes on from there.

    Returns:
        True when all of them are written. False, with nothing of them left in the
        transaction, when the guarded UPDATE did not match every session (a fenced
        or refused write among them: run one by one, each gets its own answer) or a
        row could not be sent (a string that is not UTF-8, say: the same).
    """
    db.execute("SAVEPOINT bulk")
    try:
        updates = json.dumps(rows.updates, ensure_ascii=False)
        if db.execute(_BULK_UPDATE, (updates,)).rowcount == len(rows.updates):
            if rows.texts:
                db.execute(_BULK_INSERT, (json.dumps(rows.texts, ensure_ascii=False),))
            if rows.others:
                db.executemany(_INSERT_MESSAGES, rows.others)
            if rows.trims:
                db.execute(_BULK_TRIM, (json.dumps(rows.trims, ensure_ascii=False),))
            db.execute("RELEASE bulk")
            return True
    except sqlite3.DataError:
        pass  # (a string too long to bind: one by one, each is shorter)
    except sqlite3.Error:
        raise  # the group fails, as it would one by one (its transaction is rolled back)
    except Exception:  # one by one, the job that cannot be sent says why
        pass
    db.execute("ROLLBACK TO bulk")
    db.execute("RELEASE bulk")
    return False


class _InDoubt(Exception):
    """A job failed after changing something: its transaction was rolled back."""

    def __init__(self, position: int, error: Exception) -> None:
        super().__init__(position, error)
        self.position = position  # of the job in the group that was attempted
        self.error = error


@dataclasses.dataclass(slots=True)
class _Group:
    """The operations of one :meth:`SQLiteStore.write_many`: one future for all."""

    future: asyncio.Future[list[tuple[int, bool, Any]]]
    remaining: int = 0
    outcomes: list[tuple[int, bool, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Job(Generic[_T]):
    """One operation waiting for the store's thread: answered by its future or its group."""

    work: Callable[[sqlite3.Connection], _T]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[_T] | None
    group: _Group | None = None
    index: int = 0  # in the group's writes


#: Primary result codes of a lock held by another connection past ``busy_timeout``.
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked": contention, not a failure."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so.

    After some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM...) SQLite rolls the
    transaction back itself; an unconditional ROLLBACK would then raise "no
    transaction is active" and hide the error that matters (a full disk, say).
    """
    if db.in_transaction:
        db.execute("ROLLBACK")


def _settle_future(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():  # the caller gave up waiting; the operation happened anyway
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> None:
    """``loop.call_soon_threadsafe``, from the store's thread; nothing if the loop is closed.

    A closed loop has no caller left to answer; raising would end the store's thread
    and leave every later operation, of every loop, waiting forever.
    """
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # (no contextlib.suppress: its three calls cost more, per group)
        return


def _settle_all(jobs: list[_Job[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for job, (ok, value) in zip(jobs, outcomes, strict=True):
        group = job.group
        if group is not None:
            group.outcomes.append((job.index, ok, value))
            group.remaining -= 1
            if group.remaining == 0 and not group.future.cancelled():
                group.future.set_result(group.outcomes)
            continue
        assert job.future is not None
        _settle_future(job.future, ok, value)


def _write_work(
    sid: str,
    generation: int,
    append: Sequence[StoredMessage],
    acked: int | None,
    rx: int | None,
    detach_at: float | None,
    *,
    record: bool,
) -> Callable[[sqlite3.Connection], SessionRecord | None]:
    """The store thread's part of one write (the batch's consistency checked here first).

    With ``detach_at`` the same UPDATE starts the expiry clock (a detach after it).
    ``record``: answer the record as the write left it (:meth:`SQLiteStore.write`);
    without it, None: :meth:`SQLiteStore.write_many` answers only the errors, and
    building a record (a frozen dataclass of 14 fields) was a quarter of a write's
    Python work on the store's thread.

    A ``functools.partial`` of a module function, not a closure: a closure over these
    eight values is ten objects the cyclic collector tracks (the function, its cells
    and their tuple) against two, and a ticker's burst keeps one per session alive
    until the group commits (10,000 sessions: young collections during every burst,
    their survivors promoted, and full collections of the whole heap).
    """
    check_batch(sid, append)
    rows = [
        (sid, m.seq, 1, m.payload.encode())
        if isinstance(m.payload, str)
        else (sid, m.seq, 0, m.payload)
        for m in append
    ]
    apply = _write_with_record if record else _write_counters
    return functools.partial(apply, sid, generation, append, rows, acked, rx, detach_at)


#: Both kinds of write: append a batch's messages; drop the acknowledged ones.
_INSERT_MESSAGES = "INSERT INTO messages (sid, seq, is_text, payload) VALUES (?, ?, ?, ?)"
_TRIM_MESSAGES = "DELETE FROM messages WHERE sid = ? AND seq <= ?"

#: One write that answers no record, checked by the UPDATE itself: the session is there,
#: ``generation`` still owns it, the first appended ``seq`` continues ``tx`` and the ack is
#: not beyond the new ``tx``. Nothing changed when no row matched (then _write_refused
#: reads the row to say why): one statement instead of a SELECT and an UPDATE.
_UPDATE_APPENDED = (
    "UPDATE sessions SET tx = ?, acked = max(acked, ?), rx = max(rx, ?),"
    " expires_at = COALESCE(?, expires_at) WHERE sid = ? AND generation = ? AND tx = ?"
)
_UPDATE_COUNTERS = (
    "UPDATE sessions SET acked = max(acked, ?), rx = max(rx, ?),"
    " expires_at = COALESCE(?, expires_at) WHERE sid = ? AND generation = ? AND tx >= ?"
)


def _write_counters(
    sid: str,
    generation: int,
    append: Sequence[StoredMessage],
    rows: list[tuple[str, int, int, bytes]],
    acked: int | None,
    rx: int | None,
    detach_at: float | None,
    db: sqlite3.Connection,
) -> None:
    """:func:`_write_work` without a record: guarded UPDATE, then the rows and the trim."""
    ack = 0 if acked is None else acked  # (max(acked, 0): counters are never negative)
    if append:
        tx = append[-1].seq
        matched = (
            ack <= tx
            and db.execute(
                _UPDATE_APPENDED,
                (tx, ack, 0 if rx is None else rx, detach_at, sid, generation, append[0].seq - 1),
            ).rowcount
        )
    else:
        matched = db.execute(
            _UPDATE_COUNTERS, (ack, 0 if rx is None else rx, detach_at, sid, generation, ack)
        ).rowcount
    if not matched:
        _write_refused(db, sid, generation, append, acked)
    if rows:
        db.executemany(_INSERT_MESSAGES, rows)
    if acked is not None:
        # (Unconditional: an ack that did not move deletes nothing, and finding that
        # out first would take the read this path does without.)
        db.execute(_TRIM_MESSAGES, (sid, acked))


def _write_refused(
    db: sqlite3.Connection,
    sid: str,
    generation: int,
    append: Sequence[StoredMessage],
    acked: int | None,
) -> None:
    """Why a guarded UPDATE matched no row: raise what :func:`_write_with_record` would."""
    _, tx, old_acked, _ = _owned_counters(db, sid, generation)
    _checked_counters(sid, append, acked, tx, old_acked)
    raise AssertionError(f"session {sid}: a write matched no row, for no reason found")


def _checked_counters(
    sid: str, append: Sequence[StoredMessage], acked: int | None, tx: int, old_acked: int
) -> tuple[int, int]:
    """The write's new ``tx`` and ``acked`` from the stored ones; StoreError if it does not fit."""
    if append:
        if append[0].seq != tx + 1:
            raise StoreError(f"session {sid}: appended seq {append[0].seq}, expected {tx + 1}")
        tx = append[-1].seq
    new_acked = old_acked if acked is None else max(old_acked, acked)
    if new_acked > tx:
        raise StoreError(f"session {sid}: ack {new_acked} is beyond tx {tx}")
    return tx, new_acked


def _write_with_record(
    sid: str,
    generation: int,
    append: Sequence[StoredMessage],
    rows: list[tuple[str, int, int, bytes]],
    acked: int | None,
    rx: int | None,
    detach_at: float | None,
    db: sqlite3.Connection,
) -> SessionRecord:
    """:func:`_write_work` answering the record as the write left it."""
    row = _owned_row(db, sid, generation)
    old_acked, old_rx = row[8], row[9]
    tx, new_acked = _checked_counters(sid, append, acked, row[7], old_acked)
    new_rx = old_rx if rx is None else max(old_rx, rx)
    if rows:
        db.executemany(_INSERT_MESSAGES, rows)
    if new_acked > old_acked:
        db.execute(_TRIM_MESSAGES, (sid, new_acked))
    db.execute(
        "UPDATE sessions SET tx = ?, acked = ?, rx = ?, expires_at = COALESCE(?, expires_at)"
        " WHERE sid = ?",
        (tx, new_acked, new_rx, detach_at, sid),
    )
    expires_at = row[6] if detach_at is None else detach_at
    # One record, built from the row as the UPDATE left it (the hot path:
    # dataclasses.replace of a record built first cost twice as much).
    return _record((*row[:6], expires_at, tx, new_acked, new_rx, *row[10:]))


def _claim_row(
    db: sqlite3.Connection,
    row: Any,
    token_hash: str,
    previous_token_hash: str,
    owner: str,
    attempt: int | None,
) -> SessionRecord:
    """Claim the session whose row (read in this transaction) is ``row`` for ``owner``."""
    sid = row[0]
    attempt = row[13] if attempt is None else attempt
    db.execute(
        "UPDATE sessions SET generation = generation + 1, token_hash = ?,"
        " previous_token_hash = ?, expires_at = NULL, owner = ?, owner_generation = ?,"
        " attempt = ? WHERE sid = ?",
        (token_hash, previous_token_hash, owner, row[4] + 1, attempt, sid),
    )
    # The row as the UPDATE left it, without reading it back.
    generation, kept = row[4] + 1, row[7:13]  # tx .. end_reason stay
    return _record(
        (sid, token_hash, previous_token_hash, row[3], generation, row[5], None, *kept, attempt)
    )


def _messages(db: sqlite3.Connection, sid: str, after: int) -> list[StoredMessage]:
    rows = db.execute(
        "SELECT seq, is_text, payload FROM messages WHERE sid = ? AND seq > ? ORDER BY seq",
        (sid, after),
    ).fetchall()
    return [StoredMessage(seq, _payload(is_text, data)) for seq, is_text, data in rows]


def _record(row: Any) -> SessionRecord:
    (sid, token_hash, previous_token_hash, principal, generation, created_at, expires_at) = row[:7]
    tx, acked, rx, lost, end_code, end_reason, attempt = row[7:]
    return SessionRecord(
        sid=str(sid),
        token_hash=str(token_hash),
        previous_token_hash=None if previous_token_hash is None else str(previous_token_hash),
        principal=None if principal is None else str(principal),
        generation=int(generation),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        tx=int(tx),
        acked=int(acked),
        rx=int(rx),
        lost=None if lost is None else str(lost),
        end_code=None if end_code is None else int(end_code),
        end_reason="" if end_reason is None else str(end_reason),
        attempt=int(attempt),
    )


def _row(db: sqlite3.Connection, sid: str) -> Any:
    """The session's row (``_RECORD_COLUMNS``), or None."""
    return db.execute(_SELECT_ROW, (sid,)).fetchone()


def _select(db: sqlite3.Connection, sid: str) -> SessionRecord | None:
    row = _row(db, sid)
    return None if row is None else _record(row)


def _require(db: sqlite3.Connection, sid: str) -> SessionRecord:
    record = _select(db, sid)
    if record is None:
        raise UnknownSession(f"session {sid} is unknown")
    return record


def _owned_row(db: sqlite3.Connection, sid: str, generation: int) -> Any:
    """The session's row (``_RECORD_COLUMNS``) if ``generation`` still owns it."""
    return _owned(_row(db, sid), 4, sid, generation)


def _owned_counters(db: sqlite3.Connection, sid: str, generation: int) -> Any:
    """The session's row of ``generation, tx, acked, rx`` if ``generation`` still owns it."""
    return _owned(db.execute(_SELECT_COUNTERS, (sid,)).fetchone(), 0, sid, generation)


def _owned(row: Any, at: int, sid: str, generation: int) -> Any:
    """``row`` if the session exists and ``generation`` (column ``at``) still owns it."""
    if row is None:
        raise UnknownSession(f"session {sid} is unknown")
    if row[at] != generation:
        raise Fenced(sid, generation, int(row[at]))
    return row


def _payload(is_text: int, data: bytes) -> str | bytes:
    return data.decode() if is_text else bytes(data)
