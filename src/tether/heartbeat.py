"""Ping/pong deadline machine (DESIGN.md §5), with time as an argument.

The adapter asks :meth:`HeartbeatMachine.next_deadline`, sleeps until then, calls
:meth:`HeartbeatMachine.handle_timer` with the current time and does what it returns:
send a ping frame with the given payload, or fail the connection as abnormal (1006).
When a pong arrives it calls :meth:`HeartbeatMachine.pong_received`.

Worst case, a half-open link is detected ``interval + timeout`` seconds after it
died: the next ping goes out at most ``interval`` later and its pong is overdue
``timeout`` after that. A pong may be overdue on a live link, behind data still
moving (:class:`Reading`, :class:`Transfer`); its deadline then moves on, and what
moved is read again each time, so a link that dies meanwhile is still failed within
that bound of the last byte that moved: its death, plus the time the bytes already
in flight take to arrive (the :class:`Reading` grace excepted: an application behind
on its reading delays the verdict by the time it needs to catch up).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ._numbers import is_finite_number
from .exceptions import ConfigurationError

__all__ = ["Heartbeat", "HeartbeatMachine", "Reading", "TimerAction", "TimerResult", "Transfer"]


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat settings, in seconds (write ``Heartbeat(interval=15, timeout=10)``).

    Attributes:
        interval: time between pings; 15 s stays under the 30-60 s idle limits of
            common load balancers and proxies. ``None`` disables the heartbeat.
        timeout: how long to wait for the pong before declaring the link dead.
            ``None`` sends pings (keeping the path busy) but never declares death.
    """

    interval: float | None = 15.0
    timeout: float | None = 10.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (is_finite_number(value) and value > 0):
                raise ConfigurationError(
                    f"heartbeat {name} must be a finite number of seconds > 0, or None; "
                    f"not {value!r}"
                )

    @property
    def enabled(self) -> bool:
        """True when pings are sent."""
        return self.interval is not None

    @property
    def detection_bound(self) -> float | None:
        """Worst-case seconds to detect a dead link (``interval + timeout``), if bounded."""
        if self.interval is None or self.timeout is None:
            return None
        return self.interval + self.timeout


class TimerAction(str, enum.Enum):
    """What the adapter must do when a heartbeat deadline passes."""

    SEND_PING = "send_ping"
    #: No pong within the timeout: fail the connection locally as 1006.
    DEAD = "dead"


@dataclass(frozen=True)
class TimerResult:
    """Result of :meth:`HeartbeatMachine.handle_timer`.

    Attributes:
        action: what to do.
        payload: the ping payload to send (for ``SEND_PING``).
    """

    action: TimerAction
    payload: bytes = b""


@dataclass(frozen=True)
class Reading:
    """How the application's reading stands, for :meth:`HeartbeatMachine.handle_timer`.

    A pong travels behind the data sent before it. When the application reads
    slower than the peer sends, the adapter's buffer of received messages fills and
    reading is held back: the pong may then wait unread behind that data, and an
    overdue pong is no sign of a dead link, provided the application is taking
    messages (one that takes none would hide a dead link for ever).

    Attributes:
        taken: messages the application has taken so far (a running count).
        held: times reading had to wait for room in the buffer so far (a running count).
        full: reading is held back right now.
    """

    taken: int = 0
    held: int = 0
    full: bool = False


@dataclass(frozen=True)
class Transfer:
    """What the connection's bytes are doing, for :meth:`HeartbeatMachine.handle_timer`.

    A ping also travels behind the data sent before it. A side that sends more than
    its path carries (a large message over a slow uplink) finds its ping queued
    behind that data, in its own buffers and in flight, and the pong comes late
    while the link works: the peer's TCP keeps acknowledging the data, bytes that a
    dead link would not acknowledge. Likewise the peer's pong comes behind what
    the peer is sending, whose bytes keep arriving. The adapter reads these counts
    from the kernel (``TCP_INFO`` on Linux); where it cannot, it passes None and
    only :class:`Reading` can delay a verdict.

    Attributes:
        acked: bytes of ours the peer's TCP has acknowledged so far (a running count).
        received: bytes received from the peer so far (a running count).
    """

    acked: int = 0
    received: int = 0


class HeartbeatMachine:
    """Tracks when to ping and when a pong is overdue for one connection.

    Args:
        config: the heartbeat settings.
        now: the time the connection opened.
    """

    def __init__(self, config: Heartbeat, now: float) -> None:
        self.config = config
        self._next_ping: float | None = None if config.interval is None else now + config.interval
        self._outstanding: dict[bytes, float] = {}
        self._pong_deadline: float | None = None
        self._counter = 0
        self._dead = False
        #: The Reading when the current pong window opened (or was last extended).
        self._mark = Reading()
        #: The Transfer then (None: not known, so it cannot show progress).
        self._moved: Transfer | None = None
        #: Round-trip time of the last answered ping, in seconds.
        self.last_rtt: float | None = None

    @property
    def dead(self) -> bool:
        """True once a pong was overdue."""
        return self._dead

    def next_deadline(self) -> float | None:
        """The time at which :meth:`handle_timer` must next be called, or None."""
        if self._dead:
            return None
        # (No list and min(): the client asks this on every re-arm of its timer.)
        ping, pong = self._next_ping, self._pong_deadline
        if pong is None:
            return ping
        return pong if ping is None or pong < ping else ping

    def handle_timer(
        self, now: float, reading: Reading | None = None, transfer: Transfer | None = None
    ) -> TimerResult | None:
        """Act on the deadlines that have passed at ``now``.

        Args:
            now: the current time.
            reading: how the application's reading stands (see :class:`Reading`).
                An overdue pong moves its deadline to ``now + timeout`` instead of
                failing the link when, since its window opened (or was last
                extended), the application took messages and a full buffer held
                reading back. A dead link is still found: once the application
                has taken what arrived, the buffer is no longer full and the next
                overdue pong fails it. None: no such grace.
            transfer: what the connection's bytes are doing (see :class:`Transfer`).
                An overdue pong also moves its deadline, by ``min(timeout,
                interval)``, when, since its window opened (or was last extended),
                the peer acknowledged :data:`BULK` bytes or more of ours (the ping
                may be behind them), or as many arrived from the peer (the pong may
                be behind them). A dead link stops
                moving bytes, in both directions (TCP needs the ACKs): it is failed
                within ``interval + timeout`` of the last byte that moved, which is
                its death plus what was already in flight then. None: no such grace.

        Returns:
            ``DEAD`` if a pong is overdue (checked first), ``SEND_PING`` with a
            payload if a ping is due, or None if nothing is due yet.
        """
        if self._dead:
            return None
        if self._pong_deadline is not None and now >= self._pong_deadline:
            timeout = self.config.timeout
            assert timeout is not None
            if _reads_behind(reading, self._mark):
                self._pong_deadline = now + timeout
            elif _moves(transfer, self._moved):
                # Bytes acknowledged just before the link died earn one more extension:
                # no longer than the interval, a dead link is still failed within
                # interval + timeout of its death (2 x min(interval, timeout)).
                interval = self.config.interval
                self._pong_deadline = now + (
                    timeout if interval is None else min(timeout, interval)
                )
            else:
                self._dead = True
                return TimerResult(TimerAction.DEAD)
            if reading is not None:
                self._mark = reading
            self._moved = transfer
        if self._next_ping is not None and now >= self._next_ping:
            assert self.config.interval is not None
            self._counter += 1
            payload = struct.pack("!Q", self._counter)
            self._outstanding[payload] = now
            self._next_ping = now + self.config.interval
            if self.config.timeout is not None and self._pong_deadline is None:
                self._pong_deadline = now + self.config.timeout
                # The window opens: progress counts from here.
                if reading is not None:
                    self._mark = reading
                self._moved = transfer
            return TimerResult(TimerAction.SEND_PING, payload)
        return None

    def pong_received(self, now: float, payload: bytes = b"") -> float | None:
        """Record a pong; return the round-trip time if it answers one of our pings.

        RFC 6455 §5.5.3: a pong answers the most recent ping, and an endpoint may
        skip answering older ones, so a pong for ping n also settles pings before n.
        An unsolicited pong (unknown payload) is allowed and changes nothing. Once
        the machine declared the link dead, a late pong changes nothing either: the
        connection is already being failed, and reviving it would hide the outage.
        """
        if self._dead:
            return None
        sent = self._outstanding.get(payload)
        if sent is None:
            return None
        for key in [k for k, t in self._outstanding.items() if t <= sent]:
            del self._outstanding[key]
        self._pong_deadline = None
        if self._outstanding and self.config.timeout is not None:
            oldest = min(self._outstanding.values())
            self._pong_deadline = oldest + self.config.timeout
        # Never negative: a ping is stamped with the deadline its timer was set for,
        # which a coarse clock (uvloop's, in milliseconds) may not have reached yet
        # when the pong is read in the same millisecond.
        self.last_rtt = max(0.0, now - sent)
        return self.last_rtt


def _reads_behind(reading: Reading | None, mark: Reading) -> bool:
    """The application took messages and a full buffer held reading back since ``mark``."""
    return (
        reading is not None
        and reading.taken > mark.taken
        and (reading.full or reading.held > mark.held)
    )


#: Bytes that must have moved for a pong to be plausibly behind them: more than the
#: control frames a quiet link carries (pings, pongs, tether.v1 acks: tens of bytes).
#: Only bulk data delays a pong; and a link dead in one direction still carries the
#: peer's pings in the other until its TCP gives up (a retransmission timeout), which
#: would otherwise count.
BULK = 512


def _moves(transfer: Transfer | None, mark: Transfer | None) -> bool:
    """Since ``mark``, bytes moved with the ping or the pong plausibly behind them.

    Either the peer acknowledged :data:`BULK` bytes more of ours (the ping may wait
    behind them, or have just passed them: an upload finished at the deadline leaves
    the pong a round trip away), or :data:`BULK` bytes more of the peer's arrived
    (the pong may wait behind them). Our own last ping may well be
    unacknowledged then: its ACK comes back behind the peer's data. Neither goes on
    over a link dead in either direction: the peer's TCP needs our ACKs, which travel
    with our bytes, to send more than one window, and we need its ACKs to see ours
    acknowledged. What was in flight when the link died still arrives, and counts.
    """
    if transfer is None or mark is None:
        return False
    return transfer.received - mark.received >= BULK or transfer.acked - mark.acked >= BULK
