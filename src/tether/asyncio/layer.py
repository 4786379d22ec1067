"""The seam between the transport and the user-facing queues of a client connection.

A :class:`ClientLayer` sits between each fresh transport and the application:
it may run a handshake before the connection is reported OPEN (tether.v1's
hello/welcome), and it sees every message on the way out and on the way in
(sequence numbers, acks, control messages that never reach the application).
:class:`PlainLayer` is plain RFC 6455: no handshake, messages pass unchanged.
The resumption layer (issue 5) implements the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..events import Event
from .engine import ClosedInfo, Message, Transport

__all__ = ["ClientLayer", "LayerOpened", "PlainLayer"]


@dataclass(frozen=True)
class LayerOpened:
    """What the layer's handshake established on a new transport.

    Attributes:
        resumed: True when an earlier session continued on this transport.
        replayed_in: messages the peer replayed to us.
        replayed_out: messages we replayed to the peer.
        received: application messages that arrived during the handshake.
    """

    resumed: bool = False
    replayed_in: int = 0
    replayed_out: int = 0
    received: tuple[Message, ...] = ()


class ClientLayer:
    """Hooks a session layer implements; the defaults are plain WebSocket.

    The client calls, per connection: :meth:`opened` once the WebSocket handshake
    is done (before the state becomes OPEN; raising fails the attempt), then
    :meth:`outgoing` for every queued message it sends and :meth:`incoming` for
    every message it receives, :meth:`closed` when the transport ended, and
    :meth:`reconnect_hint` before the reconnect decision. ``now`` is the event
    loop's clock, in seconds.

    While a transport is open the client also drives the layer's own work: it
    runs :meth:`handle_timer` at :meth:`next_deadline`, and after every call into
    the layer it sends :meth:`control_to_send` (e.g. standalone acks), closes the
    transport when :meth:`close_request` asks, and reports :meth:`take_events`
    (all three only when :meth:`pending` says there may be something).
    Before handing a message to :meth:`outgoing` it waits (up to ``send_timeout``)
    for :meth:`has_room`, then calls :meth:`overflow`.

    Set :attr:`needs_reader` to False when the layer does not have to see incoming
    messages before the application asks for them: the client can then read the
    transport from ``recv()`` itself, without a reader task in between; it reads
    ahead when :meth:`wants_input` says so or :meth:`read_deadline` passes.
    """

    #: Subprotocols the layer wants offered before the user's own (read before
    #: every attempt: a layer may stop offering one to a server that misuses it).
    subprotocols: Sequence[str] = ()

    @property
    def keeps_sent(self) -> bool:
        """True when the layer keeps what :meth:`outgoing` took (a replay buffer).

        The client then removes a message from its send queue as soon as the
        layer took it, instead of after the transport accepted it: the layer
        re-sends it on the next connection itself, so queueing it again would
        send it twice.
        """
        return False

    @property
    def needs_reader(self) -> bool:
        """True when :meth:`incoming` must see every message as soon as it arrives.

        The client then runs a reader task per connection that passes each message
        through :meth:`incoming` into the receive buffer, even while the application
        does not call ``recv()``. When False, ``recv()`` reads the transport
        itself, one task hop fewer per message, and :meth:`incoming` runs when the
        application asks for the next message, when a heartbeat finds it not
        reading (the client then reads ahead into the buffer, within
        ``max_incoming``), when :meth:`wants_input` or :meth:`read_deadline` asks, and
        when the connection closes. Default True: right for any layer;
        :class:`PlainLayer` and the tether.v1 layer say False.
        """
        return True

    async def opened(self, transport: Transport) -> LayerOpened:
        """Run the layer's handshake on a fresh transport."""
        return LayerOpened()

    def outgoing(self, message: Message, now: float) -> Sequence[Message]:
        """The wire messages to send, in order, for one application message."""
        return (message,)

    def outgoing_header(self, message: Message, now: float) -> bytes | None:
        """:meth:`outgoing` of one message whose wire message is a header before it.

        For a layer whose wire message is ``header + message`` (of the message's
        type; a text message's header is ASCII): take the message as
        :meth:`outgoing` would and return the header alone; the client writes the
        two as one message (the engine joins them in the frame: a large message is
        copied once less, text encoded once). None: nothing was taken; call
        :meth:`outgoing`. The default is None.
        """
        return None

    def incoming(self, message: Message, now: float) -> Sequence[Message]:
        """The application messages carried by one wire message (none for control messages)."""
        return (message,)

    def closed(self, info: ClosedInfo, now: float) -> None:
        """The transport ended (called before the reconnect decision)."""

    def has_room(self, message: Message) -> bool:
        """Whether :meth:`outgoing` can take ``message`` now (False: wait for acks)."""
        return True

    def overflow(self, now: float) -> None:
        """:meth:`has_room` stayed False for ``send_timeout`` on an open transport."""

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (event loop clock), or None."""
        return None

    def wants_input(self) -> bool:
        """True when incoming messages must be read now even if the application does not.

        Asked after each call into the layer by a client whose layer does not need a
        reader task (:attr:`needs_reader` False): True starts one, which reads ahead
        until the application waits in ``recv()`` again (tether.v1: enough sent and
        unacknowledged that the acks must be taken to keep the replay buffer small).
        """
        return False

    def read_deadline(self) -> float | None:
        """When incoming messages must have been read even if the application does not.

        The client reads ahead from then on if nobody is reading (tether.v1: well
        before unacknowledged messages would count as stalled). None: no such time.
        """
        return None

    def handle_timer(self, now: float) -> None:
        """Act on the deadline from :meth:`next_deadline`."""

    def pending(self) -> bool:
        """Whether :meth:`take_events`, :meth:`control_to_send` or :meth:`close_request` may
        have something.

        Asked first after every call into the layer: False lets the client skip the
        three (the per-message case). The default, True, always asks them.
        """
        return True

    def control_to_send(self) -> Sequence[Message]:
        """Wire messages the layer sends on its own (acks, ...); clears the list."""
        return ()

    def close_request(self) -> tuple[int, str] | None:
        """A (code, reason) the layer wants the transport closed with; cleared once read."""
        return None

    def take_events(self) -> Sequence[Event]:
        """Events for the application (``Resumed``, ``SessionLost``, ...); clears the list."""
        return ()

    def unacked(self) -> tuple[Message, ...]:
        """Messages sent that the peer has not acknowledged yet, oldest first.

        A layer without acknowledgements (plain WebSocket) has none: what the
        transport took is out of its hands.
        """
        return ()

    def reconnect_hint(self) -> float | None:
        """Seconds the server asked to wait before reconnecting (a goaway's retry), if any.

        Used as the delay when the close is a planned restart (1012); None lets the
        policy choose.
        """
        return None


class PlainLayer(ClientLayer):
    """Plain RFC 6455: every message passes through unchanged."""

    @property
    def needs_reader(self) -> bool:
        """False: nothing to do with a message until the application reads it."""
        return False
