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

from .engine import ClosedInfo, Message, Transport

__all__ = ["ClientLayer", "LayerOpened", "PlainLayer"]


@dataclass(frozen=True)
class LayerOpened:
    """What the layer's handshake established on a new transport.

    Attributes:
        resumed: True when an earlier session continued on this transport.
        replayed_in: messages the peer replayed to us.
        replayed_out: messages we replayed to the peer.
    """

    resumed: bool = False
    replayed_in: int = 0
    replayed_out: int = 0


class ClientLayer:
    """Hooks a session layer implements; the defaults are plain WebSocket.

    The client calls, per connection: :meth:`opened` once the WebSocket handshake
    is done (before the state becomes OPEN; raising fails the attempt), then
    :meth:`outgoing` for every queued message it sends and :meth:`incoming` for
    every message it receives, :meth:`closed` when the transport ended, and
    :meth:`reconnect_hint` before the reconnect decision. ``now`` is the event
    loop's clock, in seconds.
    """

    #: Subprotocols the layer wants offered before the user's own.
    subprotocols: Sequence[str] = ()

    async def opened(self, transport: Transport) -> LayerOpened:
        """Run the layer's handshake on a fresh transport."""
        return LayerOpened()

    def outgoing(self, message: Message, now: float) -> Sequence[Message]:
        """The wire messages to send, in order, for one application message."""
        return (message,)

    def incoming(self, message: Message, now: float) -> Sequence[Message]:
        """The application messages carried by one wire message (none for control messages)."""
        return (message,)

    def closed(self, info: ClosedInfo, now: float) -> None:
        """The transport ended (called before the reconnect decision)."""

    def reconnect_hint(self) -> float | None:
        """Seconds the server asked to wait before reconnecting (a goaway's retry), if any.

        Used as the delay when the close is a planned restart (1012); None lets the
        policy choose.
        """
        return None


class PlainLayer(ClientLayer):
    """Plain RFC 6455: every message passes through unchanged."""
