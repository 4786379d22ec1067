"""The engine interface's default behaviour (``tether.asyncio.engine.Transport``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest

from tether.asyncio.engine import ClosedInfo, Message, PongHandler, Transport, TransportClosed
from tether.asyncio.websockets_client import translate
from tether.asyncio.websockets_engine import WebsocketsTransport
from tether.reconnect import FailureKind

pytestmark = pytest.mark.timeout(10)


class ClosingTransport(Transport):
    """Only wait_closed() works: it returns once the test calls ``finish``."""

    def __init__(self) -> None:
        self.subprotocol = None
        self.remote_address = None
        self.headers = {}
        self._done: asyncio.Future[ClosedInfo] = asyncio.get_running_loop().create_future()

    def finish(self, info: ClosedInfo) -> None:
        self._done.set_result(info)

    async def send(self, message: Message) -> None:
        raise AssertionError("not used")

    async def recv(self) -> Message:
        raise AssertionError("not used")

    async def ping(self, payload: bytes) -> None:
        raise AssertionError("not used")

    def on_pong(self, handler: PongHandler) -> None:
        raise AssertionError("not used")

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        raise AssertionError("not used")

    def abort(self) -> None:
        raise AssertionError("not used")

    async def wait_closed(self) -> ClosedInfo:
        return await asyncio.shield(self._done)

    @property
    def closed(self) -> ClosedInfo | None:
        return self._done.result() if self._done.done() else None


async def test_default_close_callback_is_called_once_with_how_it_ended() -> None:
    """An engine without its own add_close_callback still tells of the close, once."""
    transport = ClosingTransport()
    seen: list[ClosedInfo] = []
    transport.add_close_callback(seen.append)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == []
    info = ClosedInfo(1001, "away", clean=True)
    transport.finish(info)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [info]


async def test_websockets_transport_keeps_reporting_the_end_after_a_refused_message() -> None:
    """A message refused half-way (too many fragments -> 1009) ends recv() for good.

    The rest of its frames are still queued in websockets; asking it again used to
    raise an AssertionError (a continuation frame first) instead of the close.
    """
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection, serve

    async def flood(connection: ServerConnection) -> None:
        # 5,000 one-byte fragments: over websockets' 4,096-fragment limit.
        await connection.send(b"x" for _ in range(5000))
        await connection.wait_closed()

    async with serve(flood, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        # The server is still busy sending: do not wait 10 s for its Close.
        async with ws_connect(
            f"ws://127.0.0.1:{port}", compression=None, close_timeout=0.5
        ) as connection:
            transport = WebsocketsTransport(connection)
            with pytest.raises(TransportClosed) as first:
                await transport.recv()
            assert first.value.info.sent_code == 1009
            with pytest.raises(TransportClosed) as second:
                await transport.recv()
            assert second.value.info.sent_code == 1009


@contextlib.asynccontextmanager
async def echo_pair() -> AsyncIterator[WebsocketsTransport]:
    """A websockets echo server on loopback and a WebsocketsTransport connected to it."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with ws_connect(f"ws://127.0.0.1:{port}", compression=None) as connection:
            yield WebsocketsTransport(connection)


async def test_write_now_writes_whole_messages_of_either_type_at_once() -> None:
    """write_now(): True, and the peer gets each message with its type; no await needed."""
    async with echo_pair() as transport:
        assert transport.write_now("text é")
        assert transport.write_now(b"\x00bin")
        assert await transport.recv() == "text é"
        assert await transport.recv() == b"\x00bin"


async def test_send_waits_while_the_write_buffer_is_paused() -> None:
    """Over the high-water mark write_now() declines and send() waits for the drain.

    Pausing is what asyncio's transport does to its protocol when the buffer goes
    over the limit; resume_writing() is what it does once under the low mark.
    """
    async with echo_pair() as transport:
        connection = transport.connection
        connection.pause_writing()
        assert not transport.write_now("held")
        sending = asyncio.ensure_future(transport.send("waits"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sending.done()
        connection.resume_writing()
        await asyncio.wait_for(sending, 5)
        assert await transport.recv() == "waits"  # "held" was never written


async def test_write_now_declines_once_closing_and_send_reports_the_close() -> None:
    """After close(): write_now() writes nothing, send() raises TransportClosed."""
    async with echo_pair() as transport:
        info = await transport.close(1000)
        assert info.sent_code == 1000
        assert not transport.write_now("late")
        with pytest.raises(TransportClosed):
            await transport.send("late")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), FailureKind.TLS),
        (ssl.SSLError(1, "wrong version number"), FailureKind.TLS),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), FailureKind.NETWORK),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), FailureKind.NETWORK),
        (ConnectionResetError(104, "Connection reset by peer"), FailureKind.NETWORK),
    ],
)
def test_a_refused_tls_handshake_is_told_from_a_cut_connection(
    exc: BaseException, kind: FailureKind
) -> None:
    """Refused (certificate, version): TLS, i.e. 1015; cut during it (EOF, reset): network."""
    failure = translate(exc)
    assert failure is not None
    assert failure.kind is kind
