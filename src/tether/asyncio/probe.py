"""Measure a WebSocket endpoint and the path to it (``tether probe``).

:func:`probe` opens one plain WebSocket connection (any server: no tether
protocol needed) and reports the handshake time, what was negotiated, the
``Server`` header, ping round-trip times and how the connection closed.

:func:`find_idle_limit` runs the sans-I/O :class:`tether.idlesearch.IdleSearch`:
it holds *idle* connections (websockets' keepalive off, no data, no pings) in
parallel batches and watches when the path kills them, to find a load balancer's
or proxy's idle limit.

Failures raise :class:`tether.ProbeError` (with ``kind`` and, for an HTTP refusal,
the ``status``); a bad URL raises :class:`tether.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import statistics
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..exceptions import ConfigurationError, ProbeError
from ..idlesearch import IdleSearch, IdleSearchConfig, IdleSearchResult, Observation, Outcome
from ..knowledge import summary
from .engine import TransportClosed
from .waiters import bounded
from .websockets_client import check_subprotocols, check_url
from .websockets_engine import WebsocketsTransport

__all__ = [
    "CloseReport",
    "PingStats",
    "ProbeError",
    "ProbeReport",
    "find_idle_limit",
    "probe",
    "validate_url",
]

#: Seconds a trial waits for the pong that proves an idle connection survived.
DEFAULT_PONG_TIMEOUT = 2.0
#: Seconds allowed for our closing handshake before the connection is dropped.
_CLOSE_TIMEOUT = 2.0
#: Seconds allowed to close a trial that became moot (its link may be dead).
_MOOT_CLOSE_TIMEOUT = 0.5
#: Bounds of the wait, after a hold, for a close already on its way (the handshake time).
_KILL_GRACE_MIN_S = 0.05
_KILL_GRACE_MAX_S = 0.5


@dataclass(frozen=True)
class PingStats:
    """Round-trip times of WebSocket pings, in milliseconds.

    Attributes:
        sent: pings sent.
        answered: pongs received in time.
        min_ms / median_ms / max_ms: over the answered pings (None if none).
    """

    sent: int
    answered: int
    min_ms: float | None
    median_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class CloseReport:
    """How the probe connection ended.

    Attributes:
        by: ``"server"`` if the server closed it first (its Close frame came first),
            ``"path"`` if the connection died without a Close frame while the probe
            pinged (reset, or a ping unanswered: a dead or half-open link),
            ``"client"`` if the probe closed it when done.
        code: the close code; 1006 when no Close frame arrived.
        reason: the reason the server sent.
        clean: True when a Close frame was received.
        explanation: one line about the code from tether's knowledge base.
    """

    by: str
    code: int
    reason: str
    clean: bool
    explanation: str


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`probe` measured.

    Attributes:
        url: the URL probed.
        handshake_ms: TCP connect + TLS + HTTP upgrade, in milliseconds.
        subprotocol: the subprotocol the server chose, if any.
        extensions: names of the negotiated extensions.
        server: the ``Server`` response header, if sent.
        pings: ping round-trip statistics.
        close: how the connection ended.
        idle_search: the idle-limit search result, when one was run.
        idle_search_elapsed_s: how long the search took, in seconds.
    """

    url: str
    handshake_ms: float
    subprotocol: str | None
    extensions: list[str]
    server: str | None
    pings: PingStats
    close: CloseReport
    idle_search: IdleSearchResult | None = None
    idle_search_elapsed_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the ``--json`` output)."""
        return asdict(self)


def validate_url(url: str) -> None:
    """Check that ``url`` is a ``ws://`` or ``wss://`` URL with a host, as connect() does.

    Raises:
        ConfigurationError: it is not.
    """
    try:
        check_url(url)
    except ConfigurationError as exc:
        # (Spaces and control characters included: "ws://h/a b" split the request line.)
        raise ConfigurationError(f"not a WebSocket URL: {exc}") from exc


class _WatchedConnection(ClientConnection):
    """A websockets client connection that counts what the server sends unprompted.

    A server's pings or messages reset an intermediary's idle timer, so an idle
    trial must know whether its connection really stayed idle.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer_frames = 0

    def process_event(self, event: Event) -> None:
        unprompted = isinstance(event, Frame) and (
            event.opcode is Opcode.PING or event.opcode in DATA_OPCODES
        )
        if unprompted and self.response is not None:
            self.peer_frames += 1
        super().process_event(event)


async def _open(
    url: str, *, open_timeout: float, subprotocols: Sequence[str] | None, compression: bool
) -> _WatchedConnection:
    """Open a connection with websockets' keepalive off; translate failures."""
    try:
        conn = await connect(
            url,
            open_timeout=open_timeout,
            # The probe decides when to ping: an idle connection must stay idle.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=_CLOSE_TIMEOUT,
            subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
            compression="deflate" if compression else None,
            # Measure the path to the server itself, not through an HTTP proxy from the environment.
            proxy=None,
            max_size=None,
            create_connection=_WatchedConnection,
        )
        assert isinstance(conn, _WatchedConnection)
        return conn
    except InvalidStatus as exc:
        response = exc.response
        phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise ProbeError(
            "http",
            f"HTTP {response.status_code}{phrase}: the server refused the WebSocket upgrade",
            url=url,
            status=response.status_code,
        ) from exc
    except InvalidHandshake as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ProbeError(
            "handshake", f"invalid WebSocket handshake: {exc}{cause}", url=url
        ) from exc
    except ssl.SSLError as exc:  # before OSError: SSLError is an OSError
        raise ProbeError("tls", f"TLS handshake failed: {exc}", url=url) from exc
    except ConnectionRefusedError as exc:
        raise ProbeError("refused", f"connection refused: {exc}", url=url) from exc
    except socket.gaierror as exc:
        raise ProbeError("unreachable", f"cannot resolve host: {exc}", url=url) from exc
    except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct classes before 3.11
        raise ProbeError(
            "timeout", f"no WebSocket handshake within {open_timeout:g} s", url=url
        ) from exc
    except OSError as exc:
        detail = str(exc) or type(exc).__name__
        uri = parse_uri(url)
        if uri.secure and await _tcp_reachable(uri.host, uri.port, open_timeout):
            # TCP works, so the failure came after it: during the TLS handshake.
            raise ProbeError(
                "tls",
                f"TLS handshake failed: {detail} (does the server speak TLS on this port?)",
                url=url,
            ) from exc
        raise ProbeError("unreachable", f"cannot connect: {detail}", url=url) from exc


async def _tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """True if a plain TCP connection to ``host:port`` opens (used to classify failures)."""
    try:
        _, writer = await bounded(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class _Pongs:
    """Matches pongs to the pings we sent (by payload)."""

    def __init__(self, transport: WebsocketsTransport) -> None:
        self._waiters: dict[bytes, asyncio.Future[float]] = {}
        transport.on_pong(self._pong)

    def _pong(self, payload: bytes, rtt: float) -> None:
        waiter = self._waiters.pop(payload, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(rtt)

    def expect(self, payload: bytes) -> asyncio.Future[float]:
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[payload] = waiter
        return waiter


async def _ping(
    transport: WebsocketsTransport, pongs: _Pongs, payload: bytes, timeout: float
) -> float | None:
    """Send one ping; return the RTT in seconds, None without a pong in time.

    Raises:
        TransportClosed: the connection closed (before or while waiting).
    """
    waiter = pongs.expect(payload)
    await transport.ping(payload)
    closed: asyncio.Future[Any] = asyncio.ensure_future(transport.wait_closed())
    watched: set[asyncio.Future[Any]] = {waiter, closed}
    try:
        done, _ = await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if waiter in done:
        rtt: float = waiter.result()
        return rtt
    waiter.cancel()
    info = transport.closed
    if info is not None:
        raise TransportClosed(info)
    return None


def _close_report(by: str, code: int, reason: str, clean: bool, lang: str) -> CloseReport:
    return CloseReport(
        by=by, code=code, reason=reason, clean=clean, explanation=summary(code, lang)
    )


async def probe(
    url: str,
    *,
    pings: int = 5,
    ping_timeout: float = 5.0,
    open_timeout: float = 10.0,
    subprotocols: Sequence[str] | None = None,
    compression: bool = True,
    lang: str = "en",
) -> ProbeReport:
    """Connect once to ``url`` and measure it.

    Args:
        url: a ``ws://`` or ``wss://`` URL.
        pings: pings to send, one after the other (0 sends none); pinging stops at
            the first ping not answered within ``ping_timeout``.
        ping_timeout: seconds to wait for each pong.
        open_timeout: seconds allowed for TCP + TLS + the HTTP upgrade.
        subprotocols: subprotocols to offer (reported: which one the server chose).
        compression: offer permessage-deflate (to report whether the server takes it).
        lang: language of the close-code explanation (``en`` or ``ja``).

    Raises:
        ConfigurationError: ``url`` is not a WebSocket URL, or a setting is invalid
            (a subprotocol that is not an RFC 6455 token).
        ProbeError: the connection or the handshake failed.
    """
    validate_url(url)
    check_subprotocols(subprotocols)
    if pings < 0:
        raise ConfigurationError("pings must be >= 0")
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn = await _open(
        url, open_timeout=open_timeout, subprotocols=subprotocols, compression=compression
    )
    handshake_ms = (loop.time() - start) * 1000.0
    transport = WebsocketsTransport(conn)
    pongs = _Pongs(transport)
    rtts: list[float] = []
    sent = 0
    unanswered = False
    close: CloseReport | None = None
    try:
        for number in range(pings):
            sent += 1
            try:
                rtt = await _ping(transport, pongs, struct.pack("!Q", number), ping_timeout)
            except TransportClosed as exc:
                info = exc.info
                by = "server" if info.clean else "path"
                close = _close_report(by, info.code, info.reason, info.clean, lang)
                break
            if rtt is None:
                # Unanswered within ping_timeout: the server ignores pings or the link is
                # stuck; more pings would only add ping_timeout each.
                unanswered = True
                break
            rtts.append(rtt * 1000.0)
        if close is None and transport.closed is not None:
            info = transport.closed
            by = "server" if info.clean else "path"
            close = _close_report(by, info.code, info.reason, info.clean, lang)
        if close is None:
            info = await transport.close(1000, "tether probe done")
            # Who ended it: the server, if its Close frame came before ours (ours then
            # only answered it), or if the link was already dead (an unanswered ping,
            # and no Close frame back): our 1000 is not what closed the connection.
            by = "client"
            if conn.protocol.close_rcvd_then_sent is True:
                by = "server"
            elif unanswered and not info.clean:
                by = "path"  # a ping unanswered, then no Close frame: the link died
            close = _close_report(by, info.code, info.reason, info.clean, lang)
    finally:
        if transport.closed is None:
            transport.abort()
    extensions = [str(getattr(ext, "name", ext)) for ext in conn.protocol.extensions]
    return ProbeReport(
        url=url,
        handshake_ms=round(handshake_ms, 3),
        subprotocol=conn.subprotocol,
        extensions=extensions,
        server=transport.headers.get("server"),
        pings=PingStats(
            sent=sent,
            answered=len(rtts),
            min_ms=round(min(rtts), 3) if rtts else None,
            median_ms=round(statistics.median(rtts), 3) if rtts else None,
            max_ms=round(max(rtts), 3) if rtts else None,
        ),
        close=close,
    )


async def _idle_trial(
    url: str,
    hold: float,
    *,
    pong_timeout: float,
    open_timeout: float,
    subprotocols: Sequence[str] | None,
    grace: bool = True,
) -> Observation:
    """Hold one connection idle for ``hold`` seconds, then check it with a ping."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn = await _open(url, open_timeout=open_timeout, subprotocols=subprotocols, compression=False)
    opened = loop.time()
    transport = WebsocketsTransport(conn)
    pongs = _Pongs(transport)
    # A path that kills at about ``hold`` idle seconds: its close may be on its way
    # (it left when our hold ended). The wait gives it the handshake's time to arrive
    # too, so that our ping does not meet the reset and count as a silent kill.
    extra = min(max(opened - start, _KILL_GRACE_MIN_S), _KILL_GRACE_MAX_S) if grace else 0.0
    try:
        with contextlib.suppress(TimeoutError):
            info = await bounded(transport.wait_closed(), hold + extra)
            # Closed while idle: the close took at most the handshake time to reach us.
            return Observation(
                hold,
                Outcome.KILLED,
                at=loop.time() - opened,
                slack=opened - start,
                code=info.code,
                peer_traffic=conn.peer_frames > 0,
            )
        # Whether the server itself sent something while we held the connection idle.
        busy = conn.peer_frames > 0
        try:
            rtt = await _ping(transport, pongs, b"tether-idle-probe", pong_timeout)
        except TransportClosed as exc:
            # Our ping made the path reset a connection it had forgotten: a silent kill.
            return Observation(hold, Outcome.DEAD, code=exc.info.code, peer_traffic=busy)
        if rtt is None:
            # No pong and no close: the path dropped the connection without telling
            # anyone. A closing handshake would only wait for nothing: drop it.
            transport.abort()
            return Observation(hold, Outcome.DEAD, code=1006, peer_traffic=busy)
        await _close_quietly(transport, _CLOSE_TIMEOUT)
        return Observation(hold, Outcome.SURVIVED, peer_traffic=busy)
    finally:
        # Cancelled (the trial became moot) or failed: the link may be dead, so the
        # closing handshake gets a short bound before the connection is dropped.
        await _close_quietly(transport, _MOOT_CLOSE_TIMEOUT)


async def _close_quietly(transport: WebsocketsTransport, timeout: float) -> None:
    """Close with 1000 within ``timeout`` seconds, else drop the connection."""
    if transport.closed is None:
        with contextlib.suppress(Exception):
            await bounded(transport.close(1000, "tether probe done"), timeout)
    if transport.closed is None:
        transport.abort()


def _format_holds(holds: list[float]) -> str:
    return ", ".join(f"{h:.3g}" for h in holds)


async def find_idle_limit(
    url: str,
    config: IdleSearchConfig,
    *,
    pong_timeout: float = DEFAULT_PONG_TIMEOUT,
    open_timeout: float = 10.0,
    subprotocols: Sequence[str] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> IdleSearchResult:
    """Find how long an idle connection to ``url`` survives, up to ``config.max_idle``.

    Each batch opens at most ``config.parallel`` connections at once; a trial whose
    outcome can no longer matter is cancelled (its connection closed with 1000).

    Args:
        url: a ``ws://`` or ``wss://`` URL; ideally an endpoint that sends nothing
            unprompted (a server's own pings or messages keep the path busy).
        config: the search bounds (max idle time, resolution, parallelism).
        pong_timeout: seconds to wait for the pong proving a connection survived.
        open_timeout: seconds allowed to open each connection.
        subprotocols: subprotocols to offer, if the endpoint requires one.
        on_progress: called with one line of text as the search advances.

    Raises:
        ConfigurationError: ``url`` is not a WebSocket URL, or a subprotocol is not a token.
        ProbeError: a connection could not be opened.
    """
    validate_url(url)
    check_subprotocols(subprotocols)
    search = IdleSearch(config)

    def progress(text: str) -> None:
        if on_progress is not None:
            on_progress(text)

    while holds := search.next_batch():
        progress(
            f"batch {search.batches}: {len(holds)} idle connection(s) held for "
            f"{_format_holds(holds)} s"
        )
        tasks = {
            asyncio.create_task(
                _idle_trial(
                    url,
                    hold,
                    pong_timeout=pong_timeout,
                    open_timeout=open_timeout,
                    subprotocols=subprotocols,
                    # (The longest hold asks only whether max_idle is survived: a close
                    # that comes later is past it, not a limit below it.)
                    grace=hold < config.max_idle,
                )
            ): hold
            for hold in holds
        }
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed: BaseException | None = None
                for task in done:
                    # Every finished trial's exception is read (task.exception()), not
                    # just the first: asyncio logs a traceback for each one left unread.
                    error = task.exception()
                    if error is not None:
                        failed = failed or error
                        continue
                    observation = task.result()
                    search.record(observation)
                    progress(_describe(observation, search))
                if failed is not None:
                    raise failed
                moot = {task for task in pending if search.moot(tasks[task])}
                for task in moot:
                    task.cancel()
                if moot:
                    await asyncio.gather(*moot, return_exceptions=True)
                pending -= moot
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    return search.result()


def _describe(observation: Observation, search: IdleSearch) -> str:
    bounds = ""
    if search.high is not None:
        bounds = f"limit in ({search.low:.3g}, {search.high:.3g}] s"
    if observation.outcome is Outcome.SURVIVED:
        what = f"survived {observation.hold:.3g} s idle"
    elif observation.outcome is Outcome.KILLED:
        assert observation.at is not None
        what = f"closed after {observation.at:.3f} s idle (code {observation.code})"
    else:
        what = f"dead after {observation.hold:.3g} s idle (no pong, code {observation.code})"
    return f"  {what}" + (f"; {bounds}" if bounds else "")
