"""Record a tether connection's events in the background, with their arrival time.

``EventRecorder(conn)`` starts a task that appends ``(time.monotonic(), event)`` for every
event of ``conn.events()``; a test then waits for events by kind (every wait takes a
timeout) or reads them afterwards. ``async with EventRecorder(conn) as events:`` stops the
task on the way out, even when the test fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tether
from tether import Event

__all__ = ["EventRecorder"]

E = TypeVar("E", bound=Event)
T = TypeVar("T")


class EventRecorder:
    """Records ``(time.monotonic(), event)`` for every event of a connection, in a task."""

    def __init__(self, conn: tether.ClientConnection) -> None:
        self.items: list[tuple[float, Event]] = []
        self._taken = 0
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(conn))

    async def _run(self, conn: tether.ClientConnection) -> None:
        async for event in conn.events():
            self.items.append((time.monotonic(), event))
            self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        """Every event of ``kind`` so far, in order."""
        return [event for _, event in self.items if isinstance(event, kind)]

    def count(self, kind: type[Event]) -> int:
        """How many events of ``kind`` arrived so far."""
        return len(self.of(kind))

    def kinds(self) -> list[type[Event]]:
        """The type of every event so far, in order."""
        return [type(event) for _, event in self.items]

    async def wait_for(self, kind: type[E], count: int = 1, timeout: float = 10.0) -> list[E]:
        """Wait until ``count`` events of ``kind`` arrived; return all of them so far."""
        return await self._until(
            lambda: self.of(kind) if self.count(kind) >= count else None, timeout
        )

    async def first(self, kind: type[E], timeout: float, after: float = 0.0) -> tuple[float, E]:
        """The first event of ``kind`` that arrived at or after monotonic time ``after``."""

        def found() -> tuple[float, E] | None:
            for stamp, event in self.items:
                if stamp >= after and isinstance(event, kind):
                    return stamp, event
            return None

        return await self._until(found, timeout)

    async def next(self, kind: type[E], timeout: float) -> tuple[float, E]:
        """The next event of ``kind`` not yet taken by ``next`` (events before it are skipped)."""

        def found() -> tuple[float, E] | None:
            while self._taken < len(self.items):
                stamp, event = self.items[self._taken]
                self._taken += 1
                if isinstance(event, kind):
                    return stamp, event
            return None

        return await self._until(found, timeout)

    async def _until(self, found: Callable[[], T | None], timeout: float) -> T:
        """Check ``found`` again after each new event until it gives a value (``timeout`` s)."""

        async def wait() -> T:
            while (value := found()) is None:
                self._changed.clear()
                await self._changed.wait()
            return value

        return await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        """Stop recording (what was recorded stays readable)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> EventRecorder:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
