"""In-process session store (the default): fast, lost with the process.

Every method completes without awaiting anything, so each one is atomic with
respect to the event loop; the ``async`` signatures are the interface's. One
``MemoryStore`` object passed to successive ``serve()`` calls in the same
process keeps sessions across a planned restart of the server object; a new
process gets a new epoch, so old tokens fail with ``epoch_mismatch``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque
from collections.abc import Sequence

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


class MemoryStore(SessionStore):
    """Sessions in a dict.

    Args:
        epoch: the store epoch; a random one (128 bits) by default, so that two
            processes never share one.
    """

    def __init__(self, *, epoch: str | None = None) -> None:
        self._epoch = epoch if epoch is not None else secrets.token_urlsafe(16)
        self._records: dict[str, SessionRecord] = {}
        self._messages: dict[str, deque[StoredMessage]] = {}

    async def epoch(self) -> str:
        """The epoch chosen at construction."""
        return self._epoch

    async def create(
        self, sid: str, *, token_hash: str, principal: str | None, now: float
    ) -> SessionRecord:
        """Create a session at generation 1 (see :meth:`SessionStore.create`)."""
        if sid in self._records:
            raise SessionExists(f"session {sid} already exists")
        record = SessionRecord(sid, token_hash, principal, generation=1, created_at=now)
        self._records[sid] = record
        self._messages[sid] = deque()
        return record

    async def load(self, sid: str) -> SessionRecord | None:
        """The record for ``sid``, or None."""
        return self._records.get(sid)

    async def claim(
        self,
        sid: str,
        expected_generation: int,
        *,
        token_hash: str,
        previous_token_hash: str,
    ) -> SessionRecord:
        """Compare-and-set the generation (see :meth:`SessionStore.claim`)."""
        record = self._owned(sid, expected_generation)
        record = dataclasses.replace(
            record,
            generation=record.generation + 1,
            token_hash=token_hash,
            previous_token_hash=previous_token_hash,
            expires_at=None,
        )
        self._records[sid] = record
        return record

    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        """Held messages with ``seq > after``, oldest first."""
        if sid not in self._records:
            raise UnknownSession(f"session {sid} is unknown")
        return [message for message in self._messages[sid] if message.seq > after]

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
        record = self._owned(sid, generation)
        # Validate the whole batch before changing anything: all or nothing.
        tx = record.tx
        for message in append:
            if message.seq != tx + 1:
                raise StoreError(f"session {sid}: appended seq {message.seq}, expected {tx + 1}")
            tx = message.seq
        new_acked = record.acked if acked is None else max(record.acked, acked)
        if new_acked > tx:
            raise StoreError(f"session {sid}: ack {new_acked} is beyond tx {tx}")
        held = self._messages[sid]
        held.extend(append)
        while held and held[0].seq <= new_acked:
            held.popleft()
        new_rx = record.rx if rx is None else max(record.rx, rx)
        record = dataclasses.replace(record, tx=tx, acked=new_acked, rx=new_rx)
        self._records[sid] = record
        return record

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        """Start the expiry clock (see :meth:`SessionStore.detach`)."""
        record = self._owned(sid, generation)
        self._records[sid] = dataclasses.replace(record, expires_at=expires_at)

    async def abandon(self, sid: str, generation: int, *, reason: str) -> None:
        """Mark the session lost and drop its messages (see :meth:`SessionStore.abandon`)."""
        record = self._owned(sid, generation)
        self._records[sid] = dataclasses.replace(record, lost=reason, acked=record.tx)
        self._messages[sid].clear()

    async def delete(self, sid: str) -> None:
        """Forget the session."""
        self._records.pop(sid, None)
        self._messages.pop(sid, None)

    async def expire(self, now: float) -> int:
        """Forget every detached session whose window ended by ``now``."""
        expired = [
            sid
            for sid, record in self._records.items()
            if record.expires_at is not None and record.expires_at <= now
        ]
        for sid in expired:
            await self.delete(sid)
        return len(expired)

    def _owned(self, sid: str, generation: int) -> SessionRecord:
        record = self._records.get(sid)
        if record is None:
            raise UnknownSession(f"session {sid} is unknown")
        if record.generation != generation:
            raise Fenced(sid, generation, record.generation)
        return record
