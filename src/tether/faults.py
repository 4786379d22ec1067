"""Fault decisions for ``tether chaos``, with time and randomness as arguments.

The asyncio proxy (``tether/asyncio/chaos.py``) moves bytes; this module decides
*when* a connection is killed or blackholed and *when* each chunk of bytes may be
delivered, so the decisions are tested with a fake clock and a seeded rng.

Two small machines, in the style of :mod:`tether.heartbeat`:

* :class:`ConnectionFaults`, one per proxied connection: ``next_deadline()`` says
  when to call ``handle_timer(now)``, which returns the fault due then (kill or
  blackhole) or None; ``activity(now)`` pushes the idle deadline back.
* :class:`Shaper`, one per direction of a connection: ``schedule(now, nbytes)``
  returns the time a chunk may be written, adding latency ± jitter and the
  serialization delay of a bandwidth limit, never reordering chunks.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from ._numbers import is_finite_number
from .exceptions import ConfigurationError

__all__ = [
    "ConnectionFaults",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "Shaper",
    "random_kill_delay",
]


class FaultKind(str, enum.Enum):
    """What the proxy does to a connection."""

    #: Abort both TCP connections (RST, no Close frame): the peers report 1006.
    KILL = "kill"
    #: Stop forwarding in both directions but keep both sockets open (half-open link).
    BLACKHOLE = "blackhole"
    #: Resume forwarding after a blackhole (a healed partition); nothing was dropped.
    HEAL = "heal"


@dataclass(frozen=True)
class Fault:
    """A fault decided for one connection.

    Attributes:
        kind: what to do.
        reason: which setting caused it: ``kill_after``, ``kill_random``,
            ``blackhole_after``, ``idle_timeout`` or ``manual``.
    """

    kind: FaultKind
    reason: str


def _check_amount(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Refuse a setting (seconds, milliseconds, kbit/s) that is not None or a finite number.

    It must be > 0, or >= 0 with ``allow_zero``. A string or a bool is refused with
    this error, not a TypeError from the comparison.
    """
    if value is None:
        return
    if not (is_finite_number(value) and (value > 0 or (value == 0 and allow_zero))):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound} or None, got {value!r}")


@dataclass(frozen=True)
class FaultPlan:
    """What the chaos proxy does to every connection. ``None`` disables a fault.

    Attributes:
        kill_after: abort each connection this many seconds after it opened.
        kill_random: probability (0-1) that a connection is aborted in any given
            second of its life (a memoryless schedule: exponential with rate
            ``-ln(1 - p)`` per second).
        blackhole_after: stop forwarding this many seconds after the connection
            opened, keeping both sockets open.
        idle_timeout: abort a connection on which no byte moved, in either
            direction, for this many seconds (what load balancers do).
        latency_ms: delay added to every chunk, each direction, in milliseconds.
        jitter_ms: the delay varies uniformly by ± this much (order is kept).
        bandwidth_kbps: per direction and per connection, in kilobits per second.
    """

    kill_after: float | None = None
    kill_random: float | None = None
    blackhole_after: float | None = None
    idle_timeout: float | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_kbps: float | None = None

    def __post_init__(self) -> None:
        _check_amount("kill_after", self.kill_after, allow_zero=True)
        _check_amount("blackhole_after", self.blackhole_after, allow_zero=True)
        _check_amount("idle_timeout", self.idle_timeout)
        _check_amount("bandwidth_kbps", self.bandwidth_kbps)
        _check_amount("latency_ms", self.latency_ms, allow_zero=True)
        _check_amount("jitter_ms", self.jitter_ms, allow_zero=True)
        if self.kill_random is not None and not (
            is_finite_number(self.kill_random) and 0.0 <= self.kill_random <= 1.0
        ):
            raise ConfigurationError(
                f"kill_random is a probability per second, 0-1, got {self.kill_random!r}"
            )
        if self.jitter_ms > self.latency_ms:
            # A negative delay would mean delivering before receiving.
            raise ConfigurationError("jitter_ms may not exceed latency_ms")


def random_kill_delay(probability: float, rng: random.Random) -> float | None:
    """Seconds until a connection is killed when it dies with ``probability`` per second.

    Surviving one second has probability ``1 - p``; the memoryless schedule with
    that property is exponential with rate ``-ln(1 - p)``. Returns None when
    ``probability`` is 0 (never) and 0.0 when it is 1 (at once).
    """
    if probability <= 0.0:
        return None
    if probability >= 1.0:
        return 0.0
    return rng.expovariate(-math.log1p(-probability))


class ConnectionFaults:
    """Decides when one proxied connection is killed or blackholed.

    Args:
        plan: the proxy's fault settings.
        now: the time the connection opened (seconds, any monotonic clock).
        rng: the source of randomness for ``kill_random``.
    """

    def __init__(self, plan: FaultPlan, now: float, rng: random.Random) -> None:
        self.plan = plan
        self.opened_at = now
        self._last_activity = now
        self._kill_at: float | None = None
        self._kill_reason = ""
        for reason, delay in (
            ("kill_after", plan.kill_after),
            (
                "kill_random",
                None if plan.kill_random is None else random_kill_delay(plan.kill_random, rng),
            ),
        ):
            if delay is not None and (self._kill_at is None or now + delay < self._kill_at):
                self._kill_at = now + delay
                self._kill_reason = reason
        self._blackhole_at = None if plan.blackhole_after is None else now + plan.blackhole_after
        self.blackholed = False
        self.killed = False

    @property
    def kill_at(self) -> float | None:
        """When the connection will be killed by ``kill_after``/``kill_random``, if ever."""
        return self._kill_at

    def _idle_deadline(self) -> float | None:
        if self.plan.idle_timeout is None:
            return None
        return self._last_activity + self.plan.idle_timeout

    def activity(self, now: float) -> None:
        """Record that bytes moved on the connection at ``now``."""
        self._last_activity = max(self._last_activity, now)

    def next_deadline(self) -> float | None:
        """The time at which :meth:`handle_timer` must next be called, or None."""
        if self.killed:
            return None
        candidates = [self._kill_at, self._idle_deadline()]
        if not self.blackholed:
            candidates.append(self._blackhole_at)
        present = [t for t in candidates if t is not None]
        return min(present) if present else None

    def handle_timer(self, now: float) -> Fault | None:
        """Return the fault due at ``now``, or None if nothing is due yet.

        A kill wins over a blackhole due at the same moment: it is the stronger fault.
        """
        if self.killed:
            return None
        if self._kill_at is not None and now >= self._kill_at:
            self.killed = True
            return Fault(FaultKind.KILL, self._kill_reason)
        idle_deadline = self._idle_deadline()
        if idle_deadline is not None and now >= idle_deadline:
            self.killed = True
            return Fault(FaultKind.KILL, "idle_timeout")
        if not self.blackholed and self._blackhole_at is not None and now >= self._blackhole_at:
            self.blackholed = True
            return Fault(FaultKind.BLACKHOLE, "blackhole_after")
        return None


class Shaper:
    """Delivery times for the chunks of one direction of one connection.

    Each chunk is delayed by ``latency ± jitter``; with a bandwidth limit it also
    waits for the previous chunk to finish and takes ``bytes * 8 / rate`` to
    "cross the link". Delivery times never decrease, so chunks keep their order
    (TCP is a byte stream: reordering would corrupt it).

    Args:
        plan: the proxy's fault settings (latency, jitter, bandwidth).
        rng: the source of randomness for the jitter.
    """

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self._latency = plan.latency_ms / 1000.0
        self._jitter = plan.jitter_ms / 1000.0
        self._bytes_per_second = (
            None if plan.bandwidth_kbps is None else plan.bandwidth_kbps * 1000.0 / 8.0
        )
        self._rng = rng
        self._last_delivery = -math.inf
        self._link_free = -math.inf

    @property
    def max_chunk(self) -> int:
        """Largest chunk worth reading at once: about 100 ms of link time when limited."""
        if self._bytes_per_second is None:
            return 65536
        return max(256, min(65536, int(self._bytes_per_second / 10)))

    def schedule(self, now: float, nbytes: int) -> float:
        """Return the time at which a chunk of ``nbytes`` received at ``now`` may be written."""
        delay = self._latency
        if self._jitter:
            delay += self._rng.uniform(-self._jitter, self._jitter)
        sent = now
        if self._bytes_per_second is not None:
            # The link carries one chunk at a time: it starts when the link is free
            # and has fully crossed it ``nbytes / rate`` seconds later.
            sent = max(now, self._link_free) + nbytes / self._bytes_per_second
            self._link_free = sent
        delivery = max(sent + delay, self._last_delivery, now)
        self._last_delivery = delivery
        return delivery
