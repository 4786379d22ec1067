"""Connection states and the events tether reports (DESIGN.md §3).

Events are plain frozen dataclasses: yielded by ``conn.events()``, logged, and
counted in metrics. They carry data only, no behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Connected",
    "Disconnected",
    "Event",
    "GaveUp",
    "Reconnecting",
    "Resumed",
    "SessionLost",
    "State",
]


class State(str, enum.Enum):
    """Life cycle of a client connection."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True)
class Connected:
    """A connection opened.

    Attributes:
        attempt: 1 for the first connection, then counts every attempt made.
        resumed: True when a tether.v1 session was resumed on this connection.
    """

    attempt: int
    resumed: bool = False


@dataclass(frozen=True)
class Disconnected:
    """A connection closed.

    Attributes:
        code: the close code; 1006 when no Close frame was exchanged.
        reason: the close reason, if the peer sent one.
        clean: False exactly when no Close frame was exchanged (code 1006).
        explanation: one line from tether's knowledge base about ``code``.
    """

    code: int
    reason: str
    clean: bool
    explanation: str


@dataclass(frozen=True)
class Reconnecting:
    """tether will try again after ``delay`` seconds.

    Attributes:
        attempt: number of the attempt about to be made.
        delay: seconds until that attempt.
        cause_code: the close code (or 1006 for a failed connect) that led here.
    """

    attempt: int
    delay: float
    cause_code: int


@dataclass(frozen=True)
class Resumed:
    """A tether.v1 session was resumed.

    Attributes:
        replayed_in: messages the peer replayed to us.
        replayed_out: messages we replayed to the peer.
    """

    replayed_in: int
    replayed_out: int


@dataclass(frozen=True)
class SessionLost:
    """A session could not be resumed; a fresh one starts.

    Attributes:
        reason: why (``expired``, ``unknown``, ``overflow``, ``epoch_mismatch``,
            ``token_invalid``, ``store_unavailable``, ``not_resumable``, ...).
        unacked: our messages the peer never acknowledged, oldest first; the
            application decides whether to send them again.
    """

    reason: str
    unacked: tuple[str | bytes, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GaveUp:
    """tether stopped reconnecting; the connection is closed for good.

    Attributes:
        reason: why (a final close code, or the attempt/time bound).
    """

    reason: str


Event = Connected | Disconnected | Reconnecting | Resumed | SessionLost | GaveUp
