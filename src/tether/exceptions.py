"""Exceptions raised by tether.

Every exception tether raises on purpose derives from :class:`TetherError`, so
``except tether.TetherError`` catches them all. The tree, split by who is to blame::

    TetherError
    ├── InvalidCloseCode (also ValueError)   local: a code that may not be sent
    ├── ConfigurationError (also ValueError) local: a bad argument or URL
    ├── QueueFull                            local: the send queue stayed full for send_timeout
    ├── ConnectionClosed                     the connection/session ended for good
    │   ├── ConnectionClosedOK               ... with 1000/1001 (a normal end)
    │   └── ConnectionClosedError            ... with any other code, or it gave up reconnecting
    ├── ProtocolError                        remote: the peer broke RFC 6455 or tether.v1
    ├── ProbeError                           `tether probe` could not reach or upgrade the URL
    └── StoreError                           a session store failed (I/O, unavailable)

Foreign exceptions (the engine's, ``OSError``) are translated at the boundary in
``tether/asyncio/`` and chained with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "InvalidCloseCode",
    "ProbeError",
    "ProtocolError",
    "QueueFull",
    "StoreError",
    "TetherError",
]


class TetherError(Exception):
    """Root of every exception tether raises on purpose."""


class InvalidCloseCode(TetherError, ValueError):
    """A close code that an endpoint may not put in a Close frame (or not from this side).

    Attributes:
        code: the refused code.
        why: one sentence saying why it is refused.
    """

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"close code {code} may not be sent: {why}")
        self.code = code
        self.why = why


class ConfigurationError(TetherError, ValueError):
    """An argument, option or URL given to tether is not valid."""


class QueueFull(TetherError):
    """The send queue stayed full for ``send_timeout`` seconds; the message was not queued."""


class ConnectionClosed(TetherError):
    """The connection (or session) is closed for good; no more messages will come.

    Attributes:
        code: the close code (1006 when no Close frame was exchanged), or ``None``.
        reason: the close reason sent by the peer, if any.
        explanation: a one-line explanation of the code from tether's knowledge base.
    """

    def __init__(self, code: int | None, reason: str = "", explanation: str = "") -> None:
        text = f"connection closed with {code}" if code is not None else "connection closed"
        if reason:
            text += f" ({reason})"
        if explanation:
            text += f": {explanation}"
        super().__init__(text)
        self.code = code
        self.reason = reason
        self.explanation = explanation


class ConnectionClosedOK(ConnectionClosed):
    """The connection ended normally (1000 Normal Closure or 1001 Going Away)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection ended with an error code, or reconnection was given up."""


class ProtocolError(TetherError):
    """The peer violated RFC 6455 or the tether.v1 protocol.

    Attributes:
        close_code: the close code to fail the connection with (1002 by default).
    """

    def __init__(self, message: str, *, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class ProbeError(TetherError):
    """An endpoint could not be probed (``tether probe``): the input was fine, the path was not.

    Attributes:
        kind: ``refused``, ``unreachable``, ``timeout``, ``tls``, ``http`` (the server
            answered the upgrade with another HTTP status) or ``handshake`` (the answer
            was not a valid WebSocket handshake).
        status: the HTTP status, for ``http``.
        url: the URL probed.
    """

    def __init__(self, kind: str, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.url = url

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready description of the failure."""
        return {"kind": self.kind, "message": str(self), "status": self.status, "url": self.url}


class StoreError(TetherError):
    """A session store could not complete an operation."""
