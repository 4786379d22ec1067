"""tether.v1 session endpoints: sequencing, acks, replay, handshake, failure outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from resume_link import Link
from tether.closecodes import CloseCode
from tether.events import Resumed, SessionLost
from tether.exceptions import ConfigurationError, ConnectionClosedError, QueueFull
from tether.protocol import (
    MAX_SEQ,
    Ack,
    Data,
    GoAway,
    Hello,
    LostReason,
    TetherCloseCode,
    Welcome,
    decode,
    encode,
)
from tether.resume import (
    LONE_MESSAGE_BYTES,
    ClientEndpoint,
    CloseConnection,
    GoAwayReceived,
    MessageReceived,
    PeerAcked,
    Phase,
    ResumeConfig,
    ServerEndpoint,
    SessionEnded,
    SessionEstablished,
)

CONFIG = ResumeConfig()


def open_pair(config: ResumeConfig = CONFIG, **kwargs: object) -> Link:
    """A link with an established session and nothing in flight."""
    link = Link(config, **kwargs)  # type: ignore[arg-type]
    link.connect()
    link.settle()
    return link


def welcome(**fields: object) -> str:
    """A welcome frame with defaults for a fresh session."""
    body: dict[str, object] = {
        "resumed": False,
        "reason": None,
        "sid": "c2lk",
        "token": "dG9r",
        "epoch": "ZXA",
        "rx": 0,
        "tx": 0,
        "window_ms": 120_000,
    }
    body |= fields
    return str(encode(Welcome(**body)))  # type: ignore[arg-type]


def opened_client(config: ResumeConfig = CONFIG, *, report_acks: bool = True) -> ClientEndpoint:
    """A client that completed a fresh handshake at t=0."""
    client = ClientEndpoint(config, report_acks=report_acks)
    client.connection_made(0.0)
    # (The server's window, which the client follows, equal to the client's.)
    client.receive_message(welcome(window_ms=config.window_ms), 0.0)
    client.data_to_send()
    client.events_received()
    return client


# ------------------------------------------------------------------- config


def test_config_defaults() -> None:
    """Defaults are the documented ones: 120 s, 10,000 msgs, 8 MiB, 32 msgs/64 KiB/auto, 10 s."""
    assert (CONFIG.resume_window, CONFIG.max_messages, CONFIG.max_bytes) == (
        120.0,
        10_000,
        8 * 1024 * 1024,
    )
    assert (CONFIG.ack_messages, CONFIG.ack_bytes, CONFIG.ack_delay) == (32, 64 * 1024, "auto")
    assert CONFIG.welcome_timeout == 10.0


def test_auto_ack_delay_is_lazy_only_for_a_client_and_a_lone_message() -> None:
    """ "auto": 0.2 s; a client's lone message 10 s, at most a quarter of the server's window."""
    assert CONFIG.ack_delay_s() == 0.2
    assert CONFIG.lone_ack_delay_s(client=False) is None  # a server's acks are prompt
    assert CONFIG.lone_ack_delay_s(client=True) == 10.0
    assert CONFIG.lone_ack_delay_s(client=True, window=8.0) == 2.0  # told in welcome
    assert ResumeConfig(resume_window=20.0).lone_ack_delay_s(client=True) == 5.0
    explicit = ResumeConfig(ack_delay=0.5)
    assert explicit.ack_delay_s() == 0.5
    assert explicit.lone_ack_delay_s(client=True) is None  # as asked, on both sides
    assert ResumeConfig(ack_delay=None).ack_delay_s() is None
    assert ResumeConfig(ack_delay=None).lone_ack_delay_s(client=True) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resume_window": 0},
        {"max_messages": 0},
        {"ack_bytes": -1},
        {"ack_delay": 0},
        {"ack_delay": math.inf},
        {"ack_delay": "soon"},
        {"ack_delay": True},
        {"ack_messages": None, "ack_bytes": None, "ack_delay": None},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    """Non-positive or non-finite values, or no ack trigger at all, are configuration errors."""
    with pytest.raises(ConfigurationError):
        ResumeConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("window", "shown"),
    [(0, "0"), (-1.5, "-1.5"), (float("inf"), "inf"), (float("nan"), "nan"), ("60", "'60'")],
)
def test_resume_window_must_be_finite_and_positive(window: object, shown: str) -> None:
    """An infinite window is refused (before: accepted, then every welcome failed on
    int(inf)); the message shows the value."""
    with pytest.raises(ConfigurationError, match=rf"resume_window must be .*, not {shown}$"):
        ResumeConfig(resume_window=window)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("timeout", "shown"),
    [
        (0, "0"),
        (-1, "-1"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (None, "None"),
        (True, "True"),
        ("10", "'10'"),
    ],
)
def test_welcome_timeout_must_be_finite_and_positive(timeout: object, shown: str) -> None:
    """No welcome wait of zero or without end (nothing else bounds an attempt before welcome)."""
    with pytest.raises(ConfigurationError, match=rf"welcome_timeout must be .*, not {shown}$"):
        ResumeConfig(welcome_timeout=timeout)  # type: ignore[arg-type]


def test_resume_window_fits_welcome_window_ms() -> None:
    """The largest window still fits welcome's window_ms (at most MAX_SEQ); one above is refused."""
    largest = MAX_SEQ // 1000
    assert ResumeConfig(resume_window=largest).window_ms <= MAX_SEQ
    with pytest.raises(ConfigurationError):
        ResumeConfig(resume_window=largest + 1)


# ---------------------------------------------------------------- handshake


def test_first_connection_sends_fresh_hello() -> None:
    """A client without a session says hello with no sid, token or epoch."""
    client = ClientEndpoint()
    client.connection_made(0.0)
    assert [decode(m) for m in client.data_to_send()] == [Hello(rx=0)]
    assert client.phase is Phase.HANDSHAKE


def test_messages_sent_before_welcome_go_out_after_it() -> None:
    """Messages queued before the handshake are sent, in order, once welcome arrives."""
    client = ClientEndpoint()
    client.send("a", 0.0)
    client.connection_made(0.0)
    client.send(b"b", 0.0)
    assert len(client.data_to_send()) == 1  # only the hello
    client.receive_message(welcome(), 0.0)
    assert [decode(m) for m in client.data_to_send()] == [Data(1, 0, "a"), Data(2, 0, b"b")]
    assert client.events_received() == [SessionEstablished("c2lk", False, 0)]


def test_data_before_welcome_is_protocol_error() -> None:
    """A data frame before the welcome fails the connection with 1002."""
    client = ClientEndpoint()
    client.connection_made(0.0)
    client.receive_message(encode(Data(1, 0, "x")), 0.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == CloseCode.PROTOCOL_ERROR


def test_malformed_frame_becomes_close_event() -> None:
    """Garbage from the peer is a CloseConnection(1002) event, never an exception."""
    client = opened_client()
    client.receive_message("garbage", 0.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002
    assert event.error is not None


def test_input_after_failure_is_ignored() -> None:
    """Once the connection is being failed, further frames are not processed."""
    client = opened_client()
    client.receive_message("garbage", 0.0)
    client.receive_message(encode(Data(1, 0, "x")), 0.0)
    assert not any(isinstance(e, MessageReceived) for e in client.events_received())


def test_resumed_welcome_for_other_session_is_protocol_error() -> None:
    """A welcome that 'resumes' a session the client did not name fails with 1002."""
    client = ClientEndpoint()
    client.connection_made(0.0)
    client.receive_message(welcome(resumed=True), 0.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)


def test_token_rotates_on_every_resume() -> None:
    """Every welcome carries a new token; a token two rotations old no longer resumes."""
    link = open_pair()
    first = link.last_welcome_token
    link.drop()
    link.settle()
    second = link.last_welcome_token
    link.drop()
    link.settle()
    assert len({first, second, link.last_welcome_token}) == 3
    assert not link.app_client.lost
    link.drop()
    link.client._session.token = first  # type: ignore[union-attr]
    link.settle(complete=False)
    assert [lost.reason for lost in link.app_client.lost] == ["token_invalid"]


def test_hellos_number_the_resumes_of_a_session() -> None:
    """Every resume's hello carries the next number, welcomed or not; a new session restarts.

    The server refuses a hello numbered at or below one it served (docs/protocol.md
    §5, late hellos), so a number is never sent twice for a session.
    """
    client = opened_client()

    def reconnect(at: float) -> Hello:
        client.connection_lost(at, 1006)
        client.connection_made(at)
        [frame] = client.data_to_send()
        hello = decode(frame)
        assert isinstance(hello, Hello)
        assert hello.sid == "c2lk"
        return hello

    assert [reconnect(1.0).attempt, reconnect(2.0).attempt] == [1, 2]  # the first unanswered
    client.receive_message(welcome(resumed=True, token="dG9rMg"), 2.0)
    assert reconnect(3.0).attempt == 3  # a resumed session keeps counting
    client.receive_message(welcome(sid="bmV3", reason="expired"), 3.0)
    client.connection_lost(4.0, 1006)
    client.connection_made(4.0)
    [frame] = client.data_to_send()
    assert decode(frame) == Hello("bmV3", "dG9r", "ZXA", 0, attempt=1)  # a new session: 1 again


def test_a_4204_loses_the_session_instead_of_resuming_for_ever() -> None:
    """4204 on our connection: a higher number than ours was served, so give the session up.

    (Resuming again with the next number would be refused again: a retry loop.)
    """
    client = opened_client()
    client.send("unacked", 0.0)
    client.data_to_send()
    client.connection_lost(1.0, 1006)
    client.connection_made(1.0)
    client.data_to_send()
    client.connection_lost(1.5, 4204)
    [lost] = [e for e in client.events_received() if isinstance(e, SessionLost)]
    assert (lost.reason, lost.unacked) == ("superseded", ("unacked",))
    client.connection_made(2.0)
    [frame] = client.data_to_send()
    assert decode(frame) == Hello(rx=0)  # a new session


def test_resume_survives_lost_welcome() -> None:
    """If the welcome with the rotated token is lost, the token held still resumes."""
    link = open_pair()
    link.server_send("x")
    link.drop()
    link.connect()
    link.deliver_c2s()  # the server resumes and rotates the token...
    link.drop()  # ...but the welcome never arrives
    link.settle()
    assert not link.app_client.lost
    assert link.app_client.got == ["x"]


# ---------------------------------------------------------------- sequencing


def test_in_order_delivery() -> None:
    """Messages arrive in order with their text/binary type."""
    link = open_pair()
    for payload in ["one", b"two", "three"]:
        link.server_send(payload)
    link.settle()
    assert link.app_client.got == ["one", b"two", "three"]


def test_duplicate_is_dropped() -> None:
    """A data frame with seq <= rx is dropped and counted, not delivered."""
    client = opened_client()
    frame = encode(Data(1, 0, "x"))
    client.receive_message(frame, 0.0)
    client.receive_message(frame, 0.0)
    delivered = [e for e in client.events_received() if isinstance(e, MessageReceived)]
    assert delivered == [MessageReceived("x")]
    assert client.duplicates == 1


def test_gap_fails_with_sequence_gap_code() -> None:
    """A skipped sequence number fails the connection with 4201 (then resume repairs it)."""
    client = opened_client()
    client.receive_message(encode(Data(2, 0, "x")), 0.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == TetherCloseCode.SEQUENCE_GAP


def test_gap_is_repaired_by_resume() -> None:
    """After a gap the link resumes and every message still arrives exactly once."""
    link = open_pair()
    link.server_send("a")
    link.server_send("b")
    link.s2c.popleft()  # lose frame 1 inside an open connection: a gap
    link.deliver_s2c()
    assert link.app_client.closes[0].code == TetherCloseCode.SEQUENCE_GAP
    link.settle()
    assert link.app_client.got == ["a", "b"]


# ---------------------------------------------------------------------- acks


def test_ack_is_piggybacked() -> None:
    """An outgoing data frame carries the highest sequence received."""
    client = opened_client()
    client.receive_message(encode(Data(1, 0, "x")), 0.0)
    client.send("y", 0.0)
    assert decode(client.data_to_send()[-1]) == Data(1, 1, "y")


def test_standalone_ack_after_count() -> None:
    """After 32 received messages a standalone ack is due at once (the adapter's next pass)."""
    client = opened_client()
    for seq in range(1, 33):
        assert client.data_to_send() == []
        assert client.next_deadline() != 5.0
        client.receive_message(encode(Data(seq, 0, "x")), 5.0)
    assert client.next_deadline() == 5.0
    client.handle_timer(5.0)
    assert [decode(m) for m in client.data_to_send()] == [Ack(32)]


def test_due_ack_rides_on_a_data_frame_sent_first() -> None:
    """A data frame sent before the due ack's timer carries it: no standalone ack follows."""
    client = opened_client(ResumeConfig(ack_messages=1))
    client.receive_message(encode(Data(1, 0, "q")), 5.0)
    assert client.next_deadline() == 5.0
    client.send("r", 5.0)
    assert [decode(m) for m in client.data_to_send()] == [Data(1, 1, "r")]
    client.handle_timer(5.0)
    assert client.data_to_send() == []


def test_standalone_ack_after_bytes() -> None:
    """After 64 KiB received a standalone ack is due at once."""
    client = opened_client()
    client.receive_message(encode(Data(1, 0, b"x" * 65_535)), 0.0)
    assert client.next_deadline() == pytest.approx(0.2)  # a lone message, but 64 KiB: 200 ms
    client.receive_message(encode(Data(2, 0, b"x")), 0.0)
    assert client.next_deadline() == 0.0
    client.handle_timer(0.0)
    assert [decode(m) for m in client.data_to_send()] == [Ack(2)]


def test_standalone_ack_after_delay() -> None:
    """A lone message is acked by the client's 10 s timer; a sparse stream's next one
    brings the ack forward, so one ack covers two messages."""
    client = opened_client()
    client.receive_message(encode(Data(1, 0, "x")), 10.0)
    assert client.next_deadline() == pytest.approx(20.0)
    client.handle_timer(10.2)
    assert client.data_to_send() == []  # not after a server's 0.2 s
    client.receive_message(encode(Data(2, 0, "y")), 15.0)  # the sparse stream's next message
    assert client.next_deadline() == pytest.approx(15.2)
    client.handle_timer(15.1)
    assert client.data_to_send() == []
    client.handle_timer(15.2)
    assert [decode(m) for m in client.data_to_send()] == [Ack(2)]  # one ack for both
    assert client.next_deadline() is None  # nothing left to ack, nothing unacked
    client.receive_message(encode(Data(3, 0, "z")), 20.0)
    client.handle_timer(30.0)  # a lone message again: its own 10 s
    assert [decode(m) for m in client.data_to_send()] == [Ack(3)]


def test_client_acks_a_second_message_promptly() -> None:
    """A second unacked message, or a lone one of 16 KiB, brings a client's 10 s timer to 200 ms.

    (A server whose replay buffer holds few messages must not wait 10 s for room.)
    """
    client = opened_client()
    client.receive_message(encode(Data(1, 0, "x")), 1.0)
    assert client.next_deadline() == pytest.approx(11.0)  # a lone message: the lazy timer
    client.receive_message(encode(Data(2, 0, "x")), 1.3)
    assert client.next_deadline() == pytest.approx(1.5)
    client.handle_timer(1.5)
    assert [decode(m) for m in client.data_to_send()] == [Ack(2)]
    client.receive_message(encode(Data(3, 0, b"x" * (16 * 1024))), 2.0)
    assert client.next_deadline() == pytest.approx(2.2)  # one message, but 16 KiB
    explicit = opened_client(ResumeConfig(ack_delay=3.0))  # a number: never lazy
    for seq in range(1, 4):
        explicit.receive_message(encode(Data(seq, 0, "x")), float(seq))
    assert explicit.next_deadline() == pytest.approx(4.0)  # the first message's + 3 s


def test_client_ack_timer_follows_a_short_server_window() -> None:
    """A server window of 8 s (welcome.window_ms): the client acks 2 s after a message."""
    client = opened_client(ResumeConfig(resume_window=8.0))
    client.receive_message(encode(Data(1, 0, "x")), 1.0)
    assert client.next_deadline() == pytest.approx(3.0)
    other = ClientEndpoint()  # its own window is 120 s; the server's welcome says 8 s
    other.connection_made(0.0)
    other.receive_message(welcome(window_ms=8_000), 0.0)
    other.receive_message(encode(Data(1, 0, "x")), 1.0)
    assert other.next_deadline() == pytest.approx(3.0)


def test_server_acks_a_lone_message_after_200_ms() -> None:
    """The server's timer stays short: its acks tell the client what is safe."""
    server = ServerEndpoint("c2lk", "ZXA")
    server.attach(0.0, token="dG9r", resumed=False)
    server.data_to_send()
    server.receive_message(encode(Data(1, 0, "q")), 10.0)
    assert server.next_deadline() == pytest.approx(10.2)
    server.handle_timer(10.2)
    assert [decode(m) for m in server.data_to_send()] == [Ack(1)]


def test_piggyback_cancels_ack_timer() -> None:
    """Sending data carries the ack, so no standalone ack follows."""
    client = opened_client()
    client.receive_message(encode(Data(1, 0, "x")), 0.0)
    client.send("y", 0.05)
    client.data_to_send()
    client.handle_timer(10.5)  # past the timer the message armed
    assert client.data_to_send() == []


def test_receive_returns_the_delivered_payload() -> None:
    """receive() hands a delivered message back directly; a duplicate gives None."""
    client = opened_client()
    assert client.receive(encode(Data(1, 0, "x")), 0.0) == "x"
    assert client.receive(encode(Data(1, 0, "x")), 0.0) is None
    assert client.receive(encode(Data(2, 0, b"")), 0.0) == b""
    assert client.duplicates == 1
    assert client.events_received() == []


def _open_pair_of(role: str, config: ResumeConfig) -> list[ClientEndpoint | ServerEndpoint]:
    """Two endpoints in the same open state: a client ("client-reporting": reporting acks)
    or a server holding acks until persisted, as the adapters make them."""
    pair: list[ClientEndpoint | ServerEndpoint] = []
    for _ in range(2):
        endpoint: ClientEndpoint | ServerEndpoint
        if role == "server":
            endpoint = ServerEndpoint("c2lk", "ZXA", config, hold_acks=True, report_acks=False)
            endpoint.attach(0.0, token="dG9r", resumed=False)
        else:
            endpoint = opened_client(config, report_acks=role == "client-reporting")
        pair.append(endpoint)
    return pair


def _endpoint_state(endpoint: ClientEndpoint | ServerEndpoint) -> tuple[object, ...]:
    """Everything receive() can change, as one comparable value (drains both lists)."""
    return (
        endpoint.phase,
        endpoint.rx,
        endpoint.durable_rx,
        endpoint.peer_acked,
        endpoint.duplicates,
        [(entry.seq, entry.payload) for entry in endpoint.buffer],
        endpoint.next_deadline(),
        endpoint.wants_ack(),
        [decode(frame) if isinstance(frame, str) else frame for frame in endpoint.data_to_send()],
        endpoint.events_received(),
    )


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(["client", "client-reporting", "server"]),
    sent=st.integers(min_value=0, max_value=4),
    frames=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=6),  # seq (0 and gaps included)
            st.integers(min_value=0, max_value=6),  # ack (beyond what was sent included)
            st.binary(max_size=3),
            st.floats(min_value=0.0, max_value=1.0),  # seconds since the previous frame
        ),
        max_size=8,
    ),
    short=st.booleans(),
)
# Always tried: the count trigger alone (empty payloads), a silent trim, an ack of more
# than was sent, a duplicate then a gap.
@example(role="client", sent=0, frames=[(n, 0, b"", 0.0) for n in (1, 2, 3, 4)], short=False)
@example(role="server", sent=0, frames=[(n, 0, b"", 0.0) for n in (1, 2, 3, 4)], short=False)
@example(role="client", sent=3, frames=[(1, 2, b"x", 0.1), (2, 3, b"", 0.1)], short=False)
@example(role="client-reporting", sent=3, frames=[(1, 2, b"x", 0.1)], short=False)
@example(role="server", sent=1, frames=[(1, 2, b"x", 0.0)], short=False)
@example(
    role="client",
    sent=0,
    frames=[(1, 0, b"a", 0.0), (1, 0, b"a", 0.0), (3, 0, b"", 0.0)],
    short=False,
)
def test_the_fast_path_for_binary_data_leaves_what_the_full_path_leaves(
    role: str,
    sent: int,
    frames: list[tuple[int, int, bytes, float]],
    short: bool,
) -> None:
    """receive() of ``bytes`` skips parse_data()/_on_data() for the usual frame: same outcome.

    The same frames, as ``bytes`` (the inlined path) and as ``bytearray`` (which only
    the full path takes), leave two endpoints in the same state after each frame:
    delivered payloads, rx, acks, replay buffer, deadlines, frames and events, for
    duplicates, gaps, acks of messages never sent and truncated headers alike.
    """
    pair = _open_pair_of(role, ResumeConfig(ack_messages=3, ack_bytes=5))
    for endpoint in pair:
        for index in range(sent):
            endpoint.send(b"s%d" % index, 0.0)
        _endpoint_state(endpoint)
    fast, full = pair
    now = 0.0
    for seq, ack, payload, step in frames:
        now += step
        wire = bytes([0x64]) + seq.to_bytes(8, "big") + ack.to_bytes(8, "big") + payload
        if short:
            wire = wire[:10]
        assert fast.receive(wire, now) == full.receive(bytearray(wire), now)
        assert _endpoint_state(fast) == _endpoint_state(full)
        if role == "server" and fast.rx > fast.durable_rx:
            fast.rx_persisted(fast.rx, now)
            full.rx_persisted(full.rx, now)


@pytest.mark.parametrize("role", ["client", "server"])
def test_the_fast_path_leaves_a_sequence_number_past_max_seq_to_the_full_path(role: str) -> None:
    """At rx == MAX_SEQ the next frame's seq is out of range: refused as the full path does."""
    pair = _open_pair_of(role, CONFIG)
    for endpoint in pair:
        endpoint.rx = MAX_SEQ  # (a session that got that far)
        _endpoint_state(endpoint)
    fast, full = pair
    wire = bytes([0x64]) + (MAX_SEQ + 1).to_bytes(8, "big") + (0).to_bytes(8, "big") + b"x"
    assert fast.receive(wire, 0.0) == full.receive(bytearray(wire), 0.0) == None  # noqa: E711
    assert _endpoint_state(fast) == _endpoint_state(full)
    assert fast.phase is not Phase.OPEN  # failed: seq beyond MAX_SEQ


@pytest.mark.parametrize("role", ["client", "server"])
def test_send_header_numbers_and_keeps_a_message_as_send_does(role: str) -> None:
    """send_header(): the same sequence, ack, buffer and timers as send(); the frame is
    its header followed by the payload instead of a queued frame."""
    pair = _open_pair_of(role, CONFIG)
    for endpoint in pair:
        endpoint.data_to_send()
        endpoint.receive(encode(Data(1, 0, b"in")), 0.0)
    whole, split = pair
    payloads: list[bytes | str] = [b"a", "\u00e9t\u00e9 \u65e5\u672c", b"", "", "c" * 100]
    for index, payload in enumerate(payloads):
        persisted = 1 if index == 1 else None
        seq = whole.send(payload, 0.5, persisted_rx=persisted)
        numbered = split.send_header(payload, 0.5, persisted_rx=persisted)
        assert numbered is not None
        assert numbered[0] == seq
        [frame] = whole.data_to_send()
        if isinstance(payload, str):
            # A text frame's header is ASCII; its payload goes as UTF-8 after it.
            assert isinstance(frame, str)
            assert numbered[1] + payload.encode() == frame.encode()
        else:
            assert numbered[1] + payload == frame
        assert split.data_to_send() == []
        assert _endpoint_state(split) == _endpoint_state(whole)
    # What the frames acknowledged is acknowledged: a duplicate asks for no ack on either.
    for endpoint in pair:
        assert endpoint.receive(encode(Data(1, 0, b"in")), 1.0) is None
    assert _endpoint_state(split) == _endpoint_state(whole)


def test_send_header_declines_when_a_frame_must_go_first_or_the_session_is_not_open() -> None:
    """None, and nothing numbered: a frame already queued (it must go first), or not OPEN."""
    client = opened_client(CONFIG, report_acks=False)
    client.send(b"queued", 0.0)
    assert client.send_header(b"x", 0.0) is None
    assert [entry.payload for entry in client.buffer] == [b"queued"]
    client.data_to_send()
    client.connection_lost(1.0)
    assert client.send_header(b"x", 1.0) is None
    assert [entry.payload for entry in client.buffer] == [b"queued"]


def test_message_before_bad_ack_is_still_delivered_first() -> None:
    """A frame in order whose ack covers nothing sent: delivered, then the connection fails."""
    client = opened_client()
    client.receive_message(encode(Data(1, 5, "x")), 0.0)
    events = client.events_received()
    assert events[0] == MessageReceived("x")
    assert isinstance(events[1], CloseConnection)
    assert events[1].code == 1002


def test_reply_carries_the_persisted_rx_and_no_standalone_ack() -> None:
    """send(persisted_rx=) acks the request in the reply itself, even past the count trigger."""
    server = ServerEndpoint("c2lk", "ZXA", ResumeConfig(ack_messages=1), hold_acks=True)
    server.attach(0.0, token="dG9r", resumed=False)
    server.data_to_send()
    server.receive_message(encode(Data(1, 0, "q")), 0.0)
    assert server.wants_ack()
    server.send("r", 0.0, persisted_rx=1)
    assert [decode(m) for m in server.data_to_send()] == [Data(1, 1, "r")]
    assert not server.wants_ack()
    server.rx_persisted(1, 0.0)  # the store write that carried it
    assert server.data_to_send() == []
    assert server.next_deadline() == pytest.approx(120.0)  # only the stall timer remains


def test_wants_ack_follows_the_count_and_byte_triggers() -> None:
    """wants_ack() is True once the received messages reach a trigger, until an ack goes out."""
    server = ServerEndpoint(
        "c2lk", "ZXA", ResumeConfig(ack_messages=2, ack_bytes=10), hold_acks=True
    )
    server.attach(0.0, token="dG9r", resumed=False)
    server.receive_message(encode(Data(1, 0, "x")), 0.0)
    assert not server.wants_ack()
    server.receive_message(encode(Data(2, 0, "x")), 0.0)
    assert server.wants_ack()
    server.rx_persisted(2, 0.0)
    server.handle_timer(0.0)
    assert decode(server.data_to_send()[-1]) == Ack(2)
    assert not server.wants_ack()
    server.receive_message(encode(Data(3, 0, b"x" * 10)), 0.0)
    assert server.wants_ack()


def test_ack_trims_replay_buffer() -> None:
    """An ack drops the acknowledged messages and reports PeerAcked."""
    client = opened_client()
    for payload in "abc":
        client.send(payload, 0.0)
    client.events_received()
    client.receive_message(encode(Ack(2)), 0.0)
    assert [entry.seq for entry in client.buffer] == [3]
    assert client.events_received() == [PeerAcked(2)]


def test_ack_trims_without_an_event_when_acks_are_not_reported() -> None:
    """report_acks=False (the client adapter): the ack trims the buffer, no PeerAcked."""
    client = opened_client(report_acks=False)
    for payload in "abc":
        client.send(payload, 0.0)
    client.data_to_send()
    client.receive_message(encode(Ack(2)), 0.0)
    assert [entry.seq for entry in client.buffer] == [3]
    assert not client.has_output
    assert client.events_received() == []


def test_piggybacked_ack_trims_without_an_event_when_acks_are_not_reported() -> None:
    """report_acks=False: a data frame's ack trims the buffer and moves peer_acked, silently."""
    client = opened_client(report_acks=False)
    for payload in "abc":
        client.send(payload, 0.0)
    client.data_to_send()
    assert client.receive(encode(Data(1, 2, "x")), 0.0) == "x"
    assert [entry.seq for entry in client.buffer] == [3]
    assert client.peer_acked == 2
    assert client.events_received() == []


def test_piggybacked_ack_of_unsent_message_fails_when_acks_are_not_reported() -> None:
    """report_acks=False: a data frame acking what was never sent is delivered, then fails."""
    client = opened_client(report_acks=False)
    client.send("a", 0.0)
    assert client.receive(encode(Data(1, 2, "x")), 0.0) == "x"
    assert client.peer_acked == 0
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002


def test_ack_of_unsent_message_is_protocol_error() -> None:
    """An ack beyond the last sequence sent fails the connection with 1002."""
    client = opened_client()
    client.send("a", 0.0)
    client.receive_message(encode(Ack(2)), 0.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002


def test_hold_acks_until_persisted() -> None:
    """With hold_acks the server acks only what the store confirmed."""
    server = ServerEndpoint("c2lk", "ZXA", ResumeConfig(ack_messages=1), hold_acks=True)
    server.attach(0.0, token="dG9r", resumed=False)
    server.data_to_send()
    server.receive_message(encode(Data(1, 0, "x")), 0.0)
    server.receive_message(encode(Data(2, 0, "y")), 0.0)
    assert server.data_to_send() == []
    server.rx_persisted(2, 0.0)
    assert server.next_deadline() == 0.0  # due at once
    server.handle_timer(0.0)
    assert [decode(m) for m in server.data_to_send()] == [Ack(2)]


# ------------------------------------------------------------ replay buffer


def test_buffer_full_raises_queue_full() -> None:
    """send() beyond max_messages raises QueueFull; has_room says so first."""
    client = opened_client(ResumeConfig(max_messages=2))
    client.send("a", 0.0)
    client.send("b", 0.0)
    assert not client.has_room("c")
    with pytest.raises(QueueFull):
        client.send("c", 0.0)


def test_overflow_closes_with_documented_code() -> None:
    """overflow() (send_timeout elapsed while full) closes with 4202 to resume."""
    client = opened_client(ResumeConfig(max_messages=1))
    client.send("a", 0.0)
    client.overflow(5.0)
    [event] = client.events_received()
    assert event == CloseConnection(TetherCloseCode.REPLAY_OVERFLOW, "replay buffer full")


def test_unacked_for_window_closes() -> None:
    """A message unacknowledged for resume_window on an open connection closes with 4202."""
    client = opened_client(ResumeConfig(resume_window=10.0))
    client.send("a", 1.0)
    assert client.next_deadline() == pytest.approx(11.0)
    client.handle_timer(11.0)
    [event] = client.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == TetherCloseCode.REPLAY_OVERFLOW


def test_overflow_then_resume_delivers_everything() -> None:
    """An overflow close is followed by a resume that delivers every message once."""
    link = open_pair(ResumeConfig(max_messages=3))
    for n in range(3):
        link.client_send(f"m{n}")
    link.c2s.clear()  # the frames vanish on a stuck path; nobody acks
    link.client.overflow(link.now)
    link.pump()
    assert link.app_client.closes[0].code == TetherCloseCode.REPLAY_OVERFLOW
    link.settle()
    assert link.app_server.got == ["m0", "m1", "m2"]


# ------------------------------------------------------------------- resume


def test_resume_replays_unacked_before_new() -> None:
    """After a reconnect, unacked messages go first, then those queued while away."""
    link = open_pair()
    link.client_send("old")
    link.c2s.clear()
    link.drop()
    link.client_send("new")
    link.connect()
    link.deliver_c2s()  # hello
    frames = [decode(m) for m in list(link.s2c)]
    assert isinstance(frames[0], Welcome)
    assert frames[0].resumed
    link.deliver_s2c()  # welcome: client replays
    assert [decode(m) for m in link.c2s] == [Data(1, 0, "old"), Data(2, 0, "new")]


def test_resumed_event_counts() -> None:
    """Resumed reports the messages replayed in and out."""
    link = open_pair()
    link.client_send("c1")
    link.server_send("s1")
    link.server_send("s2")
    link.c2s.clear()
    link.s2c.clear()
    link.drop()
    link.settle()
    assert link.app_client.resumed == [Resumed(replayed_in=2, replayed_out=1)]
    assert link.app_client.got == ["s1", "s2"]
    assert link.app_server.got == ["c1"]


def test_resumed_welcome_rx_acknowledges_what_the_server_got() -> None:
    """A message the server received but never acked is not re-sent once welcome.rx covers it."""
    client = opened_client()
    client.send("a", 0.0)
    assert [decode(m) for m in client.data_to_send()] == [Data(1, 0, "a")]
    client.connection_lost(1.0)  # the link drops before the server's ack arrives
    client.connection_made(2.0)
    assert [decode(m) for m in client.data_to_send()] == [Hello("c2lk", "dG9r", "ZXA", 0, 1)]
    client.receive_message(welcome(resumed=True, token="bmV3", rx=1), 2.0)
    sent = [decode(m) for m in client.data_to_send()]
    assert not any(isinstance(frame, Data) and frame.seq == 1 for frame in sent)
    assert sent == []
    events = client.events_received()
    assert Resumed(replayed_in=0, replayed_out=0) in events
    assert SessionEstablished("c2lk", True, 0) in events
    assert client.peer_acked == 1
    assert client.phase is Phase.OPEN


def test_server_restores_from_store() -> None:
    """A server endpoint rebuilt from stored state replays what the client lacks."""
    server = ServerEndpoint("c2lk", "ZXA", tx=5, rx=3)
    server.restore(3, [(4, "d"), (5, b"e")], 0.0)
    server.attach(0.0, token="dG9r", resumed=True, peer_rx=4)
    frames = [decode(m) for m in server.data_to_send()]
    assert isinstance(frames[0], Welcome)
    assert (frames[0].rx, frames[0].tx) == (3, 5)
    assert frames[1:] == [Data(5, 3, b"e")]


def test_restore_with_hole_refused() -> None:
    """Stored messages that skip a sequence number are refused."""
    server = ServerEndpoint("c2lk", "ZXA", tx=5)
    with pytest.raises(ValueError, match="skip"):
        server.restore(3, [(4, "d"), (6, "f")], 0.0)


def test_attach_with_impossible_rx_closes() -> None:
    """A hello rx beyond what the server sent closes with 1002 and no welcome."""
    server = ServerEndpoint("c2lk", "ZXA")
    server.send("queued", 0.0)  # never transmitted
    server.attach(0.0, token="dG9r", resumed=True, peer_rx=1)
    assert server.data_to_send() == []
    [event] = server.events_received()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002


# ---------------------------------------------------- outcomes of failed resumes


def test_client_window_expiry_loses_session() -> None:
    """Disconnected past resume_window: SessionLost('expired') with the unacked messages."""
    link = open_pair(ResumeConfig(resume_window=10.0))
    link.client_send("unacked")
    link.c2s.clear()
    link.drop()
    link.advance(10.0)
    assert link.app_client.lost == [SessionLost("expired", ("unacked",))]
    link.connect()
    assert decode(link.c2s[0]) == Hello(rx=0)


def test_failed_handshakes_do_not_extend_window() -> None:
    """The window counts from the last open connection, not from failed handshakes."""
    client = opened_client(ResumeConfig(resume_window=10.0))
    client.connection_lost(0.0)
    client.connection_made(6.0)
    client.connection_lost(7.0)  # no welcome came
    assert client.next_deadline() == pytest.approx(10.0)
    client.handle_timer(10.0)
    assert [type(e) for e in client.events_received()] == [SessionLost]


def test_the_client_keeps_its_session_for_the_servers_window() -> None:
    """welcome.window_ms, not the client's own setting, says how long to try resuming.

    (Before, a client with the default 120 s gave up a session a server with a
    600 s window still held, and what that server had buffered was lost.)
    """
    client = ClientEndpoint(ResumeConfig(resume_window=120.0))
    client.connection_made(0.0)
    client.receive_message(welcome(window_ms=600_000), 0.0)
    client.events_received()
    client.connection_lost(10.0)
    assert client.next_deadline() == pytest.approx(610.0)
    client.handle_timer(200.0)
    assert client.events_received() == []  # still resumable at 200 s
    client.handle_timer(610.0)
    assert [type(e) for e in client.events_received()] == [SessionLost]


def test_server_window_expiry_reported() -> None:
    """The server endpoint reports SessionExpired after the window and refuses sends."""
    server = ServerEndpoint("c2lk", "ZXA", ResumeConfig(resume_window=5.0))
    server.attach(0.0, token="dG9r", resumed=False)
    server.connection_lost(1.0)
    assert server.next_deadline() == pytest.approx(6.0)
    server.handle_timer(6.0)
    assert SessionEnded("expired") in server.events_received()
    with pytest.raises(ConnectionClosedError):
        server.send("late", 6.0)


def test_expired_on_server_gives_fresh_session() -> None:
    """A resume the server refuses as expired: SessionLost, fresh session, no duplicates."""
    link = open_pair(ResumeConfig(resume_window=10.0))
    link.server_send("delivered")
    link.settle()
    link.client_send("unacked")
    link.c2s.clear()
    link.drop()
    link.server.handle_timer(link.now + 10.0)  # type: ignore[union-attr]
    link.pump()
    link.connect()
    link.deliver_c2s()
    link.deliver_s2c()
    [lost] = link.app_client.lost
    assert lost == SessionLost("unknown", ("unacked",))
    assert link.app_client.got == ["delivered"]
    assert link.client.sid == link.server.sid  # type: ignore[union-attr]


def test_forged_token_gets_fresh_session_and_spares_the_real_one() -> None:
    """A forged token is refused (token_invalid) and the real session stays resumable."""
    link = open_pair()
    real = link.client._session
    link.server_send("for the real client")
    link.s2c.clear()
    link.drop()
    forger = ClientEndpoint()
    forger._session = type(real)(real.sid, "Zm9yZ2Vk", real.epoch)  # type: ignore[misc,union-attr]
    forger.connection_made(link.now)
    hello = decode(forger.data_to_send()[0])
    assert isinstance(hello, Hello)
    from tether.tokens import judge_resume

    assert (
        judge_resume(hello, link.candidate(), epoch=link.epoch, principal=None, now=link.now)
        == "token_invalid"
    )
    link.settle()
    assert link.app_client.got == ["for the real client"]
    assert not link.app_client.lost


def test_server_overflow_while_away_refused() -> None:
    """A session the server abandoned (overflow) is refused with 'overflow', never partially."""
    link = open_pair(ResumeConfig(max_messages=2))
    link.server_send("delivered")
    link.settle()
    link.client_send("unacked")
    link.c2s.clear()
    link.drop()
    link.server_send("s1")
    link.server_send("s2")
    assert not link.server_send("s3")  # full while the client is away
    link.abandon_server(LostReason.OVERFLOW)
    link.settle(complete=False)
    assert link.app_client.lost == [SessionLost("overflow", ("unacked",))]
    assert link.app_client.got == ["delivered"]  # s1, s2 never half-delivered
    assert link.app_server.got == []


def test_stale_epoch_refused() -> None:
    """A store that lost its data (new epoch) refuses the resume with epoch_mismatch."""
    link = open_pair()
    link.client_send("unacked")
    link.c2s.clear()
    link.drop()
    link.epoch = "bmV3LWVwb2No"
    link.settle(complete=False)
    assert link.app_client.lost == [SessionLost("epoch_mismatch", ("unacked",))]
    assert link.app_server.got == []


def test_principal_mismatch_refused() -> None:
    """A token presented by another principal is refused like a forged one."""
    link = open_pair()
    link.drop()
    link.principal = "mallory"
    link.settle(complete=False)
    assert [lost.reason for lost in link.app_client.lost] == ["token_invalid"]


def test_takeover_closes_old_connection_finally() -> None:
    """A new connection resuming a live session: the old one is closed with 4901."""
    link = open_pair()
    link.server_send("x")
    link.settle()
    assert link.server is not None
    # The adapter's takeover sequence: close old with 4901, detach, attach the new one.
    link.server.connection_lost(link.now)
    link.server.data_to_send()
    old_client = link.client
    old_client.connection_lost(link.now, TetherCloseCode.TAKEN_OVER)
    [lost] = old_client.events_received()
    assert lost == SessionLost("taken_over", ())
    link.server.attach(link.now, token="bmV3", resumed=True, peer_rx=1)
    frames = [decode(m) for m in link.server.data_to_send()]
    assert frames == [Welcome(True, None, link.server.sid, "bmV3", link.epoch, 0, 1, 120_000)]


def test_attach_while_attached_is_a_local_error() -> None:
    """attach() without detaching the old connection first is refused."""
    server = ServerEndpoint("c2lk", "ZXA")
    server.attach(0.0, token="dG9r", resumed=False)
    with pytest.raises(RuntimeError):
        server.attach(0.0, token="dG9r", resumed=False)


def test_abandoned_session_hands_back_messages() -> None:
    """abandon() ends the server session and returns what the client never acked."""
    server = ServerEndpoint("c2lk", "ZXA")
    server.send("a", 0.0)
    assert server.abandon("overflow") == ("a",)  # type: ignore[arg-type]
    assert server.phase is Phase.CLOSED


def test_goaway_without_resume_loses_session_at_close() -> None:
    """goaway{resume: false}: SessionLost('not_resumable') when the connection closes."""
    link = open_pair()
    link.client_send("unacked")
    link.c2s.clear()
    assert link.server is not None
    link.server.goaway(retry_ms=2000, resume=False)
    link.pump()
    link.deliver_s2c()
    link.drop(CloseCode.SERVICE_RESTART)
    assert link.app_client.lost == [SessionLost("not_resumable", ("unacked",))]
    link.connect()
    assert decode(link.c2s[0]) == Hello(rx=0)


def test_goaway_with_resume_keeps_session() -> None:
    """goaway{resume: true} is reported and the session resumes after 1012."""
    client = opened_client()
    client.receive_message(encode(GoAway(retry_ms=3000, resume=True)), 0.0)
    assert client.events_received() == [GoAwayReceived(3000, True)]
    client.connection_lost(0.0, CloseCode.SERVICE_RESTART)
    client.connection_made(1.0)
    hello = decode(client.data_to_send()[0])
    assert isinstance(hello, Hello)
    assert hello.sid == "c2lk"


def test_normal_close_ends_server_session() -> None:
    """A 1000 close from the client ends the server session at once."""
    server = ServerEndpoint("c2lk", "ZXA")
    server.attach(0.0, token="dG9r", resumed=False)
    server.connection_lost(1.0, CloseCode.NORMAL_CLOSURE)
    assert server.events_received()[-1] == SessionEnded("closed")
    assert server.next_deadline() is None


def test_connection_made_twice_is_a_local_error() -> None:
    """connection_made() without connection_lost() first is refused."""
    client = ClientEndpoint()
    client.connection_made(0.0)
    with pytest.raises(RuntimeError):
        client.connection_made(0.0)


def test_normal_close_ends_client_session() -> None:
    """A 1000 close ends the session: sending afterwards raises ConnectionClosedError."""
    client = opened_client()
    client.connection_lost(0.0, CloseCode.NORMAL_CLOSURE)
    assert client.phase is Phase.CLOSED
    with pytest.raises(ConnectionClosedError):
        client.send("x", 0.0)


# ------------------------------------------------------- the property test

OP_NAMES = [
    "csend",
    "ssend",
    "c2s",
    "s2c",
    "dup_c2s",
    "dup_s2c",
    "drop",
    "connect",
    "tick",
    "overflow",
    "goaway",
    "crash",
]
# (operation, argument): the argument is reduced per operation in run_ops.
OPS = st.tuples(st.sampled_from(OP_NAMES), st.integers(0, 31))


def run_ops(link: Link, ops: list[tuple[str, int]]) -> None:
    """Apply a generated schedule of app sends and link faults."""
    counter = 0
    for op, arg in ops:
        if op in ("csend", "ssend"):
            for _ in range(1 + arg % 3):
                counter += 1
                payload: str | bytes = f"{op[0]}{counter}"
                if counter % 3 == 0:
                    payload = payload.encode()
                (link.client_send if op == "csend" else link.server_send)(payload)
        elif not link.connected and op in ("c2s", "s2c", "dup_c2s", "dup_s2c"):
            # A client with a reconnect policy comes back; frames wait for it.
            link.connect()
        elif op in ("c2s", "dup_c2s"):
            link.deliver_c2s(1 + arg % 5, duplicate=op.startswith("dup"))
        elif op in ("s2c", "dup_s2c"):
            link.deliver_s2c(1 + arg % 5, duplicate=op.startswith("dup"))
        elif op == "drop":
            link.drop([None, 1001, 1006, 1012][arg % 4])
        elif op == "connect" and not link.connected:
            link.connect()
        elif op == "tick":
            link.advance(arg * 0.013)  # 0-403 ms: around the 200 ms ack timer
        elif op == "overflow":
            endpoint = link.client if arg % 2 == 0 else link.server
            if endpoint is not None and len(endpoint.buffer) >= 4:
                endpoint.overflow(link.now)
                link.pump()
        elif op == "crash":
            link.crash_server()  # only with hold_acks (a durable store)
        elif op == "goaway" and link.server is not None and link.server_ready:
            link.server.goaway(retry_ms=1000, resume=True)
            link.pump()


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=20, max_size=100), seed=st.integers(0, 2**32))
def test_exactly_once_in_order_over_faulty_link(ops: list[tuple[str, int]], seed: int) -> None:
    """Drops, duplicates and delays: both directions get every message once, in order."""
    link = Link(ResumeConfig(ack_messages=4, ack_bytes=256), seed=seed)
    link.connect()
    run_ops(link, ops)
    link.settle()
    # Visible with --hypothesis-show-statistics: how often the faults really bit.
    event(f"resumes: {min(len(link.app_client.resumed), 3)}")
    event(f"duplicates dropped: {link.client.duplicates + link.server.duplicates > 0}")  # type: ignore[union-attr]
    assert link.app_server.got == link.expected(link.app_client, link.app_server)
    assert link.app_client.got == link.expected(link.app_server, link.app_client)
    assert not link.app_client.lost
    assert not link.app_server.lost


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=20, max_size=100), seed=st.integers(0, 2**32))
def test_exactly_once_with_tiny_buffers(ops: list[tuple[str, int]], seed: int) -> None:
    """Same property with 4-message buffers, so overflow closes and full buffers happen."""
    link = Link(ResumeConfig(max_messages=4, ack_messages=2, ack_delay=0.05), seed=seed)
    link.connect()
    run_ops(link, ops)
    link.settle()
    assert link.app_server.got == link.expected(link.app_client, link.app_server)
    assert link.app_client.got == link.expected(link.app_server, link.app_client)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=20, max_size=100), seed=st.integers(0, 2**32))
def test_exactly_once_with_durable_acks(ops: list[tuple[str, int]], seed: int) -> None:
    """Same property with a durable server: acks only what is committed, and crashes."""
    link = Link(ResumeConfig(ack_messages=3), seed=seed, hold_acks=True)
    link.connect()
    run_ops(link, ops)
    link.settle()
    assert link.app_server.got == link.expected(link.app_client, link.app_server)
    assert link.app_client.got == link.expected(link.app_server, link.app_client)
    assert not link.app_client.lost


SPEC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_spec_documents_defaults() -> None:
    """The defaults table in docs/protocol.md matches ResumeConfig."""
    assert f"| `resume_window` | {CONFIG.resume_window:.0f} s |" in SPEC
    assert f"| replay buffer count | {CONFIG.max_messages:,} messages |" in SPEC
    assert f"| replay buffer bytes | {CONFIG.max_bytes // 2**20} MiB |" in SPEC
    delay_ms = round(CONFIG.ack_delay_s() * 1000)  # type: ignore[operator]
    lone_s = CONFIG.lone_ack_delay_s(client=True)
    assert (
        f"| standalone ack after | {CONFIG.ack_messages} messages / "
        f"{CONFIG.ack_bytes // 1024} KiB / {delay_ms} ms; a client's lone message "  # type: ignore[operator]
        f"under {LONE_MESSAGE_BYTES // 1024} KiB: {lone_s:.0f} s (at most a quarter of "
        f"`window_ms`) |"
    ) in SPEC
    assert f"| client's wait for `welcome` | {CONFIG.welcome_timeout:.0f} s |" in SPEC


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.binary(max_size=40),
            st.builds(
                lambda seq, ack, p: encode(Data(seq, ack, p)),
                st.integers(1, 6),
                st.integers(0, 6),
                st.one_of(st.text(max_size=4), st.binary(max_size=4)),
            ),
            st.sampled_from([encode(Ack(1)), encode(Hello()), welcome(), '{"type":"goaway"}']),
        ),
        max_size=12,
    )
)
def test_peer_input_never_raises(messages: list[str | bytes]) -> None:
    """Whatever the peer sends, receive_message returns; violations are close events."""
    client = opened_client()
    client.send("mine", 0.0)
    server = ServerEndpoint("c2lk", "ZXA")
    server.attach(0.0, token="dG9r", resumed=False)
    server.send("theirs", 0.0)
    for endpoint in (client, server):
        for message in messages:
            endpoint.receive_message(message, 0.0)
        closes = [e for e in endpoint.events_received() if isinstance(e, CloseConnection)]
        assert len(closes) <= 1


def test_has_output_says_whether_frames_or_events_wait() -> None:
    """has_output: True exactly while data_to_send() or events_received() would return something."""
    client = opened_client()
    assert not client.has_output
    assert client.receive(encode(Data(1, 0, "x")), 0.0) == "x"  # the ack waits for its delay
    assert not client.has_output
    client.handle_timer(client.next_deadline() or 0.0)
    assert client.has_output
    assert [decode(m) for m in client.data_to_send()] == [Ack(1)]
    assert not client.has_output
    client.send("a", 1.0)
    assert client.has_output  # its data frame
    client.data_to_send()
    assert not client.has_output
    client.receive_message(encode(Ack(1)), 1.0)
    assert client.has_output  # PeerAcked
    assert client.events_received() == [PeerAcked(1)]
    assert not client.has_output
