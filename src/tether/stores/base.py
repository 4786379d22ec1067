"""The async ``SessionStore`` interface the server side of tether.v1 uses.

One store holds, per session, a meta record (:class:`SessionRecord`) and the
outgoing (server -> client) messages the client has not acknowledged, keyed by
sequence number. The server adapter calls it like this::

    epoch = await store.epoch()
    # hello names a session: load it, judge it, claim it (fencing CAS), read the replay
    record, messages = await store.resume(
        sid, lambda r: judge_resume(hello, r, epoch=epoch, principal=p, now=now) is None,
        token_hash=new_hash, previous_token_hash=presented_hash)
    ...
    await store.write(sid, generation, append=batch, acked=a, rx=r)  # once per loop turn
    await store.detach(sid, generation, expires_at=now + window)     # connection lost

Design for every implementation (memory, SQLite, Redis; ``docs/protocol.md``):

* **Fencing.** Every session has a ``generation``; :meth:`SessionStore.claim` is
  a compare-and-set that bumps it, and every write names the generation it
  believes in. A write with an old generation raises :class:`Fenced`, so a
  stale connection or node can never write into a session it lost.
* **Write-through, batched, atomic.** :meth:`SessionStore.write` appends
  messages, trims by ack and records ``rx`` in one atomic step (one SQLite
  transaction, one Redis Lua script), so the adapter pays one round trip per
  event-loop turn, not per message. Appended sequence numbers must continue
  ``tx`` exactly; trimming is exact (Redis: ``XTRIM MINID``, never approximate).
* **One step per resume.** :meth:`SessionStore.resume` is :meth:`load`, the
  caller's judgement, :meth:`claim` and :meth:`messages` in one call; a store may
  do it in one trip (SQLite: one transaction), so a resume costs one wait on the
  store, not three, when thousands of clients come back at once.
* **Epoch.** :meth:`SessionStore.epoch` changes when the store lost its data
  (Redis flushed or restarted without persistence), so resumes fail with
  ``epoch_mismatch`` instead of partially.
* **Expiry.** A detached session carries ``expires_at``; :meth:`load` may still
  return it after that (the resume is then refused as ``expired``) until
  :meth:`expire` or the backend's own TTL removes it (then ``unknown``).
* **Orphans.** A session is attached to the store instance (:attr:`node`) whose
  :meth:`create` or claim attached it last. That instance's process keeps them
  with :meth:`renew`; if it stops renewing (it crashed, was killed, hung), its
  attached sessions are orphans, and :meth:`expire` on any node removes them
  once the last renewal's ``expires_at`` has passed. Without this, a session
  whose server died and whose client never came back stayed in a durable
  store for ever.
* **Failure.** Backend errors surface as :class:`StoreUnavailable` (a
  :class:`~tether.exceptions.StoreError`), chained with ``from``.

Times are seconds on the caller's clock (the adapter passes wall-clock time so
that a durable store outlives the process).
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..exceptions import StoreError
from ..protocol import Payload

__all__ = [
    "Fenced",
    "Resumption",
    "SessionExists",
    "SessionRecord",
    "SessionStore",
    "StoreBusy",
    "StoreUnavailable",
    "StoredMessage",
    "UnknownSession",
    "Write",
]


class StoreUnavailable(StoreError):
    """The backend could not be reached or failed; the operation did not happen."""


class StoreBusy(StoreUnavailable):
    """The backend works but was held by another writer past its wait; try again later.

    SQLite: another process kept the file's write lock longer than ``busy_timeout``
    (two ``tether serve`` processes of a handover, both busy). The operation did not
    happen. A resume that meets it is not refused: the client is told to try again
    later (1013) and keeps its session, which a retry finds as it was.
    """


class Fenced(StoreError):
    """The session's generation moved on: another connection or node owns it now.

    Attributes:
        sid: the session id.
        expected: the generation the caller believed in.
        actual: the generation in the store (None if the session is gone).
    """

    def __init__(self, sid: str, expected: int, actual: int | None) -> None:
        super().__init__(f"session {sid} is at generation {actual}, not {expected}")
        self.sid = sid
        self.expected = expected
        self.actual = actual


class UnknownSession(StoreError):
    """The session does not exist (never created, expired and purged, or deleted)."""


class SessionExists(StoreError):
    """:meth:`SessionStore.create` was given an id that is already in use."""


class StoredMessage(NamedTuple):
    """One outgoing message as the store keeps it.

    A named tuple, not a frozen dataclass: the server makes one per message sent,
    and a frozen dataclass costs about twice as much to build (measured: 0.96 µs
    against 0.50 µs per object on CPython 3.11).

    Attributes:
        seq: its sequence number (server -> client direction).
        payload: the application message; str and bytes are kept apart.
    """

    seq: int
    payload: Payload


@dataclass(frozen=True)
class SessionRecord:
    """A session's meta data (satisfies :class:`tether.tokens.ResumeCandidate`).

    Attributes:
        sid: the session id.
        token_hash: SHA-256 (hex) of the resume token issued last.
        previous_token_hash: hash of the token presented at the last resume, still
            accepted because the welcome that carried ``token_hash`` may have been lost.
        principal: who the session belongs to (the app's hook), or None.
        generation: fencing number; 1 at creation, +1 per claim.
        created_at: creation time, in seconds.
        expires_at: when a detached session stops being resumable; None while attached.
        tx: last sequence number appended (server -> client).
        acked: the client acknowledged everything up to here; messages ``acked+1..tx`` are held.
        rx: last client sequence number the server received, durably.
        lost: why the session can no longer be resumed (``"overflow"``), else None.
        end_code: the close code the application ended the session with while its
            client was away (:meth:`SessionStore.end`), else None: a resume, on
            any node, replays what is held and then closes with it; no handler
            starts again.
        end_reason: the close reason that goes with ``end_code``.
        attempt: the highest ``hello.attempt`` a claim was made for (0: none yet,
            or only hellos without one); a hello numbered at or below it is late.
    """

    sid: str
    # repr=False: a hash is not a token, but it should not be logged either (it is what
    # the store compares against; a log is read by more people than the store).
    token_hash: str = field(repr=False)
    principal: str | None
    generation: int
    created_at: float
    expires_at: float | None = None
    previous_token_hash: str | None = field(default=None, repr=False)
    tx: int = 0
    acked: int = 0
    rx: int = 0
    lost: str | None = None
    end_code: int | None = None
    end_reason: str = ""
    attempt: int = 0


class Resumption(NamedTuple):
    """What :meth:`SessionStore.resume` found, and did.

    Attributes:
        record: the session's record: as the claim left it when ``messages`` is
            not None; else as loaded (the judgement refused it, nothing changed),
            or None when the store does not know the session.
        messages: after a claim, the held messages with ``seq > record.acked``,
            oldest first (the replay); None when nothing was claimed.
    """

    record: SessionRecord | None
    messages: list[StoredMessage] | None


@dataclass(frozen=True, slots=True)
class Write:
    """One session's batch for :meth:`SessionStore.write_many`: the arguments of ``write``.

    ``detach_at``, when set, detaches the session after the batch, as
    ``detach(sid, generation, expires_at=detach_at)`` would (the connection is
    gone); a batch with nothing else then only detaches.
    """

    sid: str
    generation: int
    append: Sequence[StoredMessage] = ()
    acked: int | None = None
    rx: int | None = None
    detach_at: float | None = None

    @property
    def only_detaches(self) -> bool:
        """Nothing to write but the detach."""
        return (
            self.detach_at is not None
            and not self.append
            and self.acked is None
            and self.rx is None
        )


class SessionStore(abc.ABC):
    """Where the server side of tether.v1 keeps sessions (async; see the module doc)."""

    _node: str | None = None

    @property
    def node(self) -> str:
        """This instance's id, recorded as the owner of the sessions it attaches.

        Random, made at the first use: one per store instance, so per process
        in practice (two layers sharing an instance share its renewals).
        """
        node = self._node
        if node is None:
            node = self._node = secrets.token_hex(8)
        return node

    async def renew(self, expires_at: float) -> None:  # noqa: B027 - a no-op by default
        """Keep the sessions attached through this instance until ``expires_at`` at least.

        The server adapter calls it before it serves and then periodically, with
        ``expires_at`` far enough ahead (the resume window and a margin) that a
        live process never lets it pass. Should the calls stop, every session
        still attached through this instance counts as detached at the last
        ``expires_at``: resumable until then, removed by :meth:`expire` after.
        The default does nothing: a store that lives and dies with its process
        (memory) has no orphans.

        Raises:
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def epoch(self) -> str:
        """The store's epoch: an id that changes when the store lost its data.

        Raises:
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def create(
        self, sid: str, *, token_hash: str, principal: str | None, now: float
    ) -> SessionRecord:
        """Create a new attached session at generation 1.

        Raises:
            SessionExists: ``sid`` is taken.
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def load(self, sid: str) -> SessionRecord | None:
        """The session's record, or None when the store does not know ``sid``.

        Raises:
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def claim(
        self,
        sid: str,
        expected_generation: int,
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> SessionRecord:
        """Take the session over for a new connection: compare-and-set the generation.

        Atomically: if the generation is still ``expected_generation``, bump it,
        store the two accepted token hashes (the new token, and the one the
        client just presented, in case the welcome is lost), store ``attempt``
        as the record's ``attempt`` unless it is None (a hello without a number
        leaves the stored one as it is) and clear ``expires_at`` (attached
        again). Returns the new record.

        Raises:
            Fenced: somebody else claimed it first.
            UnknownSession: the session is gone.
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        """Held messages with ``seq > after``, oldest first (what a resume replays).

        Raises:
            UnknownSession: the session is gone.
            StoreUnavailable: the backend failed.
        """

    async def resume(
        self,
        sid: str,
        admit: Callable[[SessionRecord], bool],
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> Resumption:
        """Load the session, judge it with ``admit``, claim it and read its replay.

        The steps of a resume in one call, so that a store can make them one trip
        (SQLite: one transaction on its thread, where ``admit`` then runs; it must
        be quick and must not touch the event loop). When ``admit(record)`` is
        true, the session is claimed as :meth:`claim` would from the loaded
        ``record.generation`` with these token hashes and ``attempt``. The default awaits
        :meth:`load`, :meth:`claim` and :meth:`messages` in turn.

        Returns:
            ``Resumption(None, None)``: the store does not know ``sid``;
            ``Resumption(record, None)``: ``admit`` refused the record, nothing changed;
            ``Resumption(claimed, messages)``: claimed, with the messages to replay.

        Raises:
            Fenced: another connection claimed the session between the load and the
                claim (not in a store that does both in one step); judge again.
            UnknownSession: the session went away between the load and the claim.
            StoreUnavailable: the backend failed; the claim may or may not have happened.
        """
        record = await self.load(sid)
        if record is None or not admit(record):
            return Resumption(record, None)
        # Passed only when set: a store's claim written before the parameter still works.
        numbered = {} if attempt is None else {"attempt": attempt}
        claimed = await self.claim(
            sid,
            record.generation,
            token_hash=token_hash,
            previous_token_hash=previous_token_hash,
            **numbered,
        )
        return Resumption(claimed, await self.messages(sid, after=claimed.acked))

    @abc.abstractmethod
    async def write(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> SessionRecord:
        """Apply one batch atomically, after checking the generation; return the record.

        Args:
            sid: the session id.
            generation: the generation the caller holds.
            append: new outgoing messages; their seqs must be ``tx+1, tx+2, ...``.
            acked: the client acked up to here: drop messages ``seq <= acked``.
                Ignored when not above the stored ``acked``; must not exceed the new ``tx``.
            rx: the server received client messages up to here. Ignored when not
                above the stored ``rx``.

        Raises:
            Fenced: the generation moved on; nothing was written.
            UnknownSession: the session is gone.
            StoreError: the batch is inconsistent (non-contiguous seqs, ack beyond tx).
            StoreUnavailable: the backend failed.
        """

    async def write_many(self, writes: Sequence[Write]) -> list[BaseException | None]:
        """Apply several sessions' batches, each exactly as :meth:`write` would apply it alone.

        For the server adapter, which gathers the batches of all its sessions that
        wrote in one event-loop turn into one call: no task per session. Each write
        stands alone: one that is refused (fenced, say) or fails changes nothing for
        the others. The default awaits :meth:`write` for each, concurrently; a store
        may do better (SQLite: one group on its thread, answered with one wake-up).

        Returns:
            Per write, in order: None when written, else what :meth:`write` would
            have raised for it (:class:`Fenced`, :class:`UnknownSession`,
            :class:`StoreUnavailable`, ...).
        """
        results = await asyncio.gather(
            *(self._write_one(w) for w in writes), return_exceptions=True
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def _write_one(self, w: Write) -> None:
        if not w.only_detaches:
            await self.write(w.sid, w.generation, append=w.append, acked=w.acked, rx=w.rx)
        if w.detach_at is not None:
            await self.detach(w.sid, w.generation, expires_at=w.detach_at)

    def write_nowait(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> bool:
        """Apply :meth:`write` at once, without awaiting, when this store can; else False.

        An in-process store (memory) does the write here and returns True, so the
        server adapter pays no task switch per message; a store that needs I/O
        returns False (the default) and the adapter awaits :meth:`write` instead.
        When it returns True the write happened exactly as :meth:`write` would have.

        Raises:
            The same as :meth:`write`, when the store tried the write.
        """
        return False

    @abc.abstractmethod
    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        """The connection was lost: the session may be resumed until ``expires_at``.

        Raises:
            Fenced: the generation moved on (the session lives elsewhere); nothing changed.
            UnknownSession: the session is gone.
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def abandon(self, sid: str, generation: int, *, reason: str) -> None:
        """Mark the session as not resumable (``lost = reason``) and drop its messages.

        Used when the server cannot keep a session's promise (its buffer
        overflowed while the client was away), so the next resume is refused
        with that reason instead of partially.

        Raises:
            Fenced: the generation moved on; nothing changed.
            UnknownSession: the session is gone.
            StoreUnavailable: the backend failed.
        """

    async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
        """Record that the application ended the session (``code``, ``reason``).

        Called when the handler closes (or returns, or fails) while its client is
        away: what the handler sent is still owed to the client, so the record
        stays resumable, and whichever server the client resumes on (another
        node, this process's replacement) replays the held messages and then
        closes with ``code`` instead of starting the handler again. Kept by
        :meth:`claim`; the record goes with :meth:`delete` or the expiry as usual.

        The default raises :class:`NotImplementedError` (a store written before
        this method): the server then keeps the older behaviour, where only a
        resume on the same process sees the end.

        Raises:
            Fenced: the generation moved on; nothing changed.
            UnknownSession: the session is gone.
            StoreUnavailable: the backend failed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not record ended sessions")

    @abc.abstractmethod
    async def delete(self, sid: str, *, generation: int | None = None) -> None:
        """Remove the session and its messages (the session ended); absent is fine.

        Args:
            sid: the session id.
            generation: remove it only while it is still at this generation: a
                session claimed since (resumed on another node) is left alone.
                None: whatever its generation.

        Raises:
            StoreUnavailable: the backend failed.
        """

    @abc.abstractmethod
    async def expire(self, now: float) -> int:
        """Remove every detached session with ``expires_at <= now``; return how many.

        Also every session still attached through a store instance whose last
        :meth:`renew` was for ``expires_at <= now`` (its process is gone).
        Backends with native expiry (Redis) may have removed detached ones already.

        Raises:
            StoreUnavailable: the backend failed.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the backend's resources (connections, files)."""
