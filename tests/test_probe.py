"""tether.asyncio.probe against real websockets servers (and the chaos proxy) on loopback."""

from __future__ import annotations

import asyncio
import http
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.loop_errors import loop_errors  # noqa: F401 - autouse fixture
from tests.support.tls import self_signed_server_context
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tether.asyncio.chaos import ChaosProxy
from tether.asyncio.probe import ProbeError, find_idle_limit, probe
from tether.exceptions import ConfigurationError
from tether.idlesearch import IdleSearchConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _port(server: Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with serve(_echo, "127.0.0.1", 0, ping_interval=None) as server:
        yield _port(server)


async def test_report_describes_the_connection(echo_port: int) -> None:
    """The report has the handshake time, Server header, extensions and N ping RTTs."""
    report = await probe(f"ws://127.0.0.1:{echo_port}/", pings=3)
    assert report.handshake_ms > 0
    assert report.server is not None
    assert "websockets" in report.server
    assert report.extensions == ["permessage-deflate"]
    assert report.pings.sent == 3
    assert report.pings.answered == 3
    assert report.pings.min_ms is not None
    assert report.pings.max_ms is not None
    assert report.pings.min_ms <= (report.pings.median_ms or 0) <= report.pings.max_ms
    assert (report.close.by, report.close.code, report.close.clean) == ("client", 1000, True)


async def test_negotiated_subprotocol_is_reported() -> None:
    """The subprotocol the server picks from those offered appears in the report."""
    async with serve(_echo, "127.0.0.1", 0, subprotocols=["chat.v2"]) as server:
        report = await probe(
            f"ws://127.0.0.1:{_port(server)}/", pings=0, subprotocols=["chat.v1", "chat.v2"]
        )
    assert report.subprotocol == "chat.v2"


async def test_no_compression_offered_means_no_extension(echo_port: int) -> None:
    """Without offering permessage-deflate, no extension is negotiated."""
    report = await probe(f"ws://127.0.0.1:{echo_port}/", pings=0, compression=False)
    assert report.extensions == []


async def test_server_close_is_reported_with_explanation() -> None:
    """A server that closes with 1008 is reported: code, reason, 'by server', explanation."""

    async def reject(ws: ServerConnection) -> None:
        await ws.close(1008, "no token")

    async with serve(reject, "127.0.0.1", 0) as server:
        report = await probe(f"ws://127.0.0.1:{_port(server)}/", pings=3, ping_timeout=1)
    assert report.close.by == "server"
    assert report.close.code == 1008
    assert report.close.reason == "no token"
    assert report.close.clean
    assert "1008" in report.close.explanation


async def test_server_dropping_the_connection_is_1006() -> None:
    """A server that drops TCP without a Close frame: 1006, not clean, by "path".

    (Without a Close frame the probe cannot tell a server's drop from the path's.)
    """

    async def drop(ws: ServerConnection) -> None:
        assert ws.transport is not None
        ws.transport.abort()

    async with serve(drop, "127.0.0.1", 0) as server:
        report = await probe(f"ws://127.0.0.1:{_port(server)}/", pings=2, ping_timeout=1)
    assert report.close.by == "path"
    assert report.close.code == 1006
    assert not report.close.clean


async def test_http_error_at_handshake_shows_the_status() -> None:
    """A 403 answer to the upgrade raises ProbeError(kind='http', status=403)."""

    def forbid(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(http.HTTPStatus.FORBIDDEN, "go away\n")

    async with serve(_echo, "127.0.0.1", 0, process_request=forbid) as server:
        with pytest.raises(ProbeError) as caught:
            await probe(f"ws://127.0.0.1:{_port(server)}/")
    assert caught.value.kind == "http"
    assert caught.value.status == 403
    assert "403" in str(caught.value)


async def test_refused_connection() -> None:
    """Nothing listening: ProbeError(kind='refused')."""
    async with serve(_echo, "127.0.0.1", 0) as server:
        port = _port(server)
    with pytest.raises(ProbeError) as caught:
        await probe(f"ws://127.0.0.1:{port}/")
    assert caught.value.kind == "refused"


async def test_tls_failure(echo_port: int) -> None:
    """wss:// to a server that does not speak TLS: ProbeError(kind='tls')."""
    with pytest.raises(ProbeError) as caught:
        await probe(f"wss://127.0.0.1:{echo_port}/", open_timeout=3)
    assert caught.value.kind == "tls"


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate (made by openssl)."""
    return self_signed_server_context(tmp_path)


async def test_untrusted_certificate_is_a_tls_failure(self_signed: ssl.SSLContext) -> None:
    """wss:// to a server with a self-signed certificate: ProbeError(kind='tls'), verify failed."""
    context = self_signed
    async with serve(_echo, "127.0.0.1", 0, ssl=context) as server:
        with pytest.raises(ProbeError) as caught:
            await probe(f"wss://127.0.0.1:{_port(server)}/", open_timeout=3)
    assert caught.value.kind == "tls"
    assert "certificate" in str(caught.value).lower()


async def test_silent_server_times_out() -> None:
    """A TCP server that never answers the upgrade: ProbeError(kind='timeout')."""
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    try:
        with pytest.raises(ProbeError) as caught:
            await probe(f"ws://127.0.0.1:{_port(server)}/", open_timeout=0.5)  # type: ignore[arg-type]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.kind == "timeout"


async def test_http_url_is_a_configuration_error() -> None:
    """An http:// URL is refused before any connection is made."""
    with pytest.raises(ConfigurationError, match="ws or wss"):
        await probe("http://127.0.0.1:1/")


@pytest.mark.parametrize("name", ["a b", ""])
async def test_a_subprotocol_that_is_not_a_token_is_a_configuration_error(name: str) -> None:
    """probe() and find_idle_limit() refuse it before any connection (was a raw ValueError)."""
    with pytest.raises(ConfigurationError, match="is not a valid name"):
        await probe("ws://127.0.0.1:1/", subprotocols=[name])
    with pytest.raises(ConfigurationError, match="is not a valid name"):
        await find_idle_limit(
            "ws://127.0.0.1:1/", IdleSearchConfig(max_idle=1.0), subprotocols=[name]
        )


async def test_idle_search_finds_an_active_idle_kill(echo_port: int) -> None:
    """Behind a proxy killing idle connections after 1 s, the limit is 1 s within resolution."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), idle_timeout=1.0) as proxy:
        result = await find_idle_limit(
            f"ws://127.0.0.1:{proxy.port}/",
            IdleSearchConfig(max_idle=4, resolution=0.25, parallel=3, first_hold=0.5),
            pong_timeout=0.5,
        )
    assert result.found
    assert result.limit == pytest.approx(1.0, abs=0.25)
    assert result.close_code == 1006
    assert result.kill == "closed"
    assert result.recommended_heartbeat <= 0.5


@pytest.mark.parametrize("attempt", range(3))
async def test_a_kill_as_the_hold_ends_is_a_kill_not_a_silent_drop(
    echo_port: int, attempt: int
) -> None:
    """A path that kills at 1 s, a trial that holds exactly 1 s: its close is awaited.

    (Before, the ping sent when the hold ended met the reset on its way, the trial
    counted as a silent drop at 1 s, and in 4 runs of 10 the search ended at once
    with "0.5 s ± 0.5 s, silently dropped", recommending a 0.1 s heartbeat.)
    """
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), idle_timeout=1.0) as proxy:
        result = await find_idle_limit(
            f"ws://127.0.0.1:{proxy.port}/",
            IdleSearchConfig(max_idle=10, resolution=0.25, parallel=4, first_hold=1.0),
            pong_timeout=0.5,
        )
    assert result.kill == "closed"
    assert result.limit == pytest.approx(1.0, abs=0.25)
    assert result.recommended_heartbeat >= 0.4


async def test_a_kill_just_past_the_longest_hold_is_no_limit(echo_port: int) -> None:
    """A path killing at 2.05 s, a search up to 2 s: no limit, nothing killed.

    (The wait for a close on its way after a hold does not apply to the longest
    hold: it asks only whether max_idle is survived. With it, such a close made a
    limit "just under 2 s", or "not found" with kill "closed".)
    """
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), idle_timeout=2.05) as proxy:
        result = await find_idle_limit(
            f"ws://127.0.0.1:{proxy.port}/",
            IdleSearchConfig(max_idle=2, resolution=0.25, parallel=4, first_hold=0.5),
            pong_timeout=0.5,
        )
    assert (result.found, result.kill, result.close_code) == (False, None, None)


async def test_a_server_that_closes_at_once_is_named_even_without_pings() -> None:
    """--pings 0: the server's own close is reported as the server's.

    (Before, the probe's closing handshake answered it and it was reported as the
    client's, so the idle search ran against the server's own policy.)
    """

    async def closes(ws: ServerConnection) -> None:
        await ws.close(1008, "go away")

    async with serve(closes, "127.0.0.1", 0) as server:
        report = await probe(f"ws://127.0.0.1:{_port(server)}/", pings=0)
    assert (report.close.by, report.close.code, report.close.reason) == (
        "server",
        1008,
        "go away",
    )


async def test_a_link_that_dies_after_the_pings_began_is_not_a_client_close(
    echo_port: int,
) -> None:
    """Blackholed while pinging: the unanswered ping, then 1006, is the path's doing."""
    async with ChaosProxy(
        ("127.0.0.1", 0), ("127.0.0.1", echo_port), blackhole_after=0.3, latency_ms=50
    ) as proxy:
        report = await probe(f"ws://127.0.0.1:{proxy.port}/", pings=20, ping_timeout=0.5)
    assert report.pings.answered < report.pings.sent
    assert (report.close.by, report.close.code, report.close.clean) == ("path", 1006, False)


async def test_idle_search_finds_a_silent_drop(echo_port: int) -> None:
    """A path that silently drops connections after 1 s is bracketed by pings after the hold."""
    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), blackhole_after=1.0) as proxy:
        result = await find_idle_limit(
            f"ws://127.0.0.1:{proxy.port}/",
            IdleSearchConfig(max_idle=2.5, resolution=0.5, parallel=4, first_hold=0.5),
            pong_timeout=0.4,
        )
    assert result.found
    assert result.converged
    assert result.high is not None
    assert result.low < 1.05
    assert result.high > 0.95
    assert result.high - result.low <= 0.5
    assert result.kill == "silent"


async def test_idle_search_reports_no_limit(echo_port: int) -> None:
    """Straight to a server without an idle limit: no limit up to max_idle, in one batch."""
    messages: list[str] = []
    result = await find_idle_limit(
        f"ws://127.0.0.1:{echo_port}/",
        IdleSearchConfig(max_idle=1.0, resolution=0.25, parallel=2, first_hold=0.5),
        pong_timeout=0.5,
        on_progress=messages.append,
    )
    assert not result.found
    assert result.converged
    assert result.low == 1.0
    assert result.batches == 1
    assert result.server_traffic == 0
    assert messages[0].startswith("batch 1")


async def test_idle_search_notices_a_server_that_pings() -> None:
    """A server pinging every 0.2 s makes the trials busy, and the result says so."""
    async with serve(_echo, "127.0.0.1", 0, ping_interval=0.2) as server:
        result = await find_idle_limit(
            f"ws://127.0.0.1:{_port(server)}/",
            IdleSearchConfig(max_idle=0.6, resolution=0.25, parallel=1, first_hold=0.6),
            pong_timeout=0.5,
        )
    assert not result.found
    assert result.server_traffic == 1


async def test_idle_search_connections_send_nothing() -> None:
    """Trials neither ping nor send data while idle: the server sees no frame but the final ping."""
    received: list[object] = []

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)

    async with serve(record, "127.0.0.1", 0, ping_interval=None) as server:
        await find_idle_limit(
            f"ws://127.0.0.1:{_port(server)}/",
            IdleSearchConfig(max_idle=0.5, resolution=0.25, parallel=1, first_hold=0.5),
            pong_timeout=0.5,
        )
    assert received == []


async def test_trials_failing_together_raise_one_probe_error_and_log_nothing() -> None:
    """Every trial of a batch refused at once: ProbeError; each trial's exception is read.

    (Before, only the first was: asyncio logged "Task exception was never retrieved"
    with a traceback for each other one, 100 lines on the CLI's stderr; the loop_errors
    fixture fails the test on that.)
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # (closed again: nothing listens there)
    config = IdleSearchConfig(max_idle=8, parallel=4, first_hold=1.0)
    with pytest.raises(ProbeError) as caught:
        await find_idle_limit(f"ws://127.0.0.1:{port}/", config, open_timeout=2)
    assert caught.value.kind == "refused"


async def test_idle_search_open_failure_raises(echo_port: int) -> None:
    """A trial that cannot connect stops the search with ProbeError."""

    def unavailable(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")

    async with serve(_echo, "127.0.0.1", 0, process_request=unavailable) as server:
        with pytest.raises(ProbeError) as caught:
            await find_idle_limit(
                f"ws://127.0.0.1:{_port(server)}/",
                IdleSearchConfig(max_idle=1, parallel=2),
            )
    assert caught.value.status == 503
