"""The staged drain of a planned restart: which connections to close when (DESIGN.md §6).

Closing every connection at the same instant (what uvicorn does on shutdown) makes
every client come back at the same instant: a thundering herd on the replacement.
tether closes them in batches spread evenly over a *drain window*, so even clients
that reconnect after the same fixed delay arrive spread over that window.

Pure code: the caller passes ``now`` (seconds on any monotonic clock).
:class:`DrainSchedule` tells the adapter how many connections to close at each
deadline; the adapter picks which ones (oldest first) and does the closing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._numbers import is_finite_number
from .exceptions import ConfigurationError

__all__ = ["DEFAULT_BATCH_INTERVAL", "DrainBatch", "DrainSchedule", "check_window", "plan_drain"]

#: Smallest time between two batches, in seconds. Batches closer than this gain
#: nothing for the clients (their reconnect jitter is coarser) and cost wake-ups.
DEFAULT_BATCH_INTERVAL = 0.05


@dataclass(frozen=True)
class DrainBatch:
    """One batch of the drain.

    Attributes:
        offset: seconds after the start of the drain at which the batch is closed.
        size: how many connections the batch closes.
    """

    offset: float
    size: int


def check_window(window: float, name: str = "drain window") -> float:
    """``window`` if it is a finite number of seconds >= 0, else ConfigurationError.

    Also for callers that must refuse a window before a drain starts (a window the
    drain's schedule refused would leave a server draining for good).
    """
    if not (is_finite_number(window) and window >= 0):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, not {window!r}")
    return window


def plan_drain(
    count: int, window: float, *, batch_interval: float = DEFAULT_BATCH_INTERVAL
) -> tuple[DrainBatch, ...]:
    """Split ``count`` connections into batches spread evenly over ``window`` seconds.

    The first batch goes at offset 0 and the last at offset ``window``, so the
    first and last close are a whole window apart whenever there are at least two
    batches. Batch sizes differ by at most one; the larger ones go first, so the
    drain never lags behind an even spread.

    Args:
        count: number of open connections (>= 0).
        window: the drain window in seconds (>= 0); 0 closes everything at once.
        batch_interval: smallest spacing between batches in seconds (> 0); it caps
            the number of batches at ``window / batch_interval + 1``.

    Returns:
        The batches in order; empty when ``count`` is 0.

    Raises:
        ConfigurationError: a negative count or window, or a non-positive interval.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigurationError(f"connection count must be an integer >= 0, not {count!r}")
    check_window(window)
    if not batch_interval > 0:
        raise ConfigurationError(f"batch interval must be > 0 seconds, not {batch_interval!r}")
    if count == 0:
        return ()
    batches = min(count, math.floor(window / batch_interval) + 1)
    if batches == 1:
        return (DrainBatch(0.0, count),)
    step = window / (batches - 1)
    small, extra = divmod(count, batches)
    return tuple(
        DrainBatch(index * step, small + (1 if index < extra else 0)) for index in range(batches)
    )


class DrainSchedule:
    """Drives a drain plan against a clock the caller reads.

    Call :meth:`next_deadline`, sleep until then, and call :meth:`due` with the
    current time: it returns how many connections to close now. When
    :attr:`finished` is True every batch has been handed out.

    Args:
        count: number of connections to close.
        window: the drain window in seconds.
        now: the time the drain starts.
        batch_interval: smallest spacing between batches in seconds.
    """

    def __init__(
        self,
        count: int,
        window: float,
        now: float,
        *,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
    ) -> None:
        self.start = now
        self.batches = plan_drain(count, window, batch_interval=batch_interval)
        self._next = 0

    @property
    def finished(self) -> bool:
        """True once every batch has been returned by :meth:`due`."""
        return self._next >= len(self.batches)

    def next_deadline(self) -> float | None:
        """The time at which the next batch is due, or None when finished."""
        if self.finished:
            return None
        return self.start + self.batches[self._next].offset

    def due(self, now: float) -> int:
        """Return how many connections to close at ``now`` (every batch now due)."""
        total = 0
        while not self.finished and now >= self.start + self.batches[self._next].offset:
            total += self.batches[self._next].size
            self._next += 1
        return total
