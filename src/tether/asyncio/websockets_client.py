"""Opening client connections with ``websockets``; its handshake errors translated at the boundary.

Every failure to open becomes a :class:`~tether.reconnect.ConnectFailure` (carried by
:class:`OpenFailed`, chained ``from`` the engine's exception) that the sans-I/O
:class:`~tether.reconnect.Reconnector` decides on:

* ``InvalidStatus`` → ``HTTP`` with the status (401/403 final, 5xx backoff, ...);
* ``OSError`` (refused, unreachable, DNS, reset) and ``InvalidMessage`` caused by
  the server closing mid-handshake → ``NETWORK`` (the 1006 row);
* ``TimeoutError`` (``open_timeout``) → ``TIMEOUT`` (the 1006 row);
* any other ``InvalidHandshake`` (a broken upgrade response, a refused
  negotiation) → ``HANDSHAKE``, which follows the 1006 row: often a proxy or a
  server mid-restart; backoff keeps retries rare if it persists.

A malformed URL is refused before any I/O by :func:`check_url`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State as WsState
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..exceptions import ConfigurationError
from ..reconnect import ConnectFailure, FailureKind
from .engine import Transport, Writer
from .websockets_engine import WebsocketsTransport

__all__ = [
    "OpenFailed",
    "check_subprotocols",
    "check_url",
    "fast_writer",
    "open_probe",
    "open_transport",
    "system_proxy",
]


#: The logger websockets would look up on every attempt (``logging.getLogger`` takes
#: the logging module's lock): the same object, passed in.
_WS_LOGGER = logging.getLogger("websockets.client")


class OpenFailed(Exception):
    """An attempt to open a connection failed; ``failure`` says how (internal to the adapter)."""

    def __init__(self, failure: ConnectFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


#: RFC 6455 §4.1: a subprotocol name is an RFC 2616 token (no space, separator or control).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Space and ASCII control characters: none may appear in a URL (RFC 3986 §2).
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
#: In an IRI (non-ASCII text), the engine percent-encodes a space itself
#: ("ws://h/café menu" -> /caf%C3%A9%20menu): only control characters are refused.
_IRI_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def check_url(url: str) -> None:
    """Refuse a URL that is not a valid ``ws://`` or ``wss://`` URI.

    Raises:
        ConfigurationError: with the engine's reason, chained from ``InvalidURI``;
            or the URL holds a space or a control character.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str, not {type(url).__name__}")
    bad = (_URL_FORBIDDEN if url.isascii() else _IRI_FORBIDDEN).search(url)
    if bad is not None:
        # The engine does not check: "ws://h/a\r\nX: y" went out as the request line
        # "GET /aX: y HTTP/1.1", and a space split the request line.
        raise ConfigurationError(
            f"invalid WebSocket URL {url!r}: {bad.group()!r} at position {bad.start()} "
            "(spaces and control characters must be percent-encoded)"
        )
    try:
        parse_uri(url)
    except (InvalidURI, ValueError) as exc:  # urllib raises ValueError for e.g. "ws://[bad"
        raise ConfigurationError(f"invalid WebSocket URL {url!r}: {exc}") from exc


def check_subprotocols(subprotocols: Sequence[str] | None) -> None:
    """Refuse subprotocols that are not a list of RFC 6455 §4.1 tokens.

    The engine refuses them only when it builds the request: every attempt failed
    the same way and the client reconnected for ever.

    Raises:
        ConfigurationError: one string, not a sequence, or a name that is not a token.
    """
    if subprotocols is None:
        return
    if isinstance(subprotocols, (str, bytes)) or not isinstance(subprotocols, Sequence):
        raise ConfigurationError(
            f"subprotocols must be a list of names or None, not {subprotocols!r}"
        )
    for name in subprotocols:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigurationError(
                f"subprotocol {name!r} is not a valid name (RFC 6455 §4.1: a token, "
                "without spaces or separators)"
            )


def _retry_after(exc: InvalidStatus) -> float | None:
    # RFC 9110 §10.2.3: Retry-After is delay-seconds or an HTTP date; only the
    # seconds form is honoured (a date would need a wall clock here).
    value = exc.response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


#: TLS errors that say the connection broke (EOF, reset) rather than that the
#: handshake was refused: network failures, worth retrying.
_TLS_TRANSPORT_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def translate(exc: BaseException) -> ConnectFailure | None:
    """Map an exception raised while opening to a :class:`ConnectFailure`; None if foreign."""
    if isinstance(exc, InvalidStatus):
        return ConnectFailure(
            FailureKind.HTTP,
            detail=exc.response.reason_phrase,
            status=exc.response.status_code,
            retry_after=_retry_after(exc),
        )
    if isinstance(exc, InvalidMessage):
        # Typically the server accepted TCP and closed before answering (EOFError):
        # a network failure, worth retrying with backoff like websockets does.
        cause = exc.__cause__
        detail = f"{exc}: {cause}" if cause is not None else str(exc)
        kind = (
            FailureKind.NETWORK if isinstance(cause, (EOFError, OSError)) else FailureKind.HANDSHAKE
        )
        return ConnectFailure(kind, detail=detail)
    if isinstance(exc, InvalidHandshake):
        return ConnectFailure(FailureKind.HANDSHAKE, detail=str(exc))
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectFailure(FailureKind.TIMEOUT, detail=str(exc))
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_TRANSPORT_ERRORS):
        # The TLS handshake itself was refused (certificate, version, cipher): it
        # fails the same way every time (1015). A connection cut during it is not
        # (below: 1006, retried).
        return ConnectFailure(FailureKind.TLS, detail=str(exc) or type(exc).__name__)
    if isinstance(exc, (OSError, EOFError)):
        return ConnectFailure(FailureKind.NETWORK, detail=str(exc) or type(exc).__name__)
    return None


try:  # websockets >= 15 connects through the system's proxy settings by default
    from websockets.proxy import get_proxy as _ws_get_proxy

    _PROXY_SUPPORT = True
except ImportError:  # pragma: no cover - websockets 14 has no proxy support
    _PROXY_SUPPORT = False


class _Unsupported:
    """The engine has no proxy support: do not pass the option at all."""


NO_PROXY_SUPPORT = _Unsupported()


def system_proxy(url: str) -> str | _Unsupported | None:
    """The proxy ``websockets`` would use for ``url`` by default (from the environment).

    Looking it up reads and parses every environment variable (``urllib``'s
    ``getproxies``), about 0.4 ms: the client resolves it once per connection object
    instead of on every reconnect.
    """
    if not _PROXY_SUPPORT:
        return NO_PROXY_SUPPORT
    return _ws_get_proxy(parse_uri(url))


async def open_transport(
    url: str,
    *,
    subprotocols: Sequence[str] | None,
    headers: Mapping[str, str] | None,
    open_timeout: float | None,
    close_timeout: float | None,
    compression: str | None,
    max_size: int | None,
    proxy: str | _Unsupported | None = NO_PROXY_SUPPORT,
) -> WebsocketsTransport:
    """Open a connection and wrap it; keepalive is off because tether drives the heartbeat.

    Raises:
        OpenFailed: the attempt failed; ``failure`` classifies it (chained from the cause).
    """
    extra: dict[str, Any] = {} if isinstance(proxy, _Unsupported) else {"proxy": proxy}
    try:
        connection = await ws_connect(
            url,
            subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
            additional_headers=dict(headers) if headers else None,
            compression=compression,
            open_timeout=open_timeout,
            # tether's HeartbeatMachine sends the pings; websockets' own keepalive
            # would race it and could only be tested in real time.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=close_timeout,
            max_size=max_size,
            # Messages websockets buffers before it stops reading (its default is 16, each
            # up to max_size): tether's own buffer (max_incoming_bytes) is the main bound.
            max_queue=4,
            logger=_WS_LOGGER,
            **extra,
        )
    except Exception as exc:
        failure = translate(exc)
        if failure is None:
            raise
        raise OpenFailed(failure) from exc
    return WebsocketsTransport(connection)


def open_probe(transport: Transport) -> tuple[Callable[[], bool], Callable[[], bool]] | None:
    """Cheap checks ``(is OPEN, is closing)`` for ``transport``; None if it is not ours.

    The client writes from the caller's task (no writer task) only while the
    connection is OPEN; a foreign transport gets None and every write goes
    through a writer task, as for any transport the client knows nothing about.

    "Closing" is an OPEN connection whose socket is already aborted or closed, its
    loss not yet reported: a write there is dropped silently, so a message that the
    send queue must keep until the transport accepted it waits for the next one.
    """
    if not isinstance(transport, WebsocketsTransport):
        return None
    connection = transport.connection
    protocol = connection.protocol
    open_state = WsState.OPEN
    return (lambda: protocol.state is open_state), connection.transport.is_closing


def fast_writer(transport: Transport) -> Writer | None:
    """A synchronous write of one whole message to ``transport``; None if it is not ours.

    :meth:`WebsocketsTransport.write_now`: True when written at once, False when
    the caller must await ``send`` (buffer over its limit, or the connection is
    not OPEN). What it wrote is "accepted by the transport" exactly as after
    ``send`` returned. A subclass of the transport may override ``send``: it gets
    None, so that its ``send`` is used.
    """
    if type(transport) is not WebsocketsTransport:
        return None
    return transport.write_now
