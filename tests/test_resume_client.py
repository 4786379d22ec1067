"""``TetherV1ClientLayer``: the client's tether.v1 glue, over an in-memory fake transport.

One test (marked ``integration``) runs a real client and server on loopback through a
forwarder that holds the server's bytes after the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path

import pytest
from tests.support.earlytimers import EarlyTimerLoop
from tests.support.eventually import eventually
from tests.support.rawws import OP_CLOSE, read_client_frame
from tests.test_session import FakeTransport

import tether
import tether.asyncio.resume_client as resume_client_module
from tether.asyncio.engine import ClosedInfo, Message, TransportClosed
from tether.asyncio.resume_client import NO_WELCOME_CLOSE_TIMEOUT, TetherV1ClientLayer
from tether.asyncio.session import Session
from tether.backoff import BackoffConfig
from tether.events import SessionLost
from tether.exceptions import ProtocolError
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
    assert deadline == pytest.approx(11.0)  # a client's ack_delay: 10 s ("auto")
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


class _UnansweredClose(FakeTransport):
    """A tether.v1 connection whose peer never answers: no welcome, no Close frame back."""

    def __init__(self) -> None:
        super().__init__()
        self.subprotocol = "tether.v1"
        self.aborted = False

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        self.close_calls.append((code, reason))
        await asyncio.get_running_loop().create_future()  # the answer never comes
        raise AssertionError("unreachable")

    def abort(self) -> None:
        self.aborted = True
        super().abort()


async def test_missing_welcome_sends_4203_then_aborts_without_waiting_for_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No welcome: a 4203 Close frame goes out, its answer is awaited briefly, then abort."""
    monkeypatch.setattr(resume_client_module, "NO_WELCOME_CLOSE_TIMEOUT", 0.05)
    layer = TetherV1ClientLayer(ResumeConfig(welcome_timeout=0.05))
    transport = _UnansweredClose()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProtocolError, match=r"no welcome within 0\.05 s") as caught:
        await layer.opened(transport)
    assert caught.value.close_code == 4203
    assert transport.close_calls == [(4203, "no welcome")]
    assert transport.aborted
    assert loop.time() - started < 1.0


def test_docs_state_the_bound_on_the_4203_close() -> None:
    """docs/protocol.md and docs/client.md give NO_WELCOME_CLOSE_TIMEOUT as it is."""
    docs = Path(__file__).parent.parent / "docs"
    shown = f"{NO_WELCOME_CLOSE_TIMEOUT:g} s"
    assert f"most **{shown}** (`resume_client.NO_WELCOME_CLOSE_TIMEOUT`" in (
        docs / "protocol.md"
    ).read_text(encoding="utf-8")
    assert f"awaited for at most {shown} (or `close_timeout` if shorter)" in (
        docs / "client.md"
    ).read_text(encoding="utf-8")


class _HoldingForwarder:
    """A TCP forwarder that, while ``holding``, passes the server's HTTP upgrade answer and
    then holds the server's bytes: the client's hello reaches the server, the welcome
    never reaches the client (and neither does any answer to the client's Close frame).

    For each connection it records how long the client kept it (from the accept to the
    client's end of it) and the close codes of the client's Close frames.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.holding = True
        self.lifetimes: list[float] = []
        self.client_close_codes: list[list[int | None]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port
        )
        down = asyncio.create_task(self._down(upstream_reader, writer, hold=self.holding))
        frames = asyncio.StreamReader()  # what the client sent after its upgrade request
        request = b""
        try:
            while data := await reader.read(65536):
                upstream_writer.write(data)
                if b"\r\n\r\n" not in request:
                    request += data
                    data = request.partition(b"\r\n\r\n")[2]
                frames.feed_data(data)
        except ConnectionError:
            pass  # an abort (RST) ends it as well as a FIN
        self.lifetimes.append(loop.time() - accepted)
        frames.feed_eof()
        codes: list[int | None] = []
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                frame = await read_client_frame(frames)
                if frame.opcode == OP_CLOSE:
                    codes.append(frame.close_code)
        self.client_close_codes.append(codes)
        down.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await down
        for end in (writer, upstream_writer):
            end.transport.abort()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        if hold:
            with contextlib.suppress(asyncio.IncompleteReadError):
                writer.write(await reader.readuntil(b"\r\n\r\n"))  # the 101 answer
            await asyncio.get_running_loop().create_future()  # then nothing, until cancelled
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()  # the server's end reaches the client, which then closes


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_welcome_held_by_the_path_fails_each_attempt_without_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A path that holds the server's data after the upgrade: each attempt closes with 4203
    and ends within welcome_timeout + NO_WELCOME_CLOSE_TIMEOUT, not + close_timeout.

    (Before, the 4203 close waited for the server's answer, which the path held, for the
    whole close_timeout: 10 s + 10 s per attempt with the defaults.) Once the path heals,
    the session opens and every message is echoed exactly once.
    """
    welcome_timeout, close_timeout = 0.3, 5.0

    async def echo(session: Session) -> None:
        async for message in session:
            await session.send(message)

    server = await tether.serve(echo, "127.0.0.1", 0, heartbeat=None, close_timeout=2.0).start()
    forwarder = _HoldingForwarder(server.port)
    await forwarder.start()
    conn = tether.connect(
        f"ws://127.0.0.1:{forwarder.port}/",
        resume=ResumeConfig(welcome_timeout=welcome_timeout),
        close_timeout=close_timeout,
        heartbeat=None,
        backoff=BackoffConfig(base=0.02, cap=0.05),
    )

    async def connected() -> tether.ClientConnection:
        return await conn

    caplog.set_level(logging.INFO, logger="tether.client")
    opening = asyncio.create_task(connected())
    try:
        await eventually(lambda: len(forwarder.lifetimes) >= 2, 15, "two stalled attempts")
        forwarder.holding = False
        await asyncio.wait_for(opening, 10)
        for lifetime in forwarder.lifetimes[:2]:
            assert welcome_timeout <= lifetime < welcome_timeout + NO_WELCOME_CLOSE_TIMEOUT + 0.7
        assert forwarder.client_close_codes[:2] == [[4203], [4203]]  # the server was told
        assert f"no welcome within {welcome_timeout} s" in caplog.text
        sent = [f"m{n}" for n in range(50)]
        for message in sent:
            await conn.send(message)
        echoed = [await asyncio.wait_for(conn.recv(), 5) for _ in sent]
        assert echoed == sent
    finally:
        opening.cancel()
        with contextlib.suppress(BaseException):
            await opening
        await conn.close()
        await forwarder.stop()
        await server.shutdown()


@pytest.mark.integration
async def test_a_sparse_stream_makes_one_timer_per_ack_and_keeps_the_heartbeat() -> None:
    """Message in, ack after ack_delay, heartbeat on time: the heartbeat's timer is kept.

    Each message received sets an ack deadline before the heartbeat's: the heartbeat's
    timer is kept aside meanwhile (not cancelled and made again after the ack), so the
    client makes one timer per message; and the pings still go out every interval.
    """
    count, gap = 12, 0.03

    async def ticker(session: Session) -> None:
        for n in range(count):
            await session.send(f"tick {n}")
            await asyncio.sleep(gap)
        async for _ in session:
            pass

    server = await tether.serve(ticker, "127.0.0.1", 0, heartbeat=None).start()
    conn = tether.connect(
        f"ws://127.0.0.1:{server.port}/",
        resume=ResumeConfig(ack_delay=0.005),
        heartbeat=tether.Heartbeat(interval=0.1, timeout=1.0),
    )
    made: list[float] = []
    try:
        await conn
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counting_call_at(when: float, callback: object, *args: object, **kw: object) -> object:
            if callback == conn._on_timer:
                made.append(when)
            return call_at(when, callback, *args, **kw)  # type: ignore[arg-type]

        loop.call_at = counting_call_at  # type: ignore[assignment,method-assign]
        started = loop.time()
        try:
            received = [await asyncio.wait_for(conn.recv(), 5) for _ in range(count)]
        finally:
            del loop.call_at
        pings = (loop.time() - started) / 0.1 + 1
        assert received == [f"tick {n}" for n in range(count)]
        assert conn.latency is not None  # pings went out (and were answered) meanwhile
        # One per ack, one more per ping: before, the heartbeat's timer was made again
        # after every ack (two per message).
        assert len(made) <= count + pings + 1
    finally:
        await conn.close()
        await server.shutdown()


@pytest.mark.integration
def test_a_timer_run_before_its_deadline_still_handles_it() -> None:
    """The sparse stream above on a loop whose timers run early (as uvloop's can): still
    one timer per ack.

    (Before: the client's timer read loop.time(), found nothing due and was set again for
    the same deadline, which, already passed for the loop, ran it again at once: on uvloop
    ~20 timers per ack, 207 for the 12 messages.)
    """
    with asyncio.Runner(loop_factory=EarlyTimerLoop) as runner:
        runner.run(test_a_sparse_stream_makes_one_timer_per_ack_and_keeps_the_heartbeat())
