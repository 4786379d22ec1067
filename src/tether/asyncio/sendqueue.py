"""The client's outgoing queue: bounded, ordered, kept across reconnects.

It is separate from any transport on purpose: messages wait here while the
connection is down, and the client takes them out only once the transport
accepted them, so a message is never lost between two connections (a session
layer can later keep its own replay buffer on top).

Waiters are futures created only when someone has to wait (for space, for an
item, for the queue to empty): appending to or popping from a queue that nobody
waits on wakes no task.
"""

from __future__ import annotations

import asyncio
import collections

from ..exceptions import ConfigurationError, QueueFull
from .engine import Message
from .waiters import bounded, wait_on, wake_all

__all__ = ["QueueClosed", "SendQueue"]


class QueueClosed(Exception):
    """The queue was drained for good while ``put`` waited (internal to the adapter)."""


class SendQueue:
    """A FIFO of outgoing messages with a bounded size and a bounded wait for space.

    Args:
        max_size: most messages held at once; None for no bound.
    """

    def __init__(self, max_size: int | None) -> None:
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            # (A float was taken: nan compared false, so the queue had no bound at all.)
            raise ConfigurationError(
                f"max_queue must be a whole number >= 1 or None, not {max_size!r}"
            )
        self.max_size = max_size
        self._items: collections.deque[Message] = collections.deque()
        self._space_waiters: list[asyncio.Future[None]] = []
        self._item_waiters: list[asyncio.Future[None]] = []
        self._empty_waiters: list[asyncio.Future[None]] = []
        #: One token per put() waiting for space, in call order: room goes to the
        #: first, and a newcomer queues behind them (send() order is call order).
        #: Public for the sender's fast path: a send() may skip the queue only when
        #: it is empty *and* nobody waits to enter it.
        self.turns: list[object] = []
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        # Asked on every send(): one call where __len__ costs two (it calls len()).
        return bool(self._items)

    @property
    def full(self) -> bool:
        """True when no further message fits now."""
        return self.max_size is not None and len(self._items) >= self.max_size

    @property
    def must_wait(self) -> bool:
        """True when :meth:`put` would have to wait: full, or earlier puts wait for room."""
        return bool(self.turns) or self.full

    async def put(self, message: Message, *, timeout: float | None) -> None:
        """Append ``message``, waiting up to ``timeout`` seconds for space.

        Raises:
            QueueFull: the queue stayed full for ``timeout`` seconds (None: wait forever).
            QueueClosed: the queue was drained for good (the connection ended) meanwhile.
        """
        if self.closed:
            raise QueueClosed
        if self.must_wait:
            turn = object()
            self.turns.append(turn)
            try:
                await bounded(self._wait_for_space(turn), timeout)
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise QueueFull(
                    f"send queue full ({self.max_size} messages) for {timeout} s; "
                    "the message was not queued"
                ) from exc
            finally:
                self.turns.remove(turn)
                if self.turns and self._space_waiters:
                    wake_all(self._space_waiters)  # the next in line looks again
        if self.closed:
            # The connection ended while we waited: queueing now would strand the
            # message where nothing will ever send it.
            raise QueueClosed
        self.append(message)

    def append(self, message: Message) -> None:
        """Append ``message`` now; the caller checked that the queue is neither full nor closed."""
        self._items.append(message)
        if self._item_waiters:
            wake_all(self._item_waiters)

    async def _wait_for_space(self, turn: object) -> None:
        while (self.full or self.turns[0] is not turn) and not self.closed:
            await wait_on(self._space_waiters)

    def head(self) -> Message:
        """The oldest message, left queued (the caller checked there is one)."""
        return self._items[0]

    async def peek(self) -> Message:
        """Wait until a message is queued and return the oldest, leaving it queued."""
        while not self._items:
            await wait_on(self._item_waiters)
        return self._items[0]

    def pop(self) -> Message:
        """Remove the oldest message (once the transport accepted it)."""
        message = self._items.popleft()
        if self._space_waiters:
            # Every waiter re-checks; a wait cancelled by its timeout must not
            # swallow the wakeup that another waiter needed.
            wake_all(self._space_waiters)
        if not self._items and self._empty_waiters:
            wake_all(self._empty_waiters)
        return message

    async def wait_empty(self) -> None:
        """Wait until every queued message was taken out."""
        while self._items:
            await wait_on(self._empty_waiters)

    def drain(self) -> tuple[Message, ...]:
        """Remove and return everything still queued; later ``put`` calls raise QueueClosed."""
        self.closed = True
        items = tuple(self._items)
        self._items.clear()
        wake_all(self._space_waiters)
        wake_all(self._item_waiters)
        wake_all(self._empty_waiters)
        return items
