"""tether: keep WebSocket connections alive through what production does to them.

The core (close codes, reconnect policy, backoff, heartbeat, the tether.v1
protocol) is sans-I/O; ``tether.connect`` and ``tether.serve`` come from the
asyncio adapter and are imported on first use, so ``import tether`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backoff import Backoff, BackoffConfig
from .closecodes import CloseCode, classify_received, lookup, validate_send
from .events import (
    Connected,
    Disconnected,
    Event,
    GaveUp,
    Reconnecting,
    Resumed,
    SessionLost,
    State,
)
from .exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidCloseCode,
    ProbeError,
    ProtocolError,
    QueueFull,
    StoreError,
    TetherError,
)
from .heartbeat import Heartbeat
from .policy import Action, Decision, DelayRule, ReconnectPolicy, Rule
from .ratelimit import ResumeLimit

__version__ = "0.1.0"

#: Names provided by the asyncio adapter, imported lazily: name -> module.
_LAZY: dict[str, str] = {
    "ClientConnection": "tether.asyncio.client",
    "Server": "tether.asyncio.server",
    "Session": "tether.asyncio.session",
    "connect": "tether.asyncio.client",
    "serve": "tether.asyncio.server",
}

if TYPE_CHECKING:
    from .asyncio.client import ClientConnection as ClientConnection
    from .asyncio.client import connect as connect
    from .asyncio.server import Server as Server
    from .asyncio.server import serve as serve
    from .asyncio.session import Session as Session

__all__ = [
    "Action",
    "Backoff",
    "BackoffConfig",
    "CloseCode",
    "ConfigurationError",
    "Connected",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Decision",
    "DelayRule",
    "Disconnected",
    "Event",
    "GaveUp",
    "Heartbeat",
    "InvalidCloseCode",
    "ProbeError",
    "ProtocolError",
    "QueueFull",
    "ReconnectPolicy",
    "Reconnecting",
    "ResumeLimit",
    "Resumed",
    "Rule",
    "SessionLost",
    "State",
    "StoreError",
    "TetherError",
    "classify_received",
    "lookup",
    "validate_send",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
