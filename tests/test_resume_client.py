"""``TetherV1ClientLayer``: the client's tether.v1 glue, over an in-memory fake transport."""

from __future__ import annotations

import asyncio
import random

import pytest
from tests.test_session import FakeTransport

from tether.asyncio.engine import ClosedInfo, Message, TransportClosed
from tether.asyncio.resume_client import TetherV1ClientLayer
from tether.events import SessionLost
from tether.protocol import GoAway, Hello, decode, encode, encode_data
from tether.resume import ResumeConfig, ServerEndpoint

pytestmark = pytest.mark.timeout(10)


def v1_transport() -> FakeTransport:
    transport = FakeTransport()
    transport.subprotocol = "tether.v1"
    return transport


async def opened_layer() -> tuple[TetherV1ClientLayer, FakeTransport, ServerEndpoint]:
    """A layer whose handshake a real ServerEndpoint answered."""
    layer = TetherV1ClientLayer(rng=random.Random(1))
    transport = v1_transport()
    server = ServerEndpoint("sid1", "epoch1")
    server.attach(0.0, token="tok1", resumed=False)
    for frame in server.data_to_send():
        transport.feed(frame)
    await layer.opened(transport)
    return layer, transport, server


async def test_plain_connection_passes_messages_unchanged() -> None:
    """Without the subprotocol: no hello, messages unchanged, the queue keeps ownership."""
    layer = TetherV1ClientLayer()
    transport = FakeTransport()
    opened = await layer.opened(transport)
    assert (opened.resumed, transport.sent) == (False, [])
    assert layer.outgoing("hi", 0.0) == ("hi",)
    assert layer.incoming(b"raw", 0.0) == (b"raw",)
    assert layer.keeps_sent is False


async def test_handshake_sends_hello_then_owns_sent_messages() -> None:
    """A v1 connection opens with hello; afterwards the replay buffer owns what is sent."""
    layer, transport, _ = await opened_layer()
    assert isinstance(decode(transport.sent[0]), Hello)
    assert layer.keeps_sent is True
    assert layer.outgoing("m", 1.0) == ["d1:0:m"]
    assert layer.sid == "sid1"


async def test_data_is_delivered_once_and_duplicates_dropped() -> None:
    """A data frame is delivered; the same sequence number again is not."""
    layer, _, _ = await opened_layer()
    frame = encode_data(1, 0, "x")
    assert layer.incoming(frame, 1.0) == ["x"]
    assert layer.incoming(frame, 1.0) == []


async def test_ack_due_by_the_timer_is_pending_until_taken() -> None:
    """A standalone ack the timer queues makes pending() True until control_to_send() takes it."""
    layer, _, _ = await opened_layer()
    assert layer.incoming(encode_data(1, 0, "x"), 1.0) == ["x"]
    assert layer.pending() is False  # only a deadline so far: nothing to send yet
    deadline = layer.next_deadline()
    assert deadline == pytest.approx(1.2)  # ack_delay 0.2 s
    layer.handle_timer(deadline)
    assert layer.pending() is True
    assert layer.control_to_send() == ['{"type":"ack","rx":1}']
    assert layer.pending() is False
    assert layer.control_to_send() == ()


class _ReplayFails(FakeTransport):
    """A tether.v1 connection that drops right after the hello: the replay cannot go."""

    def __init__(self) -> None:
        super().__init__()
        self.subprotocol = "tether.v1"

    async def send(self, message: Message) -> None:
        if self.sent:
            raise TransportClosed(ClosedInfo(1006, "", clean=False))
        await super().send(message)


async def test_connection_lost_during_the_replay_leaves_the_session_resumable() -> None:
    """A drop between welcome and replay: the next connection resumes and replays.

    Before, the endpoint stayed OPEN and every later attempt failed in
    connection_made(): the client reconnected forever.
    """
    layer, _, server = await opened_layer()
    now = asyncio.get_running_loop().time()  # opened() reads the loop's clock
    assert layer.outgoing("m", now) == ["d1:0:m"]  # never acked: replayed on resume
    layer.closed(ClosedInfo(1006, "", clean=False), now)
    server.connection_lost(now)

    dropping = _ReplayFails()
    server.attach(now, token="tok2", resumed=True, peer_rx=0)
    for frame in server.data_to_send():
        dropping.feed(frame)
    with pytest.raises(TransportClosed):
        await layer.opened(dropping)
    assert isinstance(decode(dropping.sent[0]), Hello)
    server.connection_lost(now)

    transport = v1_transport()
    server.attach(now, token="tok3", resumed=True, peer_rx=0)
    for frame in server.data_to_send():
        transport.feed(frame)
    opened = await layer.opened(transport)
    assert opened.resumed is True
    assert transport.sent[1:] == ["d1:0:m"]  # the replay, after the hello


async def test_gap_requests_a_4201_close() -> None:
    """A skipped sequence number asks for a 4201 close (the resume repairs it)."""
    layer, _, _ = await opened_layer()
    assert layer.incoming(encode_data(2, 0, "x"), 1.0) == []
    request = layer.close_request()
    assert request is not None
    assert request[0] == 4201


async def test_goaway_hint_is_within_a_fifth_and_all_of_retry_ms() -> None:
    """After goaway{retry_ms: 5000} the reconnect hint is in [1, 5] s."""
    layer, _, _ = await opened_layer()
    layer.incoming(encode(GoAway(retry_ms=5000, resume=True)), 1.0)
    hint = layer.reconnect_hint()
    assert hint is not None
    assert 1.0 <= hint <= 5.0


async def test_goaway_without_resume_reports_session_lost_on_close() -> None:
    """goaway{resume: false} then the 1012: SessionLost('not_resumable') with the unacked."""
    layer, _, _ = await opened_layer()
    layer.outgoing("mine", 1.0)
    layer.incoming(encode(GoAway(retry_ms=100, resume=False)), 1.0)
    layer.closed(ClosedInfo(1012, "restart", clean=True), 2.0)
    assert layer.take_events() == [SessionLost("not_resumable", ("mine",))]


async def test_echoed_hello_switches_to_plain_and_stops_offering() -> None:
    """A server that echoes the hello is plain: no more tether.v1 offers to it."""
    layer = TetherV1ClientLayer()
    transport = v1_transport()
    transport.feed(encode(Hello(rx=0)))
    opened = await layer.opened(transport)
    assert (opened.resumed, opened.received) == (False, ())
    assert layer.subprotocols == ()
    assert layer.outgoing("plain", 0.0) == ("plain",)


async def test_non_tether_first_message_is_handed_to_the_application() -> None:
    """A plain server's own first message is kept for the application, not dropped."""
    layer = TetherV1ClientLayer()
    transport = v1_transport()
    transport.feed("welcome to my chat")
    opened = await layer.opened(transport)
    assert opened.received == ("welcome to my chat",)


@pytest.mark.parametrize("server_window", [10.0, 600.0])
async def test_acks_are_read_for_half_way_to_the_servers_stall(server_window: float) -> None:
    """read_deadline() is half the server's window (welcome.window_ms) after the send.

    (Before, it was the stall, which follows the server's window, minus half of the
    client's own: with a 10 s server window already past at the send, so the reader
    was started after every unacknowledged send.)
    """
    layer = TetherV1ClientLayer(rng=random.Random(1))  # the client's own window: 120 s
    transport = FakeTransport()
    transport.subprotocol = "tether.v1"
    server = ServerEndpoint("sid1", "epoch1", ResumeConfig(resume_window=server_window))
    server.attach(0.0, token="tok1", resumed=False)
    for frame in server.data_to_send():
        transport.feed(frame)
    await layer.opened(transport)
    now = asyncio.get_running_loop().time()
    layer.outgoing("m", now)
    deadline = layer.read_deadline()
    assert deadline is not None
    assert deadline - now == pytest.approx(server_window / 2)


def test_welcome_timeout_comes_from_resume_config() -> None:
    """connect(resume=ResumeConfig(welcome_timeout=...)) sets the wait; an explicit one wins."""
    assert TetherV1ClientLayer().handshake_timeout == 10.0
    assert TetherV1ClientLayer(ResumeConfig(welcome_timeout=2.5)).handshake_timeout == 2.5
    layer = TetherV1ClientLayer(ResumeConfig(welcome_timeout=2.5), handshake_timeout=0.5)
    assert layer.handshake_timeout == 0.5
