"""The replay buffer: outgoing messages kept until the peer acknowledges them.

Bounded by count, by bytes and (checked by :mod:`tether.resume`) by age. Sequence
numbers are assigned here, at :meth:`ReplayBuffer.push`, so a message keeps its
number across reconnects and the receiver can drop a replayed duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .exceptions import QueueFull
from .protocol import MAX_SEQ, Payload

__all__ = ["Entry", "ReplayBuffer", "payload_size"]


def payload_size(payload: Payload) -> int:
    """Size of ``payload`` on the wire, in bytes (UTF-8 for text)."""
    if isinstance(payload, str) and not payload.isascii():
        return len(payload.encode("utf-8"))
    return len(payload)


class Entry(NamedTuple):
    """One buffered outgoing message (a named tuple: one is made per message sent).

    Attributes:
        seq: its sequence number.
        payload: the application message.
        size: its size in bytes.
        queued_at: when it entered the buffer, in seconds.
    """

    seq: int
    payload: Payload
    size: int
    queued_at: float


class ReplayBuffer:
    """Unacknowledged outgoing messages, oldest first.

    Args:
        max_messages: most messages held; None for no count bound.
        max_bytes: most payload bytes held; None for no byte bound. A single
            message larger than this is admitted only into an empty buffer, so
            that it can still be sent.
        last_seq: the sequence number assigned last (0 for a new session).

    Attributes:
        oldest_queued_at: when the oldest held message was queued, or None when empty
            (read only; an attribute, not a property: the endpoints read it per message).
    """

    __slots__ = ("_bytes", "_entries", "_last_seq", "max_bytes", "max_messages", "oldest_queued_at")

    def __init__(
        self, *, max_messages: int | None, max_bytes: int | None, last_seq: int = 0
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # An empty deque costs ~600 bytes (one block made up front), and most of a
        # server's sessions hold nothing most of the time: the deque is made at the
        # first message and dropped again when the buffer empties.
        self._entries: deque[Entry] | tuple[()] = ()
        self._bytes = 0
        self._last_seq = last_seq
        self.oldest_queued_at: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @property
    def bytes(self) -> int:
        """Payload bytes currently held."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The sequence number assigned last (0 before the first message)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest held message (``last_seq + 1`` when empty)."""
        return self._entries[0].seq if self._entries else self._last_seq + 1

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits now."""
        if not self._entries:
            return True
        if self.max_messages is not None and len(self._entries) >= self.max_messages:
            return False
        return self.max_bytes is None or self._bytes + size <= self.max_bytes

    def reaches(self, messages: int, size: int) -> bool:
        """Whether it holds at least ``messages`` messages or ``size`` bytes."""
        return self._bytes >= size or len(self._entries) >= messages

    def has_room_for(self, payload: Payload) -> bool:
        """Whether ``payload`` fits now; an empty buffer takes it without measuring it."""
        entries = self._entries
        if not entries:
            return True
        # has_room(payload_size(payload)), inlined: this runs for every message sent.
        if self.max_messages is not None and len(entries) >= self.max_messages:
            return False
        if self.max_bytes is None:
            return True
        size = len(payload) if type(payload) is bytes else payload_size(payload)
        return self._bytes + size <= self.max_bytes

    def push(self, payload: Payload, now: float) -> Entry:
        """Assign the next sequence number to ``payload`` and hold it.

        Raises:
            QueueFull: no room (see :meth:`has_room`), or the sequence space is used up.
        """
        # payload_size() for the common case, inlined: this runs for every message sent.
        size = len(payload) if type(payload) is bytes else payload_size(payload)
        entries = self._entries
        if entries and (
            (self.max_messages is not None and len(entries) >= self.max_messages)
            or (self.max_bytes is not None and self._bytes + size > self.max_bytes)
        ):
            # has_room(), inlined: this runs for every message sent.
            raise QueueFull(f"replay buffer full ({len(entries)} messages, {self._bytes} bytes)")
        if self._last_seq >= MAX_SEQ:
            raise QueueFull(f"sequence numbers exhausted at {MAX_SEQ}")
        if not isinstance(entries, deque):
            entries = self._entries = deque()
        if not entries:
            self.oldest_queued_at = now
        self._last_seq = seq = self._last_seq + 1
        # Entry(...) without the named tuple's Python-level __new__.
        entry = tuple.__new__(Entry, (seq, payload, size, now))
        entries.append(entry)
        self._bytes += size
        return entry

    def restore(self, entries: Iterable[tuple[int, Payload]], now: float) -> None:
        """Load messages read back from a store, oldest first, with contiguous seqs.

        Raises:
            ValueError: the sequence numbers are not contiguous after ``last_seq``
                or the buffer is not empty.
        """
        if self._entries:
            raise ValueError("restore() needs an empty buffer")
        held: deque[Entry] = deque()
        try:
            for seq, payload in entries:
                if seq != self._last_seq + 1:
                    raise ValueError(f"stored messages skip from {self._last_seq} to {seq}")
                entry = Entry(seq, payload, payload_size(payload), now)
                held.append(entry)
                self._bytes += entry.size
                self._last_seq = seq
        finally:
            # What was loaded before a bad seq stays, as it always did.
            if held:
                self._entries = held
                self.oldest_queued_at = held[0].queued_at

    def trim(self, acked: int) -> int:
        """Drop every message with ``seq <= acked``; return how many were dropped."""
        entries = self._entries
        if not entries or entries[0].seq > acked:
            return 0
        assert isinstance(entries, deque)
        dropped = 0
        while entries and entries[0].seq <= acked:
            self._bytes -= entries.popleft().size
            dropped += 1
        if entries:
            self.oldest_queued_at = entries[0].queued_at
        else:
            self._entries = ()
            self.oldest_queued_at = None
        return dropped

    def clear(self) -> tuple[Payload, ...]:
        """Drop everything; return the payloads, oldest first."""
        payloads = tuple(entry.payload for entry in self._entries)
        self._entries = ()
        self._bytes = 0
        self.oldest_queued_at = None
        return payloads
