"""The client side of tether.v1 as a :class:`~tether.asyncio.layer.ClientLayer`.

Glue only (``docs/protocol.md`` §12): every connection that negotiated
``tether.v1`` runs the hello/welcome handshake in :meth:`TetherV1ClientLayer.opened`
and then moves messages through one :class:`~tether.resume.ClientEndpoint`,
which outlives the connections. A connection that did not negotiate it (a plain
server: Node ``ws``, uvicorn, any third party) passes messages through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from ..closecodes import CloseCode
from ..events import Event, Resumed, SessionLost
from ..exceptions import ConnectionClosedError, ProtocolError
from ..protocol import SUBPROTOCOL, Hello, TetherCloseCode, decode
from ..resume import (
    ClientEndpoint,
    CloseConnection,
    GoAwayReceived,
    ResumeConfig,
    SessionEstablished,
)
from .engine import ClosedInfo, Message, Transport, TransportClosed
from .layer import ClientLayer, LayerOpened
from .waiters import bounded

__all__ = ["TetherV1ClientLayer"]

logger = logging.getLogger("tether.client")


#: Unacknowledged messages (or bytes) after which the client reads the acks even if
#: the application is not reading: twice the peer's default ack trigger (32 messages,
#: 64 KiB), so that an application that sends and reads in turn never needs it.
READ_AHEAD_MESSAGES = 64
READ_AHEAD_BYTES = 128 * 1024

#: Seconds the 4203 close after a missing ``welcome`` waits for the server's Close
#: frame before the TCP connection is aborted. The Close frame goes out so that a
#: live server learns why; but a server whose welcome did not arrive has shown that
#: its data does not reach us (a proxy holding the path, a stalled peer), so its
#: answer is not waited for the full ``close_timeout`` (the engine's own
#: ``close_timeout`` still applies when it is shorter).
NO_WELCOME_CLOSE_TIMEOUT = 1.0


class _NotTetherPeer(Exception):
    """The first answer to hello was not tether.v1: the server only echoed the name."""

    def __init__(self, received: tuple[Message, ...]) -> None:
        super().__init__("not a tether.v1 server")
        self.received = received


class TetherV1ClientLayer(ClientLayer):
    """Resumable sessions over successive connections; plain WebSocket when not negotiated.

    Args:
        config: resumption settings (window, replay buffer bounds, ack triggers,
            ``welcome_timeout``).
        handshake_timeout: seconds to wait for ``welcome`` before closing with 4203
            (and for each replayed frame to leave); None: ``config.welcome_timeout``.
        rng: randomness for the goaway delay (uniform in ``[retry_ms/5, retry_ms]``).
    """

    subprotocols: Sequence[str] = (SUBPROTOCOL,)

    def __init__(
        self,
        config: ResumeConfig | None = None,
        *,
        handshake_timeout: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        config = config or ResumeConfig()
        # No PeerAcked event per ack: the client has no store to trim, and the
        # acks that make room wake a waiting send() on their own (after incoming()).
        self.endpoint = ClientEndpoint(config, report_acks=False)
        self.handshake_timeout = (
            config.welcome_timeout if handshake_timeout is None else handshake_timeout
        )
        self._rng = rng if rng is not None else random.Random()
        self._v1 = False
        self._events: list[Event] = []
        self._close: tuple[int, str] | None = None
        self._retry_ms: int | None = None
        # The endpoint may hold frames of its own (acks) for control_to_send(): set by
        # every call that can queue one, so that pending() asks no more per message.
        self._control = False

    @property
    def keeps_sent(self) -> bool:
        """True on a tether.v1 connection: the replay buffer owns sent messages."""
        return self._v1

    @property
    def needs_reader(self) -> bool:
        """False: ``recv()`` reads the connection; the client reads ahead on :meth:`wants_input`.

        Acks only need to be taken in time to keep the replay buffer small and short
        of its stall deadline, not as each arrives: a reader task per connection
        would add a task hop to every message the application reads.
        """
        return False

    @property
    def sid(self) -> str | None:
        """The current session id (None before the first welcome)."""
        return self.endpoint.sid

    async def opened(self, transport: Transport) -> LayerOpened:
        """Send ``hello``, wait for ``welcome``, replay what the server lacks.

        Raises:
            ProtocolError: no ``welcome`` within ``handshake_timeout`` (closed with 4203)
                or a malformed one (closed with its code).
            TransportClosed: the connection closed during the handshake.
        """
        self._close = None
        self._retry_ms = None
        self._v1 = transport.subprotocol == SUBPROTOCOL
        if not self._v1:
            return LayerOpened()
        loop = asyncio.get_running_loop()
        try:
            self.endpoint.connection_made(loop.time())
        except ConnectionClosedError:
            # The session ended with 1000 earlier; a new connection starts a new one.
            self.endpoint = ClientEndpoint(self.endpoint.config, report_acks=False)
            self.endpoint.connection_made(loop.time())
        try:
            await self._send_all(transport, self.endpoint.data_to_send())
            established = await bounded(self._await_welcome(transport), self.handshake_timeout)
        except _NotTetherPeer as exc:
            # The server echoed the offered subprotocol without speaking it (Node ws
            # picks the first offered one by default): go plain on this connection and
            # stop offering tether.v1 to it. Our hello already reached its application.
            logger.warning(
                "the server selected tether.v1 but does not speak it; continuing in plain mode"
            )
            self.endpoint.connection_lost(loop.time(), None)
            self.endpoint.events_received()
            self._v1 = False
            self.subprotocols = ()
            return LayerOpened(received=exc.received)
        except (asyncio.TimeoutError, TimeoutError):
            self.endpoint.connection_lost(loop.time(), TetherCloseCode.HANDSHAKE_TIMEOUT)
            await self._close_unanswered(transport, TetherCloseCode.HANDSHAKE_TIMEOUT, "no welcome")
            raise ProtocolError(
                f"no welcome within {self.handshake_timeout} s",
                close_code=TetherCloseCode.HANDSHAKE_TIMEOUT,
            ) from None
        except ProtocolError as exc:
            self.endpoint.connection_lost(loop.time(), exc.close_code)
            await transport.close(exc.close_code, str(exc)[:100])
            raise
        except TransportClosed as exc:
            # The server's answer to a hello it found late is a close, not a welcome:
            # the endpoint must see that code (it gives the session up instead of
            # resuming again, which would be refused again).
            late = exc.info.code == TetherCloseCode.SUPERSEDED
            self.endpoint.connection_lost(loop.time(), exc.info.code if late else None)
            # Its SessionLost goes to the application with this attempt's events, not
            # with the next welcome's (which may never come: a client that gives up).
            self._absorb(self.endpoint.events_received())
            raise
        except asyncio.CancelledError:
            self.endpoint.connection_lost(loop.time(), None)
            raise
        resumed, replayed_in, replayed_out = established
        try:
            # docs/protocol.md §4.4: the replay goes out before any new message. No
            # heartbeat runs yet (the connection is not open): each frame must leave
            # within handshake_timeout, or a peer that stopped reading (a path gone
            # half-open) would hold the attempt until TCP gives up.
            for wire in self.endpoint.data_to_send():
                try:
                    await bounded(transport.send(wire), self.handshake_timeout)
                except TimeoutError:
                    raise ProtocolError(
                        f"replay stalled: a frame not sent within {self.handshake_timeout} s",
                        close_code=TetherCloseCode.HANDSHAKE_TIMEOUT,
                    ) from None
        except BaseException:
            # The welcome made the endpoint OPEN: a connection lost during the replay
            # must leave it disconnected (the session kept), as before the welcome.
            # Left OPEN, every later attempt failed in connection_made() and the
            # client reconnected forever.
            self.endpoint.connection_lost(loop.time(), None)
            raise
        return LayerOpened(resumed=resumed, replayed_in=replayed_in, replayed_out=replayed_out)

    async def _await_welcome(self, transport: Transport) -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            wire = await transport.recv()
            self.endpoint.receive_message(wire, loop.time())
            events = self.endpoint.events_received()
            if first:
                first = False
                # The first answer tells a server that only echoed the subprotocol's
                # name: it is not a tether.v1 frame, or it is our own hello. Either
                # fails the endpoint (it decoded the frame first, before changing
                # anything, and the handler of _NotTetherPeer drops its events), so
                # it is decoded here a second time only then: the welcome costs one
                # decode instead of two.
                if any(isinstance(event, CloseConnection) for event in events):
                    try:
                        frame = decode(wire)
                    except ProtocolError:
                        raise _NotTetherPeer((wire,)) from None
                    if isinstance(frame, Hello):
                        raise _NotTetherPeer(())  # our own hello, echoed
            established = self._absorb(events)
            if self._close is not None:
                code, reason = self._close
                self._close = None
                raise ProtocolError(f"handshake failed: {reason}", close_code=code)
            if established is not None:
                return established

    def _absorb(self, events: Sequence[object]) -> tuple[bool, int, int] | None:
        """Sort core events; return (resumed, replayed_in, replayed_out) once established."""
        established: tuple[bool, int, int] | None = None
        replayed_in = 0
        for event in events:
            if isinstance(event, SessionEstablished):
                established = (event.resumed, 0, event.replayed_out)
            elif isinstance(event, Resumed):
                replayed_in = event.replayed_in
            elif isinstance(event, SessionLost):
                self._events.append(event)
            elif isinstance(event, CloseConnection):
                self._close = (event.code, event.reason)
            elif isinstance(event, GoAwayReceived):
                logger.info(
                    "goaway from the server: retry within %d ms, resume=%s",
                    event.retry_ms,
                    event.resume,
                )
                self._retry_ms = event.retry_ms
        if established is not None:
            established = (established[0], replayed_in, established[2])
        return established

    @staticmethod
    async def _close_unanswered(transport: Transport, code: int, reason: str) -> None:
        """Send a Close frame; wait at most ``NO_WELCOME_CLOSE_TIMEOUT`` for the answer, then abort.

        No heartbeat runs during the handshake, so nothing else would cut this
        wait short: before, each stalled attempt took ``close_timeout`` more.
        """
        try:
            await bounded(transport.close(code, reason), NO_WELCOME_CLOSE_TIMEOUT)
        except TimeoutError:
            logger.debug(
                "no answer to the %d close within %s s: aborting", code, NO_WELCOME_CLOSE_TIMEOUT
            )
            transport.abort()

    @staticmethod
    async def _send_all(transport: Transport, wires: Sequence[Message]) -> None:
        for wire in wires:
            await transport.send(wire)

    def has_room(self, message: Message) -> bool:
        """Whether the replay buffer can take ``message`` (always True in plain mode)."""
        # The buffer's own check, not the endpoint's: one call less per message sent.
        return not self._v1 or self.endpoint.buffer.has_room_for(message)

    def overflow(self, now: float) -> None:
        """The buffer stayed full for ``send_timeout``: close with 4202 and resume."""
        if self._v1:
            self.endpoint.overflow(now)
            self._absorb(self.endpoint.events_received())
            self._control = True

    def outgoing(self, message: Message, now: float) -> Sequence[Message]:
        """Number the message, keep it for replay, return its data frame (and pending acks)."""
        if not self._v1:
            return (message,)
        self.endpoint.send(message, now)
        return self.endpoint.data_to_send()

    def outgoing_header(self, message: Message, now: float) -> bytes | None:
        """Number and keep a message; return its data frame's header (see ClientLayer)."""
        if not self._v1:
            return None
        numbered = self.endpoint.send_header(message, now)
        return None if numbered is None else numbered[1]

    def incoming(self, message: Message, now: float) -> Sequence[Message]:
        """Deliver data frames exactly once and in order; control frames stay here."""
        if not self._v1:
            return (message,)
        endpoint = self.endpoint
        payload = endpoint.receive(message, now)
        if endpoint.has_output:
            # Leaves the outgoing frames (an ack) for control_to_send().
            self._absorb(endpoint.events_received())
            self._control = True
        return [] if payload is None else [payload]

    def next_deadline(self) -> float | None:
        """The endpoint's next deadline (ack delay, stalled buffer) on a tether.v1 connection."""
        return self.endpoint.next_deadline() if self._v1 else None

    def wants_input(self) -> bool:
        """Enough unacknowledged messages that the acks coming back must be read now."""
        buffer = self.endpoint.buffer
        # (An empty buffer, the common case after a message read, answers without a call.)
        return (
            self._v1
            and buffer.oldest_queued_at is not None
            and buffer.reaches(READ_AHEAD_MESSAGES, READ_AHEAD_BYTES)
        )

    def read_deadline(self) -> float | None:
        """Half way to the stall deadline of the oldest unacknowledged message."""
        if not self._v1:
            return None
        stall = self.endpoint.stall_deadline()
        return None if stall is None else stall - self.endpoint.window / 2

    def handle_timer(self, now: float) -> None:
        """Run the endpoint's timer."""
        if self._v1:
            self.endpoint.handle_timer(now)
            self._absorb(self.endpoint.events_received())
            self._control = True  # a due ack

    def pending(self) -> bool:
        """Events, frames of the endpoint's own (acks) or a close request are waiting."""
        return bool(self._events) or self._close is not None or self._control

    def control_to_send(self) -> Sequence[Message]:
        """Standalone acks (and anything else the endpoint queued on its own)."""
        self._control = False
        if self._v1 and self.endpoint.has_output:
            return self.endpoint.data_to_send()
        return ()

    def close_request(self) -> tuple[int, str] | None:
        """A close the endpoint asked for (4201 gap, 4202 overflow, 1002 protocol error)."""
        request, self._close = self._close, None
        return request

    def unacked(self) -> tuple[Message, ...]:
        """The session's messages the server has not acknowledged, oldest first.

        Also once the connection closed: a 1000 ends the session and leaves them
        here (a lost session hands them over in SessionLost and keeps none).
        """
        return tuple(entry.payload for entry in self.endpoint.buffer)

    def take_events(self) -> Sequence[Event]:
        """SessionLost events for the application."""
        if not self._events:
            return ()  # the per-message case: no new list
        events, self._events = self._events, []
        return events

    def closed(self, info: ClosedInfo, now: float) -> None:
        """Tell the endpoint; a 4901, a goaway without resume or a 1000 ends the session."""
        if not self._v1:
            return
        self._v1 = False
        code = None if info.code == CloseCode.ABNORMAL_CLOSURE else info.code
        if info.sent_code == CloseCode.NORMAL_CLOSURE:
            code = CloseCode.NORMAL_CLOSURE  # we ended the session ourselves
        self.endpoint.connection_lost(now, code)
        self._absorb(self.endpoint.events_received())

    def reconnect_hint(self) -> float | None:
        """After a goaway: a uniformly random delay in ``[retry_ms/5, retry_ms]``, in seconds.

        The spread keeps clients from coming back at once; the floor of a fifth
        makes the default ``retry_ms`` of 5000 the 1-5 s of DESIGN.md §4.
        """
        if self._retry_ms is None:
            return None
        retry = self._retry_ms / 1000.0
        return self._rng.uniform(retry / 5, retry)
