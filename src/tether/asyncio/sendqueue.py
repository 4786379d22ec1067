"""The client's outgoing queue: bounded, ordered, kept across reconnects.

It is separate from any transport on purpose: messages wait here while the
connection is down, and the delivery loop takes them out only once the transport
accepted them, so a message is never lost between two connections (a session
layer can later keep its own replay buffer on top).
"""

from __future__ import annotations

import asyncio
import collections

from ..exceptions import ConfigurationError, QueueFull
from .engine import Message

__all__ = ["QueueClosed", "SendQueue"]


class QueueClosed(Exception):
    """The queue was drained for good while ``put`` waited (internal to the adapter)."""


class SendQueue:
    """A FIFO of outgoing messages with a bounded size and a bounded wait for space.

    Args:
        max_size: most messages held at once; None for no bound.
    """

    def __init__(self, max_size: int | None) -> None:
        if max_size is not None and (isinstance(max_size, bool) or max_size < 1):
            raise ConfigurationError(f"max_queue must be >= 1 or None, not {max_size!r}")
        self.max_size = max_size
        self._items: collections.deque[Message] = collections.deque()
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """True when :meth:`put` would have to wait."""
        return self.max_size is not None and len(self._items) >= self.max_size

    async def put(self, message: Message, *, timeout: float | None) -> None:
        """Append ``message``, waiting up to ``timeout`` seconds for space.

        Raises:
            QueueFull: the queue stayed full for ``timeout`` seconds (None: wait forever).
            QueueClosed: the queue was drained for good (the connection ended) meanwhile.
        """
        if self._closed:
            raise QueueClosed
        if self.full:
            try:
                await asyncio.wait_for(self._wait_for_space(), timeout)
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise QueueFull(
                    f"send queue full ({self.max_size} messages) for {timeout} s; "
                    "the message was not queued"
                ) from exc
        if self._closed:
            # The connection ended while we waited: queueing now would strand the
            # message where nothing will ever send it.
            raise QueueClosed
        self._items.append(message)
        self._notify()

    async def _wait_for_space(self) -> None:
        while self.full and not self._closed:
            await self._wait_changed()

    async def _wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def peek(self) -> Message:
        """Wait until a message is queued and return the oldest, leaving it queued."""
        while not self._items:
            await self._wait_changed()
        return self._items[0]

    def pop(self) -> Message:
        """Remove the oldest message (once the transport accepted it)."""
        message = self._items.popleft()
        self._notify()
        return message

    async def wait_empty(self) -> None:
        """Wait until every queued message was taken out."""
        while self._items:
            await self._wait_changed()

    def drain(self) -> tuple[Message, ...]:
        """Remove and return everything still queued; later ``put`` calls raise QueueClosed."""
        self._closed = True
        items = tuple(self._items)
        self._items.clear()
        self._notify()
        return items

    def _notify(self) -> None:
        # Wake every waiter; each re-checks its own condition (space, item, empty).
        self._changed.set()
