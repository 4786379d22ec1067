"""tether.v1 session endpoints, sans-I/O: sequencing, acks, replay, handshake.

A session endpoint outlives connections. The adapter drives it with whole
WebSocket messages and connection events, and drains two lists, websockets
style::

    endpoint.connection_made(now)              # client: queues hello
    endpoint.receive_message(message, now)     # every message on the connection
    for message in endpoint.data_to_send(): ...      # str: text, bytes: binary
    for event in endpoint.events_received(): ...     # MessageReceived, CloseConnection, ...
    endpoint.handle_timer(now)                 # at endpoint.next_deadline()
    endpoint.connection_lost(now, code=...)    # the connection closed (code None: 1006)

Rules (``docs/protocol.md``): data frame ``s`` is delivered when ``s == rx + 1``,
dropped as a duplicate when ``s <= rx``, and a gap fails the connection with
4201 so that a resume repairs it (never skip). Acks are cumulative, piggybacked on
every data frame and sent alone after ``ack_messages``/``ack_bytes`` (due at once:
:meth:`Endpoint.next_deadline` is ``now``, so a data frame sent first carries it)
or ``ack_delay``.
After a (re)connection each side replays everything the other has not
acknowledged before any new message.

Write-through (server with a store): :meth:`Endpoint.send` queues the data frame;
the adapter appends the returned sequence numbers to its store *before* draining
:meth:`Endpoint.data_to_send`, one batch per event-loop turn. With
``hold_acks=True`` the endpoint advertises only what :meth:`Endpoint.rx_persisted`
confirmed, so an ack never promises more than the store holds.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ._numbers import is_finite_number
from .closecodes import CloseCode
from .events import Resumed, SessionLost
from .exceptions import ConfigurationError, ConnectionClosedError, ProtocolError
from .protocol import (
    BINARY_DATA_HEADER,
    DATA_TAG,
    MAX_SEQ,
    Ack,
    Data,
    GoAway,
    Hello,
    LostReason,
    Payload,
    TetherCloseCode,
    Welcome,
    binary_data_header,
    decode,
    encode,
    encode_ack,
    encode_data,
    parse_data,
    text_data_header,
    unpack_binary_header,
)
from .replay import ReplayBuffer

__all__ = [
    "ACK_DELAY_S",
    "LONE_ACK_DELAY_S",
    "LONE_MESSAGE_BYTES",
    "ClientEndpoint",
    "CloseConnection",
    "CoreEvent",
    "Endpoint",
    "GoAwayReceived",
    "MessageReceived",
    "PeerAcked",
    "Phase",
    "ResumeConfig",
    "ServerEndpoint",
    "SessionEnded",
    "SessionEstablished",
]


#: Longest resume window in seconds: its milliseconds still fit welcome's window_ms.
_MAX_RESUME_WINDOW_S = MAX_SEQ // 1000

#: The standalone-ack timer of ``ack_delay="auto"`` (docs/protocol.md §4.3).
ACK_DELAY_S = 0.2
#: ... on a client while one message, under LONE_MESSAGE_BYTES, is all it has not
#: acknowledged: at most a quarter of the server's window.
LONE_ACK_DELAY_S = 10.0
LONE_MESSAGE_BYTES = 16 * 1024


@dataclass(frozen=True, kw_only=True)
class ResumeConfig:
    """Resumption settings (defaults from DESIGN.md §7).

    Attributes:
        resume_window: seconds a disconnected session is kept; also the longest a
            message may stay unacknowledged on an open connection.
        max_messages: replay buffer bound in messages; None for no count bound.
        max_bytes: replay buffer bound in payload bytes; None for no byte bound.
        ack_messages: send a standalone ack after this many unacknowledged
            received messages (due at once, through :meth:`Endpoint.handle_timer`,
            unless a data frame carries it first); None disables the count trigger.
        ack_bytes: ... after this many received payload bytes; None disables it.
        ack_delay: ... at the latest this many seconds after the first
            unacknowledged message; None disables the timer. ``"auto"`` (the
            default) is 0.2 s, except on a client while a single message (under
            16 KiB) is unacknowledged: then 10 s, at most a quarter of the
            server's window. A client's acks only let the server drop what it
            keeps for a resume; acking every message of a sparse stream (a
            ticker) after 0.2 s doubled the frames its server handles. From the
            second message on the client acks within 0.2 s, so that a server with
            a small replay buffer is not kept waiting for room. A server always
            acks promptly: its acks decide what :class:`SessionLost` hands back.
        welcome_timeout: client only: seconds an attempt waits for ``welcome``
            after its ``hello`` before it closes with 4203 and is retried
            (``docs/protocol.md`` §3). No heartbeat runs before the welcome, so
            this bounds an attempt whose server cannot answer. Finite: a wait
            without end would hold the client on such a link for good. (The
            server's wait for ``hello`` is its layer's ``handshake_timeout``.)
    """

    resume_window: float = 120.0
    max_messages: int | None = 10_000
    max_bytes: int | None = 8 * 1024 * 1024
    ack_messages: int | None = 32
    ack_bytes: int | None = 64 * 1024
    ack_delay: float | Literal["auto"] | None = "auto"
    welcome_timeout: float = 10.0

    def __post_init__(self) -> None:
        window = self.resume_window
        # Bounded: welcome carries it in whole milliseconds (window_ms, an integer the
        # client refuses above MAX_SEQ), and a session that never expired would be
        # kept, with its replay buffer, for good.
        if (
            isinstance(window, bool)
            or not isinstance(window, (int, float))
            or not (0 < window <= _MAX_RESUME_WINDOW_S)
        ):
            raise ConfigurationError(
                f"resume_window must be a finite number of seconds > 0"
                f" (at most {_MAX_RESUME_WINDOW_S}), not {window!r}"
            )
        for name in ("max_messages", "max_bytes", "ack_messages", "ack_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ConfigurationError(f"{name} must be >= 1 or None")
        delay = self.ack_delay
        if delay is not None and delay != "auto" and not _finite_seconds(delay):
            raise ConfigurationError(
                f'ack_delay must be a finite number of seconds > 0, "auto" or None, not {delay!r}'
            )
        if not _finite_seconds(self.welcome_timeout):
            raise ConfigurationError(
                "welcome_timeout must be a finite number of seconds > 0,"
                f" not {self.welcome_timeout!r}"
            )
        if self.ack_messages is None and self.ack_bytes is None and self.ack_delay is None:
            raise ConfigurationError(
                "at least one ack trigger must be enabled, or a one-way stream never acks"
            )

    @property
    def window_ms(self) -> int:
        """``resume_window`` in whole milliseconds, as sent in ``welcome``."""
        return int(self.resume_window * 1000)

    def ack_delay_s(self) -> float | None:
        """The standalone-ack timer in seconds, ``"auto"`` resolved (0.2 s)."""
        return ACK_DELAY_S if self.ack_delay == "auto" else self.ack_delay

    def lone_ack_delay_s(self, *, client: bool, window: float | None = None) -> float | None:
        """The timer while one message is unacknowledged, or None if it is ``ack_delay``'s.

        Args:
            client: for a client endpoint; a server's acks are never lazy.
            window: the server's resume window in seconds, as a client learns it
                from ``welcome`` (default: ``resume_window``); the timer is at most
                a quarter of it, so that an ack always comes well before the
                server's stall check (a message unacknowledged for the window, 4202).
        """
        if not client or self.ack_delay != "auto":
            return None
        return min(LONE_ACK_DELAY_S, (self.resume_window if window is None else window) / 4)


def _finite_seconds(value: object) -> bool:
    """Whether ``value`` is a finite number of seconds > 0 (a bool is not a number here)."""
    return is_finite_number(value) and value > 0


class Phase(str, enum.Enum):
    """Where an endpoint is in its life cycle (state diagram in ``docs/protocol.md``)."""

    #: No connection; messages sent now are buffered and replayed later.
    DISCONNECTED = "disconnected"
    #: Client: hello sent, waiting for welcome.
    HANDSHAKE = "handshake"
    #: Session established on the current connection.
    OPEN = "open"
    #: The session ended (expired, abandoned, or closed normally); it cannot resume.
    CLOSED = "closed"


@dataclass(frozen=True)
class MessageReceived:
    """An application message, delivered exactly once and in order."""

    payload: Payload


@dataclass(frozen=True)
class SessionEstablished:
    """The handshake completed on the current connection.

    Attributes:
        sid: the session id in force.
        resumed: True when an existing session continued.
        replayed_out: messages this side re-sent because the peer had not acked them.
    """

    sid: str
    resumed: bool
    replayed_out: int = 0


@dataclass(frozen=True)
class CloseConnection:
    """The adapter must close the current connection with ``code``.

    Attributes:
        code: the close code to send.
        reason: the close reason (short English text).
        error: the protocol error that caused it, if any.
    """

    code: int
    reason: str
    error: ProtocolError | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PeerAcked:
    """The peer acknowledged every message up to ``seq``; a store may trim them."""

    seq: int


@dataclass(frozen=True)
class GoAwayReceived:
    """The server announced a restart (it will close with 1012)."""

    retry_ms: int
    resume: bool


@dataclass(frozen=True)
class SessionEnded:
    """Server: the session is over; the adapter deletes it from the store.

    Attributes:
        reason: ``"expired"`` (disconnected for ``resume_window``) or ``"closed"``
            (the client closed with 1000).
    """

    reason: str


CoreEvent = (
    MessageReceived
    | SessionEstablished
    | CloseConnection
    | PeerAcked
    | GoAwayReceived
    | SessionEnded
    | Resumed
    | SessionLost
)


class Endpoint:
    """What both roles share: sequencing, acks, the replay buffer, timers.

    Args:
        config: the resumption settings.
        hold_acks: advertise only what :meth:`rx_persisted` confirmed.
        report_acks: report each ack that trims the replay buffer as :class:`PeerAcked`
            (False: no event per ack; an adapter that must act on acks compares
            :attr:`peer_acked` before and after :meth:`receive`).

    Attributes:
        peer_acked: the highest outgoing sequence number the peer acknowledged
            (read only; an attribute, not a property: adapters read it per message).
        rx: the highest peer sequence number delivered in order (read only; an
            attribute for the same reason).
    """

    #: Which role this endpoint plays (the defaults of some settings differ).
    is_client: ClassVar[bool] = False

    # One per session on a server, most of them idle: no per-instance __dict__.
    __slots__ = (
        "_ack_delay",
        "_ack_due",
        "_ackable",
        "_acked_sent",
        "_disconnected_at",
        "_events",
        "_highest_sent",
        "_in_bytes",
        "_in_count",
        "_lone_delay",
        "_opened_at",
        "_out",
        "_window",
        "buffer",
        "config",
        "duplicates",
        "hold_acks",
        "peer_acked",
        "phase",
        "report_acks",
        "rx",
    )

    def __init__(
        self, config: ResumeConfig, *, hold_acks: bool = False, report_acks: bool = True
    ) -> None:
        self.config = config
        self.hold_acks = hold_acks
        self.report_acks = report_acks
        self.phase = Phase.DISCONNECTED
        #: Duplicates dropped so far (``seq <= rx``), for tests and metrics.
        self.duplicates = 0
        self._out: list[Payload] = []
        self._events: list[CoreEvent] = []
        self._reset_sequences(last_seq=0, rx=0)
        self._disconnected_at: float | None = None
        self._opened_at = 0.0
        #: Seconds a disconnected session is kept (and the longest a message may stay
        #: unacknowledged): the config's; on a client, the server's welcome.window_ms.
        self._window = config.resume_window
        #: The standalone-ack timer, ``config.ack_delay`` with ``"auto"`` resolved, and
        #: the one while a lone message is unacknowledged (None: the same).
        self._ack_delay = config.ack_delay_s()
        self._lone_delay = config.lone_ack_delay_s(client=self.is_client)

    @property
    def window(self) -> float:
        """Seconds a disconnected session is kept, and the longest a message may stay
        unacknowledged: the config's; on a client, the server's from its welcome."""
        return self._window

    def _reset_sequences(self, *, last_seq: int, rx: int) -> None:
        self.buffer = ReplayBuffer(
            max_messages=self.config.max_messages,
            max_bytes=self.config.max_bytes,
            last_seq=last_seq,
        )
        self.rx = rx
        self._ackable = rx
        self._acked_sent = rx
        self.peer_acked = last_seq
        self._highest_sent = last_seq
        self._in_count = 0
        self._in_bytes = 0
        self._ack_due: float | None = None

    # ----------------------------------------------------------------- outputs

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` or :meth:`events_received` has something.

        A cheap check for the adapters' per-message path: both calls make a new
        list each time, which is most of their cost when there is nothing.
        """
        return bool(self._out or self._events)

    def data_to_send(self) -> list[Payload]:
        """Messages to send on the current connection, in order; clears the list."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[CoreEvent]:
        """Events for the adapter, in order; clears the list."""
        events, self._events = self._events, []
        return events

    @property
    def durable_rx(self) -> int:
        """Highest peer sequence number this side may acknowledge (== rx without hold_acks)."""
        return self._ackable

    @property
    def tx(self) -> int:
        """Highest sequence number assigned to an outgoing message."""
        return self.buffer.last_seq

    # ------------------------------------------------------------------- input

    def send(self, payload: Payload, now: float, *, persisted_rx: int | None = None) -> int:
        """Buffer an application message and send it if the session is open.

        Args:
            payload: the application message.
            now: current time, in seconds.
            persisted_rx: with ``hold_acks``: an rx the adapter commits in the same
                store write as this message, before its frame leaves. The frame
                carries it as its ack (like :meth:`rx_persisted` first, but without a
                standalone ack of its own): a reply acknowledges the request it answers.

        Returns:
            Its sequence number (for a write-through store).

        Raises:
            QueueFull: the replay buffer has no room (check :meth:`has_room`; the
                adapter waits up to ``send_timeout`` for acks, then calls :meth:`overflow`).
            ConnectionClosedError: the session ended.
        """
        if self.phase is Phase.CLOSED:
            raise ConnectionClosedError(None, "the tether.v1 session has ended")
        seq = self.buffer.push(payload, now).seq
        if persisted_rx is not None and persisted_rx > self._ackable:
            self._ackable = min(persisted_rx, self.rx)
        if self.phase is Phase.OPEN:
            # _transmit(), inlined: this runs for every message sent.
            self._out.append(encode_data(seq, self._ackable, payload))
            if seq > self._highest_sent:
                self._highest_sent = seq
            self._acked_sent = self._ackable
            self._in_count = 0
            self._in_bytes = 0
            self._ack_due = None
        return seq

    def send_header(
        self, payload: Payload, now: float, *, persisted_rx: int | None = None
    ) -> tuple[int, bytes] | None:
        """:meth:`send`, the message's data frame handed back in two parts.

        When the session is OPEN and nothing waits in :meth:`data_to_send`, the
        message is numbered and kept exactly as by :meth:`send`, but its frame is
        not queued: the frame is the returned header followed by the payload (its
        UTF-8 for text: the header is ASCII), for the caller to send at once as one
        message of the payload's type (an engine that frames messages itself joins
        them there: a large payload is copied once instead of twice, and text is
        encoded once). Otherwise nothing is done and None is returned: call
        :meth:`send`.

        Returns:
            ``(seq, header)``, or None.

        Raises:
            QueueFull: as :meth:`send`.
        """
        if self.phase is not Phase.OPEN or self._out:
            return None
        seq = self.buffer.push(payload, now).seq
        if persisted_rx is not None and persisted_rx > self._ackable:
            self._ackable = min(persisted_rx, self.rx)
        # _transmit() without the frame.
        if seq > self._highest_sent:
            self._highest_sent = seq
        ack = self._acked_sent = self._ackable
        self._in_count = 0
        self._in_bytes = 0
        self._ack_due = None
        if isinstance(payload, str):
            return seq, text_data_header(seq, ack)
        return seq, binary_data_header(seq, ack)

    def has_room(self, payload: Payload) -> bool:
        """Whether :meth:`send` would accept ``payload`` now."""
        return self.buffer.has_room_for(payload)

    def receive_message(self, message: Payload, now: float) -> None:
        """Process one WebSocket message received on the current connection.

        A delivered application message becomes a :class:`MessageReceived` event, in
        order with the events the same message caused.

        Never raises on peer input: a violation becomes a :class:`CloseConnection` event.
        """
        mark = len(self._events)
        payload = self.receive(message, now)
        if payload is not None:
            self._events.insert(mark, MessageReceived(payload))

    def receive(self, message: Payload, now: float) -> Payload | None:
        """Like :meth:`receive_message`, but return the delivered payload instead of an event.

        The adapters' per-message path: a data frame costs no event object. Every
        other outcome (acks, handshake, :class:`CloseConnection`) still goes to
        :meth:`events_received`.

        Returns:
            The application message this frame delivers, or None (a duplicate, a
            control frame, a violation).
        """
        if self.phase is not Phase.OPEN:
            if self.phase is Phase.HANDSHAKE:
                self._receive_other(message, now)
            # DISCONNECTED, CLOSED: the connection is being failed or is gone:
            # nothing more is trusted.
            return None
        if type(message) is bytes:
            # parse_data() and _on_data() of the usual frame, inlined: this runs for every
            # message received. The usual frame is binary data, the next in order, with an
            # ack that is not news or that trims without an event. Any other takes the full
            # path, which judges it afresh (the checks here only select, never refuse).
            try:
                tag, seq, ack = unpack_binary_header(message)
            except struct.error:
                tag = seq = ack = 0
            if (
                tag == DATA_TAG
                and seq == self.rx + 1
                and seq <= MAX_SEQ
                and (ack <= self.peer_acked or (ack <= self._highest_sent and not self.report_acks))
            ):
                self.rx = seq
                if not self.hold_acks:
                    self._ackable = seq
                delivered = message[BINARY_DATA_HEADER:]
                self._in_count += 1
                self._in_bytes += len(delivered)
                if ack > self.peer_acked:
                    self.peer_acked = ack
                    self.buffer.trim(ack)
                if self._ackable > self._acked_sent:
                    self._maybe_ack(now)
                else:
                    self._ack_due = None  # what _maybe_ack() does with nothing to ack
                return delivered
        try:
            data = parse_data(message)
            if data is None:
                return self._receive_other(message, now)
            seq, ack, payload = data
            return self._on_data(seq, ack, payload, now)
        except ProtocolError as exc:
            self._fail(exc.close_code, str(exc), now, exc)
            return None

    def _receive_other(self, message: Payload, now: float) -> Payload | None:
        try:
            frame = decode(message)
            if isinstance(frame, Data):
                self._require_open("data")
                return self._on_data(frame.seq, frame.ack, frame.payload, now)
            if isinstance(frame, Ack):
                self._require_open("ack")
                self._on_ack(frame.rx)
            else:
                self._on_control(frame, now)
        except ProtocolError as exc:
            self._fail(exc.close_code, str(exc), now, exc)
        return None

    def wants_ack(self) -> bool:
        """Whether the messages received since the last ack reached the count or byte trigger.

        With ``hold_acks`` the ack then waits only for :meth:`rx_persisted`: an
        adapter commits rx at once when this is True, and may batch it otherwise.
        """
        cfg = self.config
        return (cfg.ack_messages is not None and self._in_count >= cfg.ack_messages) or (
            cfg.ack_bytes is not None and self._in_bytes >= cfg.ack_bytes
        )

    def rx_persisted(self, rx: int, now: float) -> None:
        """With ``hold_acks``: the store holds everything up to ``rx``; it may be acked."""
        if rx > self._ackable:
            self._ackable = min(rx, self.rx)
            if self.phase is Phase.OPEN:
                self._maybe_ack(now)

    def overflow(self, now: float) -> None:
        """The buffer stayed full for ``send_timeout`` while connected: close and resume."""
        if self.phase in (Phase.OPEN, Phase.HANDSHAKE):
            self._fail(TetherCloseCode.REPLAY_OVERFLOW, "replay buffer full", now)

    def connection_lost(self, now: float, code: int | None = None) -> None:
        """The current connection closed; ``code`` is the close code (None for 1006)."""
        if self.phase in (Phase.OPEN, Phase.HANDSHAKE):
            # The window runs from the last time the session was open: handshakes
            # that fail (a server that accepts but never welcomes) do not extend it.
            if self.phase is Phase.OPEN or self._disconnected_at is None:
                self._disconnected_at = now
            self.phase = Phase.DISCONNECTED
        self._out.clear()
        self._ack_due = None

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next run, or None."""
        if self.phase is Phase.OPEN:
            # Called after every message by the adapters: no allocation here, and
            # stall_deadline() inlined.
            ack_due = self._ack_due
            oldest = self.buffer.oldest_queued_at
            opened = self._opened_at
            stall = (
                None if oldest is None else (oldest if oldest > opened else opened) + self._window
            )
            if ack_due is None:
                return stall
            return ack_due if stall is None or ack_due < stall else stall
        if self.phase is Phase.DISCONNECTED and self._disconnected_at is not None:
            return self._disconnected_at + self._window
        return None

    def handle_timer(self, now: float) -> None:
        """Act on the deadlines passed at ``now``: ack, stall, or expiry."""
        if self.phase is Phase.OPEN:
            if self._ack_due is not None and now >= self._ack_due:
                self._maybe_ack(now, force=True)
            stall = self.stall_deadline()
            if stall is not None and now >= stall:
                self._fail(
                    TetherCloseCode.REPLAY_OVERFLOW,
                    f"messages unacknowledged for {self._window} s",
                    now,
                )
        elif (
            self.phase is Phase.DISCONNECTED
            and self._disconnected_at is not None
            and now >= self._disconnected_at + self._window
        ):
            self._expire()

    def stall_deadline(self) -> float | None:
        """When the oldest unacknowledged message will count as stalled, or None."""
        oldest = self.buffer.oldest_queued_at
        if oldest is None:
            return None
        opened = self._opened_at
        return (oldest if oldest > opened else opened) + self._window

    def _expire(self) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- internals

    def _transmit(self, seq: int, payload: Payload) -> None:
        # RFC 6455 §5.6: the data frame keeps the application's message type.
        self._out.append(encode_data(seq, self._ackable, payload))
        if seq > self._highest_sent:
            self._highest_sent = seq
        # _acked_out(), inlined: this runs for every message sent.
        self._acked_sent = self._ackable
        self._in_count = 0
        self._in_bytes = 0
        self._ack_due = None

    def _acked_out(self) -> None:
        self._acked_sent = self._ackable
        self._in_count = 0
        self._in_bytes = 0
        self._ack_due = None

    def _replay(self) -> int:
        """Send the whole buffer in order; return how many were re-sends."""
        replayed = 0
        for entry in self.buffer:
            if entry.seq <= self._highest_sent:
                replayed += 1
            self._transmit(entry.seq, entry.payload)
        return replayed

    def _on_data(self, seq: int, ack: int, payload: Payload, now: float) -> Payload | None:
        """Deliver, drop or refuse one data frame (phase OPEN); return the payload delivered.

        A gap raises. A bad ack (of a message never sent) fails the connection
        after the message was delivered: the frame itself was in order.
        """
        delivered: Payload | None = None
        rx = self.rx
        if seq == rx + 1:
            self.rx = seq
            if not self.hold_acks:
                self._ackable = seq
            self._in_count += 1
            if type(payload) is str and not payload.isascii():
                self._in_bytes += len(payload.encode("utf-8"))
            else:
                self._in_bytes += len(payload)
            delivered = payload
        elif seq <= rx:
            self.duplicates += 1
        else:
            raise ProtocolError(
                f"sequence gap: expected {rx + 1}, got {seq}",
                close_code=TetherCloseCode.SEQUENCE_GAP,
            )
        try:
            if ack > self.peer_acked:
                if ack <= self._highest_sent and not self.report_acks:
                    # _on_ack() of a valid ack, inlined: this runs for every message.
                    self.peer_acked = ack
                    self.buffer.trim(ack)
                else:
                    self._on_ack(ack)
            if self._ackable > self._acked_sent:
                self._maybe_ack(now)
            else:
                self._ack_due = None  # what _maybe_ack() does with nothing to ack
        except ProtocolError as exc:
            self._fail(exc.close_code, str(exc), now, exc)
        return delivered

    def _on_ack(self, ack: int) -> None:
        if ack > self._highest_sent:
            raise ProtocolError(f"ack {ack} covers messages never sent (last {self._highest_sent})")
        if ack > self.peer_acked:
            self.peer_acked = ack
            self.buffer.trim(ack)
            if self.report_acks:
                self._events.append(PeerAcked(ack))

    def _maybe_ack(self, now: float, *, force: bool = False) -> None:
        if self._ackable <= self._acked_sent:
            self._ack_due = None
            return
        cfg = self.config
        if force:
            self._out.append(encode_ack(self._ackable))
            self._acked_out()
        elif (cfg.ack_messages is not None and self._in_count >= cfg.ack_messages) or (
            cfg.ack_bytes is not None and self._in_bytes >= cfg.ack_bytes
        ):
            # Due now, sent by handle_timer() on the adapter's next pass: a data frame
            # sent before then (a reply in the same turn) carries it instead (§4.3).
            if self._ack_due is None or self._ack_due > now:
                self._ack_due = now
        elif (
            self._lone_delay is not None
            and self._in_count == 1
            and self._in_bytes < LONE_MESSAGE_BYTES
        ):
            if self._ack_due is None:
                self._ack_due = now + self._lone_delay
        elif self._ack_delay is not None:
            # (From a second message on a lazy deadline comes forward; otherwise the first
            # message's deadline stands.)
            due = now + self._ack_delay
            if self._ack_due is None or self._ack_due > due:
                self._ack_due = due

    def _require_open(self, what: str) -> None:
        if self.phase is not Phase.OPEN:
            raise ProtocolError(f"{what} frame before the handshake completed")

    def _on_control(self, frame: Hello | Welcome | GoAway, now: float) -> None:
        raise ProtocolError(f"unexpected {type(frame).__name__.lower()} frame")

    def _fail(self, code: int, reason: str, now: float, error: ProtocolError | None = None) -> None:
        # RFC 6455 §5.5: a control frame payload is at most 125 bytes, 2 of them the code.
        short = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        self._events.append(CloseConnection(code, short, error))
        self.connection_lost(now)

    def _open(self, now: float) -> None:
        self.phase = Phase.OPEN
        self._opened_at = now
        self._disconnected_at = None


@dataclass
class _Credentials:
    sid: str
    token: str = field(repr=False)  # never in a log line (docs/security.md)
    epoch: str
    #: The number of the last resume asked for (Hello.attempt): the server refuses a
    #: hello numbered at or below one it served, so it only ever grows for a session.
    attempts: int = 0


class ClientEndpoint(Endpoint):
    """The client side of a tether.v1 session.

    Args:
        config: the resumption settings.
        report_acks: see :class:`Endpoint`.
    """

    __slots__ = ("_doomed", "_session")

    is_client = True

    def __init__(self, config: ResumeConfig | None = None, *, report_acks: bool = True) -> None:
        super().__init__(config or ResumeConfig(), report_acks=report_acks)
        self._session: _Credentials | None = None
        self._doomed = False

    @property
    def sid(self) -> str | None:
        """The current session id, or None before the first welcome."""
        return self._session.sid if self._session else None

    def connection_made(self, now: float) -> None:
        """A tether.v1 connection opened: queue ``hello``.

        Raises:
            ConnectionClosedError: the session ended (closed with 1000).
            RuntimeError: the previous connection was not reported lost.
        """
        if self.phase is Phase.CLOSED:
            raise ConnectionClosedError(None, "the tether.v1 session has ended")
        if self.phase is not Phase.DISCONNECTED:
            raise RuntimeError(f"connection_made() in phase {self.phase.value}")
        self.handle_timer(now)  # a session past its window is lost before asking
        self._out.clear()
        session = self._session
        if session is None:
            hello = Hello(rx=0)
        else:
            session.attempts += 1
            hello = Hello(session.sid, session.token, session.epoch, self.rx, session.attempts)
        self.phase = Phase.HANDSHAKE
        self._out.append(encode(hello))

    def connection_lost(self, now: float, code: int | None = None) -> None:
        """The connection closed; a takeover, goaway without resume or 1000 ends the session."""
        super().connection_lost(now, code)
        if code == TetherCloseCode.TAKEN_OVER:
            self._lose(LostReason.TAKEN_OVER)
        elif code == TetherCloseCode.SUPERSEDED:
            # Our own hellos only ever go up, so a number above ours was served from
            # somebody else holding our token: resuming again would only be refused
            # again (for ever); the session is as good as taken over.
            self._lose(LostReason.SUPERSEDED)
        elif self._doomed:
            self._lose(LostReason.NOT_RESUMABLE)
        elif code == CloseCode.NORMAL_CLOSURE:
            self.phase = Phase.CLOSED

    def _expire(self) -> None:
        self._lose(LostReason.EXPIRED)

    def _lose(self, reason: LostReason | str) -> None:
        unacked = self.buffer.clear()
        had_session = self._session is not None
        self._session = None
        self._doomed = False
        self._disconnected_at = None
        self._reset_sequences(last_seq=0, rx=0)
        if had_session or unacked:
            text = reason.value if isinstance(reason, LostReason) else reason
            self._events.append(SessionLost(text, unacked))

    def _on_control(self, frame: Hello | Welcome | GoAway, now: float) -> None:
        if isinstance(frame, Welcome) and self.phase is Phase.HANDSHAKE:
            self._on_welcome(frame, now)
        elif isinstance(frame, GoAway) and self.phase is Phase.OPEN:
            # With resume false the session dies with this connection: report it
            # when the connection closes, instead of a doomed resume attempt.
            self._doomed = not frame.resume
            self._events.append(GoAwayReceived(frame.retry_ms, frame.resume))
        else:
            super()._on_control(frame, now)

    def _on_welcome(self, welcome: Welcome, now: float) -> None:
        session = self._session
        if welcome.resumed:
            if session is None or welcome.sid != session.sid:
                raise ProtocolError("welcome resumed a session this client did not ask for")
            if welcome.tx < self.rx:
                raise ProtocolError(f"welcome tx {welcome.tx} is behind our rx {self.rx}")
            self._on_ack(welcome.rx)
        else:
            if session is not None:
                self._lose(welcome.reason or LostReason.NOT_RESUMABLE)
            if welcome.rx != 0:
                raise ProtocolError("a new session must start with rx 0")
        # A resumed session keeps counting its attempts; a new one starts again.
        attempts = session.attempts if welcome.resumed and session is not None else 0
        self._session = _Credentials(welcome.sid, welcome.token, welcome.epoch, attempts)
        # The server keeps the session for its window, not ours: expiring it here
        # sooner would give up (and lose) what the server still holds for us, and
        # resuming later than the server keeps it is refused anyway.
        if welcome.window_ms > 0:
            self._window = welcome.window_ms / 1000.0
            self._lone_delay = self.config.lone_ack_delay_s(client=True, window=self._window)
        self._open(now)
        replayed_out = self._replay()
        self._events.append(SessionEstablished(welcome.sid, welcome.resumed, replayed_out))
        if welcome.resumed:
            self._events.append(Resumed(welcome.tx - self.rx, replayed_out))


class ServerEndpoint(Endpoint):
    """The server side of one tether.v1 session (it outlives connections).

    The adapter parses the ``hello`` (:func:`tether.protocol.decode`), judges it
    (:func:`tether.tokens.judge_resume`) against its store, and then either
    attaches the existing endpoint (resume) or creates a new one; see
    :meth:`attach`. A takeover is: close the old connection with 4901,
    :meth:`connection_lost`, drop :meth:`data_to_send`, then :meth:`attach`.

    Args:
        sid: the session id.
        epoch: the store epoch sent in ``welcome``.
        config: the resumption settings.
        hold_acks: see :class:`Endpoint` (True with a durable store).
        report_acks: see :class:`Endpoint`.
        tx: the last sequence number already assigned (from a store), else 0.
        rx: the last client sequence number already received (from a store), else 0.
    """

    __slots__ = ("epoch", "sid")

    def __init__(
        self,
        sid: str,
        epoch: str,
        config: ResumeConfig | None = None,
        *,
        hold_acks: bool = False,
        report_acks: bool = True,
        tx: int = 0,
        rx: int = 0,
    ) -> None:
        super().__init__(config or ResumeConfig(), hold_acks=hold_acks, report_acks=report_acks)
        self.sid = sid
        self.epoch = epoch
        self._reset_sequences(last_seq=tx, rx=rx)

    def restore(self, acked: int, messages: list[tuple[int, Payload]], now: float) -> None:
        """Rebuild from a store: the client acked up to ``acked``; ``messages`` follow it.

        Raises:
            ValueError: the messages do not continue ``acked`` up to ``tx`` contiguously.
        """
        tx = self.buffer.last_seq
        self._reset_sequences(last_seq=acked, rx=self.rx)
        self.buffer.restore(messages, now)
        if self.buffer.last_seq != tx:
            raise ValueError(f"stored messages end at {self.buffer.last_seq}, expected {tx}")
        # They may all have been sent by the previous process: count them as sent.
        self._highest_sent = tx

    def attach(
        self,
        now: float,
        *,
        token: str,
        resumed: bool,
        peer_rx: int = 0,
        reason: LostReason | None = None,
    ) -> None:
        """Bind a new connection: queue ``welcome`` and replay what the client lacks.

        Args:
            now: current time, in seconds.
            token: the freshly rotated resume token (its hash is already stored).
            resumed: True to continue this session, False for a new one.
            peer_rx: the client's ``hello.rx`` (when resuming).
            reason: why a requested resume was refused (new session only).

        Raises:
            RuntimeError: a connection is still attached (call :meth:`connection_lost`).

        A ``peer_rx`` outside what this session sent and still holds cannot come
        from an honest client (:func:`~tether.tokens.judge_resume` rejects most of
        it first): it becomes a :class:`CloseConnection` with 1002, no welcome.
        """
        if self.phase is not Phase.DISCONNECTED:
            raise RuntimeError(f"cannot attach a connection in phase {self.phase.value}")
        if not self.buffer.first_seq - 1 <= peer_rx <= self._highest_sent:
            low, high = self.buffer.first_seq - 1, self._highest_sent
            reason_text = f"hello rx {peer_rx} outside {low}-{high}"
            self._events.append(CloseConnection(CloseCode.PROTOCOL_ERROR, reason_text))
            return
        self._on_ack(peer_rx)
        self._out.clear()
        self._open(now)
        self._out.append(
            encode(
                Welcome(
                    resumed=resumed,
                    reason=None if reason is None else reason.value,
                    sid=self.sid,
                    token=token,
                    epoch=self.epoch,
                    rx=self._ackable,
                    tx=self.buffer.last_seq,
                    window_ms=self.config.window_ms,
                )
            )
        )
        self._acked_out()
        replayed = self._replay()
        self._events.append(SessionEstablished(self.sid, resumed, replayed))

    def goaway(self, *, retry_ms: int, resume: bool) -> None:
        """Queue ``goaway`` before closing with 1012 (planned restart)."""
        if self.phase is Phase.OPEN:
            self._out.append(encode(GoAway(retry_ms=retry_ms, resume=resume)))

    def abandon(self, reason: LostReason) -> tuple[Payload, ...]:
        """End the session (e.g. ``overflow`` while disconnected); return the unacked payloads."""
        self.phase = Phase.CLOSED
        self._out.clear()
        return self.buffer.clear()

    def connection_lost(self, now: float, code: int | None = None) -> None:
        """The connection closed; a 1000 from the client ends the session."""
        was_live = self.phase is Phase.OPEN
        super().connection_lost(now, code)
        if was_live and code == CloseCode.NORMAL_CLOSURE:
            self.phase = Phase.CLOSED
            self._events.append(SessionEnded("closed"))

    def _expire(self) -> None:
        self.phase = Phase.CLOSED
        self._events.append(SessionEnded("expired"))
