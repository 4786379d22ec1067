"""A fake link between a client and a server tether.v1 core, for tests.

It plays the part the asyncio adapter will play: carries messages (in order per
connection, as TCP does), drops connections, handles ``hello`` on the server
side with :func:`tether.tokens.judge_resume`, and checks every delivery as it
happens: each side must receive the other's numbered messages exactly once, in
order. Time is a number the test advances.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from tether.events import Resumed, SessionLost
from tether.protocol import Hello, LostReason, Payload, decode
from tether.resume import (
    ClientEndpoint,
    CloseConnection,
    CoreEvent,
    Endpoint,
    MessageReceived,
    ResumeConfig,
    ServerEndpoint,
    SessionEstablished,
)
from tether.tokens import hash_token, judge_resume, new_session_id, new_token

EPOCH = "ZXBvY2gtMQ"


@dataclass(frozen=True)
class Candidate:
    """What a store would say about the server's session."""

    token_hash: str
    previous_token_hash: str | None
    principal: str | None
    expires_at: float | None
    lost: str | None
    tx: int
    acked: int
    attempt: int


@dataclass
class Side:
    """One side's application: what it sent, what it got, what it was told."""

    sent: list[Payload] = field(default_factory=list)
    #: For each sent message, the session it was sent on (server side).
    sent_on: list[str | None] = field(default_factory=list)
    #: Sessions this side established (client side: which server sessions it joined).
    joined: list[str] = field(default_factory=list)
    got: list[Payload] = field(default_factory=list)
    lost: list[SessionLost] = field(default_factory=list)
    resumed: list[Resumed] = field(default_factory=list)
    closes: list[CloseConnection] = field(default_factory=list)


class DeliveryError(AssertionError):
    """A message was delivered twice, out of order, or one that was never sent."""


class Link:
    """A client core, a server core and the connection between them.

    Args:
        config: resumption settings for both sides.
        seed: seeds the token source.
        epoch: the store epoch the server reports.
        hold_acks: the server acks only what its (simulated) store committed; the
            store commits ``rx`` on every clock advance.
    """

    def __init__(
        self,
        config: ResumeConfig,
        *,
        seed: int = 0,
        epoch: str = EPOCH,
        hold_acks: bool = False,
    ) -> None:
        self.config = config
        self.hold_acks = hold_acks
        self.rng = random.Random(seed)
        self.now = 0.0
        self.epoch = epoch
        self.client = ClientEndpoint(config)
        self.server: ServerEndpoint | None = None
        self.token_hash = ""
        self.previous_token_hash: str | None = None
        #: The highest hello.attempt a resume was served for, as a store keeps it.
        self.attempt = 0
        #: Who the current connection is authenticated as.
        self.principal: str | None = None
        #: Who the server's session belongs to (set when it is created).
        self.session_principal: str | None = None
        self.connected = False
        self.server_ready = False
        self.c2s: deque[Payload] = deque()
        self.s2c: deque[Payload] = deque()
        self.app_client = Side()
        self.app_server = Side()
        self.last_welcome_token: str | None = None
        #: Why the server abandoned its session, as its store would record it.
        self.lost_reason: str | None = None

    # --------------------------------------------------------------- helpers

    def token_source(self, n: int) -> bytes:
        """Seeded random bytes (the adapter uses secrets.token_bytes)."""
        return self.rng.randbytes(n)

    def candidate(self) -> Candidate | None:
        """The server's session as a store would describe it."""
        server = self.server
        if server is None or (server.phase.value == "closed" and self.lost_reason is None):
            return None
        return Candidate(
            self.token_hash,
            self.previous_token_hash,
            self.session_principal,
            None,
            self.lost_reason,
            server.tx,
            server.peer_acked,
            self.attempt,
        )

    # --------------------------------------------------------------- actions

    def connect(self) -> None:
        """Open a new connection; the client says hello."""
        assert not self.connected
        self.connected = True
        self.server_ready = False
        self.client.connection_made(self.now)
        self.pump()

    def drop(self, code: int | None = None) -> None:
        """The connection dies; frames in flight are lost."""
        if not self.connected:
            return
        self.connected = False
        self.c2s.clear()
        self.s2c.clear()
        self.client.connection_lost(self.now, code)
        if self.server is not None and self.server_ready:
            self.server.connection_lost(self.now, code)
        self.server_ready = False
        self.pump()

    def abandon_server(self, reason: LostReason) -> None:
        """The server gives the session up (e.g. its buffer overflowed while away)."""
        assert self.server is not None
        self.server.abandon(reason)
        self.lost_reason = reason.value

    def crash_server(self) -> None:
        """The server process dies and restarts from its (simulated) durable store.

        The store has every message the server app sent (write-through), the
        client's ack, and ``rx`` as last committed; the app's own state is as of
        that commit too (the adapter commits rx with the app's replies, atomically).
        """
        server = self.server
        if server is None or not self.hold_acks:
            return
        self.drop()
        durable_rx = server.durable_rx
        del self.app_server.got[durable_rx:]
        stored = [(entry.seq, entry.payload) for entry in server.buffer]
        self.server = ServerEndpoint(
            server.sid, self.epoch, self.config, hold_acks=True, tx=server.tx, rx=durable_rx
        )
        self.server.restore(server.peer_acked, stored, self.now)

    def client_send(self, payload: Payload) -> bool:
        """The client app sends ``payload`` if there is room; True if it did."""
        if not self.client.has_room(payload):
            return False
        self.client.send(payload, self.now)
        self.app_client.sent.append(payload)
        self.app_client.sent_on.append(None)
        self.pump()
        return True

    def server_send(self, payload: Payload) -> bool:
        """The server app sends ``payload`` if there is a session with room."""
        server = self.server
        if server is None or not server.has_room(payload):
            return False
        server.send(payload, self.now)
        self.app_server.sent.append(payload)
        self.app_server.sent_on.append(server.sid)
        self.pump()
        return True

    def deliver_c2s(self, count: int = 1, *, duplicate: bool = False) -> None:
        """Deliver up to ``count`` client frames to the server (optionally twice)."""
        for _ in range(count):
            if not self.c2s:
                return
            message = self.c2s.popleft()
            self._server_receive(message)
            if duplicate and _duplicable(message) and self.connected:
                self._server_receive(message)
            self.pump()

    def deliver_s2c(self, count: int = 1, *, duplicate: bool = False) -> None:
        """Deliver up to ``count`` server frames to the client (optionally twice)."""
        for _ in range(count):
            if not self.s2c:
                return
            message = self.s2c.popleft()
            self.client.receive_message(message, self.now)
            if duplicate and _duplicable(message) and self.connected:
                self.client.receive_message(message, self.now)
            self.pump()

    def advance(self, seconds: float) -> None:
        """Move the clock and fire due timers on both sides."""
        self.now += seconds
        if self.hold_acks and self.server is not None:
            self.server.rx_persisted(self.server.rx, self.now)
        for endpoint in self._endpoints():
            deadline = endpoint.next_deadline()
            if deadline is not None and deadline <= self.now:
                endpoint.handle_timer(self.now)
        self.pump()

    def settle(self, *, rounds: int = 200, complete: bool = True) -> None:
        """Reconnect if needed and exchange everything until both sides are quiet.

        With ``complete`` (no session lost), also wait until every message sent
        by either app has been received by the other.
        """
        for _ in range(rounds):
            if not self.connected:
                self.connect()
            self.deliver_c2s(len(self.c2s))
            self.deliver_s2c(len(self.s2c))
            self.advance(1.0)
            if (
                self.connected
                and not self.c2s
                and not self.s2c
                and (
                    not complete
                    or (
                        self.app_server.got == self.expected(self.app_client, self.app_server)
                        and self.app_client.got == self.expected(self.app_server, self.app_client)
                    )
                )
            ):
                return
        raise AssertionError("the link did not settle")

    # ------------------------------------------------------------- internals

    def _endpoints(self) -> list[Endpoint]:
        return [self.client] if self.server is None else [self.client, self.server]

    def _server_receive(self, message: Payload) -> None:
        if self.server_ready:
            assert self.server is not None
            self.server.receive_message(message, self.now)
            return
        hello = decode(message)
        assert isinstance(hello, Hello), hello
        self._accept(hello)

    def _accept(self, hello: Hello) -> None:
        """What the server adapter does with a hello."""
        reason: LostReason | None = None
        if hello.sid is not None:
            candidate = self.candidate() if self.server and self.server.sid == hello.sid else None
            reason = judge_resume(
                hello, candidate, epoch=self.epoch, principal=self.principal, now=self.now
            )
        token, token_hash = new_token(self.token_source)
        self.last_welcome_token = token
        if hello.sid is not None and reason is None:
            assert hello.token is not None
            assert self.server is not None
            self.previous_token_hash, self.token_hash = hash_token(hello.token), token_hash
            if hello.attempt is not None:
                self.attempt = hello.attempt
            assert self.server is not None
            self.server.attach(self.now, token=token, resumed=True, peer_rx=hello.rx)
        else:
            sid = new_session_id(self.token_source)
            self.server = ServerEndpoint(sid, self.epoch, self.config, hold_acks=self.hold_acks)
            self.session_principal = self.principal
            self.lost_reason = None
            self.token_hash, self.previous_token_hash = token_hash, None
            self.attempt = 0
            self.server.attach(self.now, token=token, resumed=False, reason=reason)
        self.server_ready = True

    def pump(self) -> None:
        """Move outputs onto the wire and events to the apps, until nothing moves."""
        while True:
            moved = False
            out = self.client.data_to_send()
            if self.connected:
                self.c2s.extend(out)
            events = self.client.events_received()
            moved |= bool(events)
            for event in events:
                self._on_event(event, self.app_client, self.app_server)
            if self.server is not None:
                out = self.server.data_to_send()
                if self.connected and self.server_ready:
                    self.s2c.extend(out)
                events = self.server.events_received()
                moved |= bool(events)
                for event in events:
                    self._on_event(event, self.app_server, self.app_client)
            if not moved:
                return

    @staticmethod
    def expected(sender: Side, receiver: Side) -> list[Payload]:
        """What ``receiver`` must get from ``sender``, in order.

        A server session the client never joined (its welcome was lost, so the
        client started afresh) is an orphan: nobody can receive what was sent
        on it, and it expires on the server.
        """
        return [
            payload
            for payload, sid in zip(sender.sent, sender.sent_on, strict=True)
            if sid is None or sid in receiver.joined
        ]

    def _on_event(self, event: CoreEvent, me: Side, peer: Side) -> None:
        if isinstance(event, MessageReceived):
            index = len(me.got)
            expected = self.expected(peer, me)
            if index >= len(expected) or expected[index] != event.payload:
                wanted = expected[index] if index < len(expected) else None
                raise DeliveryError(f"got {event.payload!r}, expected {wanted!r}")
            me.got.append(event.payload)
        elif isinstance(event, SessionEstablished):
            me.joined.append(event.sid)
        elif isinstance(event, CloseConnection):
            me.closes.append(event)
            self.drop(event.code)
        elif isinstance(event, SessionLost):
            me.lost.append(event)
        elif isinstance(event, Resumed):
            me.resumed.append(event)


def _duplicable(message: Payload) -> bool:
    # Data frames and acks are idempotent to repeat; hello/welcome/goaway are not.
    return isinstance(message, bytes) or message.startswith(("d", '{"type":"ack"'))
