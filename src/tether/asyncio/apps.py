"""Ready-made handlers for ``tether serve --app``: echo, broadcast, ticker.

The ticker is the base of loss checks (``tether demo``): every message carries
two numbers. ``seq`` counts the messages of one session (1, 2, 3, ...): a gap in
it is a message lost *inside* a session. ``tick`` is the wall-clock tick number,
``floor(unix_ms / interval_ms)``, the same in every server process: a gap in it is
a tick the client did not get, for instance while it was reconnecting (plain
WebSocket starts a new session, so those ticks are simply missed). ``node``
names the server process that sent the message (``tether serve --node-id``), so
a multi-node test can tell where a client ended up; a ticker also answers every
client message with ``{"echo": <message>, "node": ...}``, so a client can check
its own numbered messages both ways on the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable

from ..exceptions import ConfigurationError, ConnectionClosed
from .session import Session

__all__ = ["APPS", "Broadcast", "Ticker", "echo", "make_app"]


async def echo(session: Session) -> None:
    """Send every message back to its sender, unchanged."""
    async for message in session:
        await session.send(message)


class Broadcast:
    """Send every message to every connected session (the sender included)."""

    def __init__(self) -> None:
        self.sessions: set[Session] = set()

    async def __call__(self, session: Session) -> None:
        self.sessions.add(session)
        try:
            async for message in session:
                await asyncio.gather(
                    *(self._send(peer, message) for peer in list(self.sessions)),
                )
        finally:
            self.sessions.discard(session)

    @staticmethod
    async def _send(peer: Session, message: str | bytes) -> None:
        # A peer that just left must not stop the message reaching the others.
        with contextlib.suppress(ConnectionClosed):
            await peer.send(message)


class Ticker:
    """Send each session a numbered JSON message every ``interval_ms`` milliseconds.

    Messages look like ``{"seq": 7, "tick": 88311922, "t": 1764095100250,
    "node": "4242"}``: the session's message number (counted by this handler,
    so a session resumed in another process starts again at 1 there), the
    wall-clock tick number, the send time in Unix milliseconds and the node id.
    A message from the client is answered with ``{"echo": <its text>, "node":
    ...}`` (binary messages are echoed unchanged).

    Args:
        interval_ms: milliseconds between messages (> 0).
        node: the id put into every message (default: this process's PID).
    """

    def __init__(self, interval_ms: float = 100.0, *, node: str | None = None) -> None:
        if not interval_ms > 0:
            raise ConfigurationError(f"ticker interval must be > 0 ms, not {interval_ms!r}")
        self.interval_ms = interval_ms
        self.node = node if node is not None else str(os.getpid())

    async def __call__(self, session: Session) -> None:
        sender = asyncio.ensure_future(self._tick(session))
        try:
            # Reading is also what tells us the session ended (async for stops).
            async for message in session:
                if isinstance(message, str):
                    echoed = {"echo": message, "node": self.node}
                    message = json.dumps(echoed, separators=(",", ":"))
                try:
                    await session.send(message)
                except ConnectionClosed:
                    return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _tick(self, session: Session) -> None:
        seq = 0
        tick = int(time.time() * 1000 // self.interval_ms)
        while True:
            tick += 1
            # Sleep to the tick's wall-clock time so all processes tick in step.
            await asyncio.sleep(max(0.0, tick * self.interval_ms / 1000 - time.time()))
            seq += 1
            message = {"seq": seq, "tick": tick, "t": int(time.time() * 1000), "node": self.node}
            try:
                await session.send(json.dumps(message, separators=(",", ":")))
            except ConnectionClosed:
                return


#: App names for ``tether serve --app``.
APPS = ("echo", "broadcast", "ticker")


def make_app(
    name: str, *, ticker_interval_ms: float = 100.0, node: str | None = None
) -> Callable[[Session], Awaitable[None]]:
    """Build the handler called ``name`` (one of :data:`APPS`).

    ``node`` is the ticker's node id (default: the PID).

    Raises:
        ConfigurationError: an unknown name or a bad interval.
    """
    if name == "echo":
        return echo
    if name == "broadcast":
        return Broadcast()
    if name == "ticker":
        return Ticker(ticker_interval_ms, node=node)
    raise ConfigurationError(f"unknown app {name!r}; choose one of {', '.join(APPS)}")
