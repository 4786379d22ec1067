"""In-process session store (the default): fast, lost with the process.

Every method completes without awaiting anything, so each one is atomic with
respect to the event loop; the ``async`` signatures are the interface's, and
:meth:`MemoryStore.write_nowait` lets the server adapter write without a task
switch per message. One ``MemoryStore`` object passed to successive ``serve()``
calls in the same process keeps sessions across a planned restart of the server
object; a new process gets a new epoch, so old tokens fail with ``epoch_mismatch``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..exceptions import StoreError
from .base import (
    Fenced,
    SessionExists,
    SessionRecord,
    SessionStore,
    StoredMessage,
    UnknownSession,
)

__all__ = ["MemoryStore"]


class _Held:
    """One session in the store: its record, with the fields a write moves kept apart.

    ``write`` runs once per message sent or taken; rebuilding the frozen record
    each time cost more than the rest of the write, so ``tx``, ``acked`` and
    ``rx`` live here and :meth:`snapshot` folds them into a record on demand.
    """

    __slots__ = ("acked", "messages", "record", "rx", "tx")

    def __init__(self, record: SessionRecord) -> None:
        self.record = record
        self.tx = record.tx
        self.acked = record.acked
        self.rx = record.rx
        # Made at the first append and dropped when trimmed empty: an empty deque
        # costs ~600 bytes, and most sessions hold nothing most of the time.
        self.messages: deque[StoredMessage] | tuple[()] = ()

    def snapshot(self) -> SessionRecord:
        record = self.record
        if (record.tx, record.acked, record.rx) != (self.tx, self.acked, self.rx):
            record = _replaced(record, {"tx": self.tx, "acked": self.acked, "rx": self.rx})
            self.record = record
        return record

    def update(self, **changes: Any) -> SessionRecord:
        changes["tx"] = self.tx
        changes["acked"] = self.acked
        changes["rx"] = self.rx
        self.record = _replaced(self.record, changes)
        return self.record


def _replaced(record: SessionRecord, changes: dict[str, Any]) -> SessionRecord:
    """``dataclasses.replace(record, **changes)``, for the memory store's own records.

    Every resume (a claim) and every disconnect (a detach) makes a new record:
    ``dataclasses.replace`` reads each field by name, and the frozen ``__init__``
    sets each one through ``object.__setattr__``, which cost more than the rest of
    the store's claim. A :class:`SessionRecord` has no ``__post_init__``: copying its
    fields gives the same record. (A subclass, from a subclass of this store, goes
    through ``dataclasses.replace``.)
    """
    if type(record) is not SessionRecord:
        return dataclasses.replace(record, **changes)
    new = object.__new__(SessionRecord)
    fields = new.__dict__  # (filled in place: no frozen __setattr__ involved)
    fields.update(record.__dict__)
    fields.update(changes)
    return new


class MemoryStore(SessionStore):
    """Sessions in a dict.

    Args:
        epoch: the store epoch; a random one (128 bits) by default, so that two
            processes never share one.
    """

    def __init__(self, *, epoch: str | None = None) -> None:
        self._epoch = epoch if epoch is not None else secrets.token_urlsafe(16)
        self._held: dict[str, _Held] = {}

    async def epoch(self) -> str:
        """The epoch chosen at construction."""
        return self._epoch

    async def create(
        self, sid: str, *, token_hash: str, principal: str | None, now: float
    ) -> SessionRecord:
        """Create a session at generation 1 (see :meth:`SessionStore.create`)."""
        if sid in self._held:
            raise SessionExists(f"session {sid} already exists")
        record = SessionRecord(sid, token_hash, principal, generation=1, created_at=now)
        self._held[sid] = _Held(record)
        return record

    async def load(self, sid: str) -> SessionRecord | None:
        """The record for ``sid``, or None."""
        held = self._held.get(sid)
        return None if held is None else held.snapshot()

    async def claim(
        self,
        sid: str,
        expected_generation: int,
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> SessionRecord:
        """Compare-and-set the generation (see :meth:`SessionStore.claim`)."""
        held = self._owned(sid, expected_generation)
        return held.update(
            generation=held.record.generation + 1,
            token_hash=token_hash,
            previous_token_hash=previous_token_hash,
            expires_at=None,
            attempt=held.record.attempt if attempt is None else attempt,
        )

    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        """Held messages with ``seq > after``, oldest first."""
        held = self._held.get(sid)
        if held is None:
            raise UnknownSession(f"session {sid} is unknown")
        return [message for message in held.messages if message.seq > after]

    async def write(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> SessionRecord:
        """Append, trim and record rx in one step (see :meth:`SessionStore.write`)."""
        return self._apply(sid, generation, append, acked, rx).snapshot()

    def write_nowait(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> bool:
        """:meth:`write`, done here and now (always possible in memory): True."""
        self._apply(sid, generation, append, acked, rx)
        return True

    def _apply(
        self,
        sid: str,
        generation: int,
        append: Sequence[StoredMessage],
        acked: int | None,
        rx: int | None,
    ) -> _Held:
        held = self._held.get(sid)
        if held is None:
            raise UnknownSession(f"session {sid} is unknown")
        if held.record.generation != generation:
            raise Fenced(sid, generation, held.record.generation)
        # Validate the whole batch before changing anything: all or nothing.
        tx = held.tx
        for message in append:
            if message.seq != tx + 1:
                raise StoreError(f"session {sid}: appended seq {message.seq}, expected {tx + 1}")
            tx = message.seq
        new_acked = held.acked if acked is None or acked <= held.acked else acked
        if new_acked > tx:
            raise StoreError(f"session {sid}: ack {new_acked} is beyond tx {tx}")
        messages = held.messages
        if append:
            if not isinstance(messages, deque):
                messages = held.messages = deque()
            messages.extend(append)
            held.tx = tx
        if new_acked != held.acked:
            held.acked = new_acked
            if messages and messages[0].seq <= new_acked:
                assert isinstance(messages, deque)
                while messages and messages[0].seq <= new_acked:
                    messages.popleft()
                if not messages:
                    held.messages = ()
        if rx is not None and rx > held.rx:
            held.rx = rx
        return held

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        """Start the expiry clock (see :meth:`SessionStore.detach`)."""
        self._owned(sid, generation).update(expires_at=expires_at)

    async def abandon(self, sid: str, generation: int, *, reason: str) -> None:
        """Mark the session lost and drop its messages (see :meth:`SessionStore.abandon`)."""
        held = self._owned(sid, generation)
        held.acked = held.tx
        held.update(lost=reason)
        held.messages = ()

    async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
        """Record the application's close (see :meth:`SessionStore.end`)."""
        self._owned(sid, generation).update(end_code=code, end_reason=reason)

    async def delete(self, sid: str, *, generation: int | None = None) -> None:
        """Forget the session (only at ``generation``, when given)."""
        held = self._held.get(sid)
        if held is not None and generation is not None and held.record.generation != generation:
            return  # claimed since: another connection's now
        self._held.pop(sid, None)

    async def expire(self, now: float) -> int:
        """Forget every detached session whose window ended by ``now``."""
        expired = [
            sid
            for sid, held in self._held.items()
            if held.record.expires_at is not None and held.record.expires_at <= now
        ]
        for sid in expired:
            await self.delete(sid)
        return len(expired)

    def _owned(self, sid: str, generation: int) -> _Held:
        held = self._held.get(sid)
        if held is None:
            raise UnknownSession(f"session {sid} is unknown")
        if held.record.generation != generation:
            raise Fenced(sid, generation, held.record.generation)
        return held
