"""``tether.serve``: a WebSocket server that restarts without a thundering herd.

What it adds to the engine's server (DESIGN.md §5, §6, §10):

* **Planned restart** (:meth:`Server.restart`, SIGHUP, SIGTERM): stop accepting at
  once (``/healthz`` answers 503 and WebSocket upgrades get HTTP 503), close every
  connection with 1012 Service Restart in batches spread evenly over
  ``drain_window`` (:mod:`tether.drain`), wait for the close handshakes (bounded
  by ``close_timeout``), return.
* **Heartbeat**: tether pings every connection (:mod:`tether.asyncio.keepalive`);
  a connection whose pong is overdue is aborted and its session ends with 1006.
* **Reserved codes never on the wire**: every close goes through
  :func:`tether.validate_send`; an exception in a handler closes with 1011 and is
  logged with its traceback on the ``tether.server`` logger.
* **Health**: ``GET /healthz`` is 200 while serving, 503 once draining; other
  plain HTTP requests get 404.
* ``reuse_port=True`` binds with ``SO_REUSEPORT`` so a replacement process can
  listen on the same port while this one drains (see ``docs/server.md``).

Handlers receive a :class:`~tether.asyncio.session.Session`, not a connection;
the :class:`~tether.asyncio.session.ServerLayer` decides how connections map to
sessions (plain WebSocket: one each).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import http
import json
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .._numbers import is_finite_number
from ..closecodes import CloseCode, check_reason, may_send, validate_send
from ..drain import DrainSchedule, check_window
from ..exceptions import ConfigurationError, ConnectionClosed, ProtocolError
from ..heartbeat import Heartbeat
from ..knowledge import summary
from ..ratelimit import ResumeLimit
from ..stores.base import SessionStore
from .checks import check_duration
from .engine import ClosedInfo, TransportClosed
from .keepalive import HeartbeatTimer
from .resume_server import PrincipalHook, TetherV1ServerLayer
from .reuseport import (
    health_source_usable,
    steer_health_checks_to_second,
    steer_to_second_listener,
    stop_steering,
)
from .session import PlainServerLayer, RequestInfo, ServerLayer, Session
from .waiters import bounded
from .websockets_engine import WebsocketsTransport

__all__ = ["Handler", "Server", "ServerState", "serve"]

logger = logging.getLogger("tether.server")

#: Messages websockets buffers per connection before it stops reading the socket.
ENGINE_MAX_QUEUE = 4

#: What a server runs for each session.
Handler = Callable[[Session], Awaitable[None]]

#: Default listen backlog. DESIGN.md §10: with the usual 100, the last of 5,000
#: simultaneous clients waited up to 28 s; a reconnect storm is exactly that.
DEFAULT_BACKLOG = 4096

#: Seconds a handover keeps accepting what was queued before new connections were steered.
_STEER_GRACE_S = 0.1

#: Seconds a 503 during the drain asks clients to wait (HTTP ``Retry-After``).
_RETRY_AFTER_S = 1

#: Largest TCP port number.
_MAX_PORT = 65535

#: Largest listen backlog: listen(2) takes a C int (the kernel caps it at somaxconn).
_MAX_BACKLOG = 2**31 - 1


class ServerState(str, enum.Enum):
    """Life cycle of a :class:`Server`."""

    #: Created, not listening yet.
    NEW = "new"
    #: Accepting connections; ``/healthz`` is 200.
    SERVING = "serving"
    #: Restart or shutdown in progress: no new sessions; ``/healthz`` is 503.
    DRAINING = "draining"
    #: Every connection closed and the listener too.
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class _Connection:
    """The server's record of one open connection."""

    transport: WebsocketsTransport
    request: RequestInfo
    opened_at: float
    session: Session | None = None
    #: Why the server closed it, for the log line ("restart", "heartbeat", ...).
    cause: str | None = None
    heartbeat: HeartbeatTimer | None = None
    #: Done when the connection of a session attached with ``Session.attach`` (not
    #: plain) ended and its end was handled.
    pump: asyncio.Future[ClosedInfo] | None = None
    #: The close was logged (plain sessions log it from the close callback).
    logged: bool = False

    def culled(self) -> None:
        """The heartbeat gave up on the connection (a bound method: no partial per connection)."""
        self.cause = "heartbeat"
        timeout = self.heartbeat.config.timeout if self.heartbeat is not None else None
        logger.info(
            "no pong within %.1f s from %s: dropping the connection (1006)",
            timeout or 0.0,
            _address(self.request.remote_address),
        )


class Server:
    """A running (or ready to run) tether WebSocket server; see :func:`serve`.

    ``async with serve(...) as server`` starts it and shuts it down (1001) on exit;
    ``await serve(...)`` serves until a restart or shutdown finishes (from a signal
    or another task).
    """

    def __init__(
        self,
        handler: Handler,
        host: str | None,
        port: int | str | None,
        *,
        heartbeat: Heartbeat | None,
        drain_window: float,
        shutdown_code: int,
        reuse_port: bool,
        backlog: int,
        max_size: int | None,
        open_timeout: float | None,
        close_timeout: float,
        compression: str | None,
        handle_signals: bool,
        health_path: str | None,
        layer: ServerLayer | None,
        origins: Sequence[str | re.Pattern[str] | None] | None = None,
    ) -> None:
        # Checked here, not at start() or on each connection: each of these would
        # otherwise fail the bind with a raw TypeError/OverflowError, or every
        # connection with a traceback and 1011.
        if not callable(handler):
            raise ConfigurationError(f"handler must be a coroutine function, not {handler!r}")
        _check_host(host)
        port = _check_port(port)
        if heartbeat is not None and not isinstance(heartbeat, Heartbeat):
            raise ConfigurationError(
                f"heartbeat must be a tether.Heartbeat or None, not {heartbeat!r}"
            )
        if isinstance(drain_window, bool) or not isinstance(drain_window, (int, float)):
            raise ConfigurationError(
                f"drain_window must be a finite number of seconds >= 0, not {drain_window!r}"
            )
        check_window(drain_window, "drain_window")
        _check_close_timeout(close_timeout)
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise ConfigurationError(f"backlog must be an integer >= 1, not {backlog!r}")
        if backlog < 1:
            raise ConfigurationError(f"backlog must be >= 1, not {backlog!r}")
        if backlog > _MAX_BACKLOG:
            raise ConfigurationError(f"backlog must be at most {_MAX_BACKLOG}, not {backlog!r}")
        # The three below would otherwise be accepted and break every connection:
        # a max_size under 1 refuses every message (tether.v1's hello first), an
        # open_timeout of 0 or less drops every connection (health checks included),
        # a path without "/" never matches a request, so the health check gets 404.
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ConfigurationError(f"max_size must be an integer >= 1 or None, not {max_size!r}")
        check_duration("open_timeout", open_timeout, allow_zero=False)
        if health_path is not None and not (
            isinstance(health_path, str) and health_path.startswith("/")
        ):
            raise ConfigurationError(
                f"health_path must be a path starting with '/' or None, not {health_path!r}"
            )
        if compression not in (None, "deflate"):
            raise ConfigurationError(f"compression must be None or 'deflate', not {compression!r}")
        validate_send(shutdown_code, role="server")
        self.origins = _check_origins(origins)
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.heartbeat = heartbeat if heartbeat is not None else Heartbeat(None, None)
        self.drain_window = drain_window
        self.shutdown_code = shutdown_code
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.compression = compression
        self.handle_signals = handle_signals
        self.health_path = health_path
        self.layer: ServerLayer = layer if layer is not None else PlainServerLayer()
        self._state = ServerState.NEW
        self._ws_server: WsServer | None = None
        self._connections: dict[WebsocketsTransport, _Connection] = {}
        #: Accepted connections still in their opening handshake (see _stop_listening).
        self._opening: set[ServerConnection] = set()
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_close: tuple[int, str] | None = None
        self._handlers: dict[Session, asyncio.Task[None]] = {}
        self._closed = asyncio.Event()
        self._signals: list[signal.Signals] = []
        self._background_tasks: set[asyncio.Task[Any]] = set()
        #: The event loop start() ran on: the server's tasks and futures live there.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._layer_started = False
        #: serve() built the layer (from ``store=``): its stop() is safe before its
        #: start(), and a failed bind uses it to close a store opened from a URL.
        self._layer_from_serve = False
        #: Done when the start under way (the first start() call) has ended, either way.
        self._starting: asyncio.Future[None] | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        """Where the server is in its life cycle."""
        return self._state

    @property
    def sessions(self) -> list[Session]:
        """The sessions of the open connections, oldest first."""
        return [c.session for c in self._connections.values() if c.session is not None]

    @property
    def port(self) -> int:
        """The TCP port the server listens on (useful with ``port=0``)."""
        if self._ws_server is None or not self._ws_server.sockets:
            raise RuntimeError(f"the server is not listening (state: {self._state.value})")
        return int(self._ws_server.sockets[0].getsockname()[1])

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> Server:
        """Bind and start accepting connections; return the server.

        Calling it again while the server serves or drains returns the server; while
        another call is starting it, waits for that start (one bind, one listener).

        Raises:
            RuntimeError: the server has closed (a closed server does not start again:
                call :func:`serve` for a new one; also when the start this call waited
                for failed), or it runs on another event loop.
            OSError: the bind failed. On any failure whatever was set up is undone (the
                listener closed, the session layer stopped) and the server is closed.
        """
        self._check_loop()
        if self._state is ServerState.CLOSED:
            raise RuntimeError("the server is closed; call serve() for a new one")
        if self._state is not ServerState.NEW:
            return self
        if self._starting is not None:
            # Another call is binding (the state stays NEW meanwhile): a second bind
            # would take the port twice, or fail and undo the first one's listener.
            await asyncio.shield(self._starting)
            if self.state is ServerState.CLOSED:  # (changed meanwhile)
                raise RuntimeError("the server is closed (its start failed); call serve() again")
            return self
        self._loop = asyncio.get_running_loop()
        self._starting = self._loop.create_future()
        try:
            await self._bind_and_start()
        except BaseException:
            # (Cancellation too.) Nothing may outlive a failed start: a listener that
            # accepts with nobody to serve, a sweeper, a store's thread.
            await self._undo_start()
            raise
        finally:
            self._starting.set_result(None)
        logger.info(
            "serving on %s port %d (pid %d)",
            self.host or "all interfaces",
            self.port,
            os.getpid(),
            extra={
                "tether": {
                    "event": "listening",
                    "port": self.port,
                    "pid": os.getpid(),
                    # Which event loop serves ("asyncio", "uvloop"): `tether serve --loop`
                    # and an application's own choice can be checked from the log.
                    "loop": type(self._loop).__module__.partition(".")[0],
                },
            },
        )
        return self

    async def _bind_and_start(self) -> None:
        self._ws_server = await ws_serve(
            self._on_connection,
            self.host,
            self.requested_port,
            process_request=self._process_request,
            create_connection=_tracking(self._opening),
            subprotocols=list(self.layer.subprotocols) or None,  # type: ignore[arg-type]
            select_subprotocol=self._select_subprotocol,
            compression=self.compression,
            # tether drives pings itself (keepalive.py) from the sans-I/O heartbeat.
            ping_interval=None,
            ping_timeout=None,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            max_size=self.max_size,
            # Frames the engine buffers before it stops reading (websockets' default is 16):
            # each may be max_size bytes, so this bounds what a client that never reads
            # costs, together with the session inbox's byte bound (docs/security.md).
            max_queue=ENGINE_MAX_QUEUE,
            # Checked by the engine after process_request (so /healthz is not affected) and
            # before any handler or session exists: a foreign Origin gets HTTP 403.
            origins=self.origins,  # type: ignore[arg-type]
            server_header=None,
            logger=logging.getLogger("tether.server.engine"),
            backlog=self.backlog,
            reuse_port=self.reuse_port or None,
        )
        self._layer_started = True
        await self.layer.start()
        if self.handle_signals:
            self._install_signal_handlers()
        self._state = ServerState.SERVING

    async def _undo_start(self) -> None:
        self._remove_signal_handlers()
        self._state = ServerState.CLOSED
        if self._ws_server is not None:
            self._ws_server.close()
            try:
                # (Bounded like any close: a connection accepted meanwhile gets its Close.)
                await bounded(self._ws_server.wait_closed(), self.close_timeout)
            except TimeoutError:
                logger.warning("the listener did not close after a failed start")
        if self._layer_started or self._layer_from_serve:
            try:
                await self.layer.stop()
            except Exception:
                logger.exception("stopping the session layer after a failed start failed")
        self._closed.set()

    async def serve_forever(self) -> None:
        """Start if needed, then wait until a restart or shutdown has finished.

        Cancelling it closes every connection with 1001 at once (no drain window).
        """
        await self.start()
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            await self._start_drain(CloseCode.GOING_AWAY, "server stopped", 0.0)
            raise

    async def wait_closed(self) -> None:
        """Wait until the server has closed every connection and its listener."""
        await self._closed.wait()

    async def restart(self, reason: str = "restart") -> None:
        """Planned restart: drain every connection with 1012 Service Restart.

        Stops accepting at once, closes connections in batches spread over
        ``drain_window``, waits for the close handshakes, then returns. Calling it
        during a drain waits for that drain.

        Args:
            reason: the close reason sent with 1012 (at most 123 bytes of UTF-8).

        Raises:
            RuntimeError: called from another event loop than the server's (nothing
                changes).
            ConfigurationError: ``reason`` does not fit a Close frame (before any I/O).
        """
        self._check_loop()
        check_reason(reason)
        await self._start_drain(CloseCode.SERVICE_RESTART, reason, self.drain_window)

    def keep_new_connections(self) -> bool:
        """Before a handover starts its replacement: keep every new connection here.

        Only connections from :data:`tether.asyncio.reuseport.HEALTH_SOURCE`
        (127.0.0.2, where the handover's health checks come from) will go to the
        replacement until :meth:`hand_off`: one that binds and then hangs strands no
        client's connection. This also replaces what an earlier handover left on the
        group. Needs Linux and IPv4 listeners; returns False otherwise, after
        :meth:`stop_steering` (the kernel then spreads new connections over both
        listeners, and the health checks must come from anywhere).
        """
        if self._ws_server is None:
            return False
        sockets = list(self._ws_server.sockets)
        kept = bool(sockets) and health_source_usable()
        if kept:
            kept = all([steer_health_checks_to_second(sock) for sock in sockets])
        if not kept:
            self.stop_steering()  # never half-steered: all hashed, as before
        return kept

    def stop_steering(self) -> None:
        """Put the port back on the kernel's hash: no steering program chooses a listener.

        Used where :meth:`keep_new_connections` cannot be (or is not alone on the
        port) and after a failed handover: a program left on the port's
        ``SO_REUSEPORT`` group (:mod:`tether.asyncio.reuseport`) would keep favouring
        one listener, e.g. send every new connection to the next replacement as soon
        as that binds, healthy or not.
        """
        if self._ws_server is not None:
            for sock in self._ws_server.sockets:
                stop_steering(sock)

    async def hand_off(self, reason: str = "handover") -> None:
        """Restart into a replacement that already listens on this port (``reuse_port``).

        For the zero-downtime handover (``tether serve --reuse-port`` on SIGHUP),
        once the replacement is healthy: the kernel is told to send every new
        connection to the replacement (:mod:`tether.asyncio.reuseport`), the
        connections already queued for this process are accepted and served, and
        then :meth:`restart` drains everything with 1012. Without ``reuse_port``,
        or where steering is not supported, it is :meth:`restart`.

        It assumes exactly two listeners share the port: this one and the replacement.

        Args:
            reason: the close reason sent with 1012 (at most 123 bytes of UTF-8).

        Raises:
            RuntimeError: called from another event loop than the server's (before the
                kernel is told anything: nothing changes).
            ConfigurationError: ``reason`` does not fit a Close frame (before any I/O).
        """
        # (First: steering new connections away and then refusing the drain would leave
        # this server serving, and never draining, with the kernel feeding the other.)
        self._check_loop()
        check_reason(reason)
        if self.reuse_port and self._state is ServerState.SERVING and self._ws_server:
            steered = all(steer_to_second_listener(s) for s in self._ws_server.sockets)
            if steered:
                # Already-queued connections are accepted as soon as the loop runs;
                # give it a moment, they are then drained like everyone else.
                await asyncio.sleep(_STEER_GRACE_S)
            else:
                logger.warning("could not steer new connections; closing the listener")
        await self.restart(reason)

    async def shutdown(
        self, code: int = 1001, reason: str = "", *, drain_window: float | None = None
    ) -> None:
        """Going away for good: drain every connection with ``code`` (default 1001).

        Args:
            code: close code for every connection; validated for the server side.
            reason: close reason (at most 123 bytes of UTF-8).
            drain_window: seconds to spread the closes over; the server's by default.

        Raises:
            RuntimeError: called from another event loop than the server's (nothing
                changes).
            InvalidCloseCode: ``code`` may not be sent by a server.
            ConfigurationError: ``reason`` does not fit a Close frame, or a bad
                ``drain_window`` (before any I/O).
        """
        self._check_loop()
        validate_send(code, role="server")
        check_reason(reason)
        window = self.drain_window
        if drain_window is not None:
            window = check_window(drain_window, "drain_window")
        await self._start_drain(code, reason, window)

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown(CloseCode.GOING_AWAY, "server stopped")

    def __await__(self) -> Generator[Any, None, None]:
        return self.serve_forever().__await__()

    # -- draining ------------------------------------------------------------------------------

    def _check_loop(self) -> None:
        """Refuse a call from another event loop than the one the server runs on.

        Its tasks and futures belong to that loop: awaited here they would fail late
        ("attached to a different loop"), after a timeout, with the state half-changed.
        """
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "the server runs on another event loop; call it from that loop"
                " (e.g. asyncio.run_coroutine_threadsafe(server.shutdown(), loop))"
            )

    async def _start_drain(self, code: int, reason: str, window: float) -> None:
        self._check_loop()
        if self._drain_task is None and self._starting and not self._starting.done():
            # A start under way: drain what it starts (else this would call the server
            # closed, and the start then make it serve, listening with nothing to stop it).
            await asyncio.shield(self._starting)
        if self._drain_task is None:
            if self._state is ServerState.NEW:
                # Never started: nothing to drain, and it will not start any more
                # (docs/server.md, "Life cycle"). Undone as a failed start is: closed,
                # and a store serve() opened from a URL closed with it.
                await self._undo_start()
                return
            if self._state is ServerState.CLOSED:
                return  # (a failed start, already undone)
            # Stop accepting *now*, before the first await: /healthz turns 503 at once.
            self._state = ServerState.DRAINING
            self._drain_close = (code, reason)
            self._drain_task = asyncio.ensure_future(self._drain(code, reason, window))
        await asyncio.shield(self._drain_task)

    async def _drain(self, code: int, reason: str, window: float) -> None:
        loop = asyncio.get_running_loop()
        self._state = ServerState.DRAINING
        assert self._ws_server is not None
        if self.reuse_port:
            # Another process shares the port (the handover): close our listener so the
            # kernel sends every new connection to it instead of to a 503 here.
            self._ws_server.server.close()
        records = [r for r in self._connections.values() if r.transport.closed is None]
        for listed in records:
            # No more pings: every connection is closed within the window, and a dead
            # link among them fails its close within close_timeout (with the defaults
            # 5 + 10 s, sooner than the heartbeat's interval + timeout of 15 + 10 s).
            # A 10,000-connection drain spent 5 % of its CPU on pings
            # (docs/benchmarks-history.md, twentieth session).
            if listed.heartbeat is not None:
                listed.heartbeat.stop()
        logger.info(
            "draining %d connection(s) with %d over %.1f s",
            len(records),
            code,
            window,
            extra={"tether": {"event": "drain", "code": code, "connections": len(records),
                              "window": window}},
        )  # fmt: skip
        closing: list[asyncio.Task[None]] = []
        schedule = DrainSchedule(len(records), window, loop.time())
        queue = iter(records)
        while (deadline := schedule.next_deadline()) is not None:
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for _ in range(schedule.due(loop.time())):
                record = next(queue, None)
                if record is not None and record.transport.closed is None:
                    closing.append(asyncio.ensure_future(self._close_record(record, code, reason)))
        if closing:
            # Each close is bounded by the engine's close_timeout; allow a little slack.
            await asyncio.wait(closing, timeout=self.close_timeout + 1.0)
        await self._stop_listening(code, reason)
        try:
            await self.layer.stop()
        except Exception:
            logger.exception("stopping the session layer failed")
        self._remove_signal_handlers()
        self._state = ServerState.CLOSED
        self._closed.set()
        logger.info("server closed", extra={"tether": {"event": "closed"}})

    async def _close_record(self, record: _Connection, code: int, reason: str) -> None:
        record.cause = "restart" if code == CloseCode.SERVICE_RESTART else "shutdown"
        try:
            if record.session is not None:
                # Through the layer, which may say goodbye first (tether.v1: goaway) and
                # may keep the session for a resume elsewhere: only the connection ends.
                await self.layer.drain(record.session, record.transport, code, reason)
            else:
                await record.transport.close(code, reason)
        except Exception:
            logger.exception("closing a connection failed; aborting it")
            record.transport.abort()

    async def _stop_listening(self, code: int, reason: str) -> None:
        assert self._ws_server is not None
        # Sessions a layer kept for a later connection end here: this process is done
        # with them (what must survive is in the layer's store), so their handlers return.
        for session in list(self._handlers):
            session.end(ClosedInfo(code, reason, clean=True, sent_code=code))
        self._ws_server.close(close_connections=False)
        for connection in list(self._opening):
            # Accepted, and still without a handshake now that the drain is over (a
            # request sent meanwhile got its 503 at once): an idle TCP connection.
            # websockets would wait open_timeout for it, past close_timeout, and then,
            # its task cancelled, leave the socket open for good.
            connection.transport.abort()
        handlers = set(self._handlers.values())
        waiting = {asyncio.ensure_future(self._ws_server.wait_closed()), *handlers}
        _, pending = await asyncio.wait(waiting, timeout=self.close_timeout)
        if pending:
            # Handlers that ignore their session's end would keep us forever: bound it.
            left = [t for t in (*handlers, *self._ws_server.handler_tasks) if not t.done()]
            logger.warning("cancelling %d handler(s) still running after the drain", len(left))
            for record in list(self._connections.values()):
                record.transport.abort()
            for task in left:
                task.cancel()
            await asyncio.wait([*left, *pending], timeout=self.close_timeout)

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        actions: dict[signal.Signals, Callable[[], Awaitable[None]]] = {
            signal.SIGHUP: lambda: self.restart("SIGHUP: restarting"),
            signal.SIGTERM: lambda: self.shutdown(self.shutdown_code, "SIGTERM: restarting"),
            signal.SIGINT: lambda: self.shutdown(CloseCode.GOING_AWAY, "SIGINT: going away"),
        }
        for signum, action in actions.items():
            loop.add_signal_handler(signum, self._on_signal, signum, action)
            self._signals.append(signum)

    def _on_signal(self, signum: signal.Signals, action: Callable[[], Awaitable[None]]) -> None:
        extra = {"tether": {"event": "signal", "signal": signum.name}}
        logger.info("received %s", signum.name, extra=extra)
        # The drain that follows ends the process: a layer whose sessions live in
        # this process only (memory store) tells clients not to try resuming.
        self.layer.process_exiting()
        task = asyncio.ensure_future(action())
        self._background(task)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals.clear()

    def _background(self, task: asyncio.Task[Any]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # -- HTTP ----------------------------------------------------------------------------------

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # The layer's subprotocol when offered, else none at all: a plain client (a
        # browser's `new WebSocket(url)`, Node ws) still connects, in plain mode.
        # (websockets' default would refuse a client that offers no subprotocol.)
        for name in self.layer.subprotocols:
            if name in offered:
                return Subprotocol(name)
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if not upgrade:
            if self.health_path is not None and path == self.health_path:
                return self._health_response(connection)
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if self._state is not ServerState.SERVING:
            # Refuse cleanly rather than accept and close at once (which would cost the
            # client a reconnect attempt) or hang: the client retries elsewhere or later.
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "Service restarting.\n"
            )
            response.headers["Retry-After"] = str(_RETRY_AFTER_S)
            return response
        return None

    def _health_response(self, connection: ServerConnection) -> Response:
        serving = self._state is ServerState.SERVING
        status = http.HTTPStatus.OK if serving else http.HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(
            {"status": self._state.value, "pid": os.getpid(), "connections": len(self._connections)}
        )
        response = connection.respond(status, body + "\n")
        # (websockets' Headers append on assignment: respond()'s text/plain goes first.)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- connections ---------------------------------------------------------------------------

    async def _on_connection(self, connection: ServerConnection) -> None:
        # This runs in websockets' task for the connection, and so does a plain
        # session's handler: no task or future of tether's per idle plain connection,
        # only the heartbeat's timer. (Each frame of this await chain stays in memory
        # for as long as the connection is open: keep the chain short.)
        self._opening.discard(connection)
        transport = WebsocketsTransport(connection)
        # websockets keeps the 101 response (status line, headers as a dict of lists
        # and a list) for the connection's life; after the handshake nothing reads it
        # (tether exposes no websockets connection): ~1 KiB per idle connection.
        connection.response = None
        request = RequestInfo(
            path=connection.request.path if connection.request is not None else "/",
            headers=_RequestHeaders(connection),
            remote_address=transport.remote_address,
            subprotocol=connection.subprotocol,
        )
        record = _Connection(transport, request, opened_at=connection.loop.time())
        self._connections[transport] = record
        session: Session | None = None
        try:
            if self._state is not ServerState.SERVING:
                # The upgrade passed process_request just before the drain started:
                # it gets what everybody else gets.
                record.cause = "draining"
                code, reason = self._drain_close or (self.shutdown_code, "")
                await transport.close(code, reason)
                self._log_close(record, transport.closed)
                return
            if self.heartbeat.enabled:
                record.heartbeat = HeartbeatTimer(transport, self.heartbeat, on_dead=record.culled)
                record.heartbeat.start()
            try:
                session = await self.layer.open(transport, request)
            except ProtocolError as exc:
                record.cause = "protocol"
                # A layer's error code still goes through the wire check (never 1006 & co).
                code = exc.close_code if may_send(exc.close_code, role="server") else 1002
                await transport.close(code, str(exc)[:60])
                self._log_close(record, transport.closed)
                return
            except TransportClosed:
                # Gone before its session opened (tether.v1: before its hello): a
                # close like any other, not a failure of this handler.
                self._log_close(record, transport.closed)
                return
            record.session = session
            self._log_open(record, session)
            if not self.layer.is_plain(session, transport):
                # A session the layer carries (tether.v1) outlives its connections: its
                # handler runs in a task of its own (one per session, started by its
                # first connection) and reads the connection itself, a reader task only
                # while needed. This task only waits for the connection's end; the
                # handler's end closes the connection (_run_handler). (Inline, not a
                # helper coroutine: one frame less per idle connection.)
                link_end = record.pump = session.attach(transport)
                if record.heartbeat is not None:
                    # A pong waits behind unread messages: read them into the inbox, also
                    # while the handler reads slowly (and while a full inbox holds reading
                    # back, an overdue pong is no sign of a dead link).
                    record.heartbeat.on_ping = session.read_for_ping
                    record.heartbeat.reading = session.reading
                if self._state is not ServerState.SERVING and session not in self._handlers:
                    # Opened while the drain began (the layer waited for its store): the
                    # drain no longer waits for new handlers, so none may start; the
                    # connection gets the drain's close, the session stays in the store.
                    await self._close_unserved(record, session)
                elif session not in self._handlers:
                    self._handlers[session] = asyncio.ensure_future(
                        self._run_handler(session, self._handler_for(session))
                    )
                info = await link_end
                record.pump = None
                self._log_close(record, info)
                return
            # Plain: the handler reads the connection itself, here. The session ends,
            # and the close is logged, when the connection closes, even while the
            # handler is busy elsewhere.
            session.attach_plain(
                transport, also=functools.partial(self._plain_connection_closed, record)
            )
            # Registered like any handler, so that the drain ends and waits for it.
            task = asyncio.current_task()
            assert task is not None
            self._handlers[session] = task
            try:
                try:
                    await self.handler(session)
                except ConnectionClosed:
                    if session.closed is None:
                        await self._handler_failed(session, record)
                except Exception:
                    await self._handler_failed(session, record)
                else:
                    if session.closed is None:
                        await session.close(CloseCode.NORMAL_CLOSURE)
            finally:
                del self._handlers[session]
                try:
                    await self.layer.finish(session)
                except Exception:
                    logger.exception("settling session %s failed", session.id)
            if transport.closed is None:
                # The handler is done, so is the connection (the session was ended
                # without closing it).
                ended = session.closed
                code = ended.code if ended and may_send(ended.code, role="server") else 1000
                await transport.close(code)
        finally:
            if record.heartbeat is not None:
                record.heartbeat.stop()
            if record.pump is not None:
                record.pump.cancel()
            self._connections.pop(transport, None)

    async def _close_unserved(self, record: _Connection, session: Session) -> None:
        code, reason = self._drain_close or (self.shutdown_code, "")
        await self._close_record(record, code, reason)
        record.cause = "draining"
        try:
            await self.layer.finish(session)
        except Exception:
            logger.exception("settling session %s failed", session.id)

    def _plain_connection_closed(self, record: _Connection, info: ClosedInfo) -> None:
        # The connection is gone even if the handler still runs: it is no longer
        # counted, drained or aborted.
        if self._connections.get(record.transport) is record:
            del self._connections[record.transport]
        if record.heartbeat is not None:
            record.heartbeat.stop()
        self._log_close(record, info)

    def _handler_for(self, session: Session) -> Handler:
        """The application's handler, unless it already ended this session elsewhere.

        (Its client was away when it ended, and came back to this process: the
        layer replays what the handler sent, then the session closes as the handler
        closed it. Starting the handler again would run it twice for one session.)
        """
        ended = self.layer.handler_ended(session)
        if ended is None:
            return self.handler
        code, reason = ended
        logger.info(
            "session %s: its handler ended it (%d) while its client was away; closing after"
            " the replay",
            session.id,
            code,
        )

        async def close_as_ended(session: Session) -> None:
            await session.close(code, reason)

        return close_as_ended

    async def _run_handler(self, session: Session, handler: Handler) -> None:
        try:
            await handler(session)
        except ConnectionClosed:
            if session.closed is None:
                await self._handler_failed(session, None)
        except Exception:
            await self._handler_failed(session, None)
        else:
            if session.closed is None:
                await session.close(CloseCode.NORMAL_CLOSURE)
        finally:
            try:
                await self.layer.finish(session)
            except Exception:
                logger.exception("settling session %s failed", session.id)
            if self._handlers.get(session) is asyncio.current_task():
                del self._handlers[session]
            transport = session.transport
            if transport is not None:
                # The handler is done, so is the connection (whatever the layer kept);
                # nobody reads it any more, but its close handshake and end need it.
                session.read_ahead(keep=True)
                if transport.closed is None:
                    ended = session.closed
                    code = ended.code if ended and may_send(ended.code, role="server") else 1000
                    await transport.close(code)

    async def _handler_failed(self, session: Session, record: _Connection | None) -> None:
        """Log the handler's exception (the one being handled) and close with 1011."""
        if record is not None:
            record.cause = "handler error"
        else:
            for other in self._connections.values():
                if other.session is session and other.transport is session.transport:
                    other.cause = "handler error"
        logger.exception("handler failed for session %s; closing with 1011", session.id)
        if session.closed is None:
            await session.close(CloseCode.INTERNAL_ERROR, "internal error")

    # -- logging -------------------------------------------------------------------------------

    def _log_open(self, record: _Connection, session: Session) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return  # (the structured fields cost more than the call)
        logger.info(
            "connect %s session=%s path=%s",
            _address(record.request.remote_address),
            session.id,
            record.request.path,
            extra={"tether": {"event": "connect", "session": session.id,
                              "remote": _address(record.request.remote_address),
                              "path": record.request.path}},
        )  # fmt: skip

    def _log_close(self, record: _Connection, info: ClosedInfo | None) -> None:
        if record.logged:
            return
        record.logged = True
        if not logger.isEnabledFor(logging.INFO):
            return
        duration = asyncio.get_running_loop().time() - record.opened_at
        code = info.code if info is not None else CloseCode.ABNORMAL_CLOSURE
        clean = info.clean if info is not None else False
        sent = info.sent_code if info is not None else None
        # A close this side started with no cause of its own (the handler closed or
        # returned, the session layer closed: 4901, 4202...) is the server's.
        cause = record.cause
        if cause is None:
            # (Our Close and no answer to it: ours too.)
            first = record.transport.peer_closed_first
            ours = first is False or (first is None and sent is not None and not clean)
            cause = "server" if ours else "client"
        # The line and its fields say the same: each worked out once (a drain logs
        # thousands of these, one per connection it closes).
        remote = _address(record.request.remote_address)
        session = record.session
        explanation = summary(code)
        logger.info(
            "close %s session=%s code=%d (%s) clean=%s sent=%s by=%s after %.1f s",
            remote,
            session.id if session is not None else "-",
            code,
            explanation,
            "yes" if clean else "no",
            sent if sent is not None else "-",
            cause,
            duration,
            extra={"tether": {"event": "close", "code": code, "clean": clean, "sent": sent,
                              "cause": cause, "duration": round(duration, 3),
                              "session": session.id if session else None,
                              "remote": remote, "explanation": explanation}},
        )  # fmt: skip


class _RequestHeaders(Mapping[str, str]):
    """The opening request's headers, repeated ones joined by ", ".

    Looked up whatever the case of the name (``headers["Authorization"]``), as HTTP
    field names are case-insensitive (RFC 9110 §5.1); iterated lower-cased.

    A view of what websockets keeps for the connection anyway, built into a dict
    only when a handler first looks (one dict per connection otherwise).
    """

    __slots__ = ("_connection", "_headers")

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self._headers: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        if self._headers is None:
            headers: dict[str, str] = {}
            request = self._connection.request
            if request is not None:
                for name, value in request.headers.raw_items():
                    key = name.lower()
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
            self._headers = headers
            self._connection = None  # type: ignore[assignment]
        return self._headers

    def __getitem__(self, key: str) -> str:
        return self._dict()[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())


def _tracking(opening: set[ServerConnection]) -> type[ServerConnection]:
    """websockets' connection class, registering each connection in ``opening``.

    From the accept until the connection is gone; the server takes it out once the
    opening handshake is done (``Server._on_connection``), so that idle connections
    that never sent a request can be found at the end of a drain.
    """

    class OpeningTracked(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            opening.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            opening.discard(self)
            super().connection_lost(exc)

    return OpeningTracked


def _address(address: tuple[object, ...] | None) -> str:
    if not address:
        return "?"
    host, port = address[0], address[1] if len(address) > 1 else "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _check_host(host: object) -> None:
    """Refuse a ``host`` the bind would fail on with a raw TypeError."""
    if host is None or isinstance(host, str):
        return
    # (The event loop also binds to several interfaces given as a list of names.)
    if isinstance(host, (list, tuple)) and host and all(isinstance(h, str) for h in host):
        return
    raise ConfigurationError(f"host must be an interface name or address or None, not {host!r}")


def _check_port(port: object) -> int | None:
    """``port`` as an int: an integer 0..65535, its decimal digits as a string, or None.

    The string is for ``serve(handler, host, os.environ["PORT"])``, which the event
    loop's bind always took. Nothing else a bind might resolve is taken (a service
    name, a sign, spaces), nor a float (which the bind never took) or a bool.
    """
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ConfigurationError(
            f"port must be an integer 0..65535 (or its decimal digits as a string) or None,"
            f" not {port!r}"
        )
    if port is not None and not 0 <= port <= _MAX_PORT:
        raise ConfigurationError(f"port must be 0..65535 or None, not {port!r}")
    return port


def _check_close_timeout(close_timeout: object) -> None:
    """Refuse a ``close_timeout`` that is not a finite number of seconds > 0.

    Unlike ``connect(close_timeout=None)`` (one client waiting for its own close),
    None is refused: the server's drain must end (DESIGN.md §6), and one peer that
    never answers its Close would otherwise keep a restart from ever finishing.
    """
    if isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float)):
        raise ConfigurationError(
            f"close_timeout must be a finite number of seconds > 0 (a drain is bounded),"
            f" not {close_timeout!r}"
        )
    if not (is_finite_number(close_timeout) and close_timeout > 0):
        raise ConfigurationError(
            f"close_timeout must be a finite number of seconds > 0, not {close_timeout!r}"
        )


def _check_origins(
    origins: Sequence[str | re.Pattern[str] | None] | None,
) -> list[str | re.Pattern[str] | None] | None:
    """Validate ``serve(origins=)``; returns it as a list (None: no check)."""
    if origins is None:
        return None
    if isinstance(origins, (str, re.Pattern)):
        raise ConfigurationError("origins must be a list of origins, not one origin")
    checked = list(origins)
    for origin in checked:
        if origin is not None and not isinstance(origin, (str, re.Pattern)):
            raise ConfigurationError(
                f"origins must hold strings, re.Pattern objects or None, not {origin!r}"
            )
    return checked


def serve(
    handler: Handler,
    host: str | None = None,
    port: int | str | None = None,
    *,
    heartbeat: Heartbeat | None = Heartbeat(15.0, 10.0),  # noqa: B008 - frozen, shared safely
    drain_window: float = 5.0,
    shutdown_code: int = 1012,
    reuse_port: bool = False,
    backlog: int = DEFAULT_BACKLOG,
    max_size: int | None = 2**20,
    open_timeout: float | None = 10.0,
    close_timeout: float = 10.0,
    compression: str | None = None,
    handle_signals: bool = False,
    health_path: str | None = "/healthz",
    origins: Sequence[str | re.Pattern[str] | None] | None = None,
    layer: ServerLayer | None = None,
    store: str | SessionStore | None = "memory",
    resume_window: float = 120.0,
    principal: PrincipalHook | None = None,
    resume_limit: ResumeLimit | None = ResumeLimit(),  # noqa: B008 - frozen, shared safely
    store_timeout: float = 10.0,
) -> Server:
    """Create a tether WebSocket server; use it with ``async with`` or ``await``.

    Args:
        handler: coroutine run once per session; it receives the
            :class:`~tether.Session`.
        host: interface to bind (None: all).
        port: TCP port (0: any free port, see :attr:`Server.port`); a string of
            decimal digits (``os.environ["PORT"]``) is taken as that number.
        heartbeat: ping interval and pong timeout in seconds; a connection whose
            pong is overdue is dropped and its session ends with 1006. None disables.
        drain_window: seconds over which a restart spreads its closes.
        shutdown_code: code SIGTERM closes with: 1012 by default, since a deploy
            is a restart; use 1001 for "going away".
        reuse_port: bind with ``SO_REUSEPORT`` so another process can share the
            port during a handover; the drain then closes the listener at once.
        backlog: listen backlog (DESIGN.md §10: large, for reconnect storms).
        max_size: largest incoming message in bytes (None: no limit; 1009 beyond).
        open_timeout: seconds allowed for the opening handshake (None: no limit).
        close_timeout: seconds allowed for each closing handshake, and for
            handlers to return after the drain.
        compression: ``"deflate"`` to offer permessage-deflate; off by default
            (DESIGN.md §10: 17-45x slower on large messages, 3x the memory).
        handle_signals: install SIGHUP (restart), SIGTERM (shutdown with
            ``shutdown_code``) and SIGINT (shutdown with 1001) handlers.
        health_path: path of the health endpoint (None disables it).
        origins: ``Origin`` header values admitted to the WebSocket handshake, against
            cross-site WebSocket hijacking by pages in a victim's browser: exact strings
            (``"https://app.example"``), compiled ``re.Pattern`` objects (must match the
            whole header) and None (admits clients that send no ``Origin``, i.e. most
            non-browser clients). Any other request is answered HTTP 403 before a
            session or handler exists. None (the default) checks nothing.
        layer: the session layer; overrides ``store``, ``resume_window`` and ``principal``.
        store: where tether.v1 sessions live (``docs/protocol.md``): ``"memory"``
            (this server object only), a URL (``sqlite:///path``, ``redis://host:port/db``)
            or a :class:`~tether.stores.base.SessionStore` object (pass the same
            object to the next ``serve()`` to resume across a restart in one
            process). None: plain WebSocket only, no resumption. Clients that do
            not offer ``tether.v1`` get plain sessions either way.
        resume_window: seconds a disconnected tether.v1 session is kept.
        principal: ``principal(request) -> str | None`` (may be async): who the
            client is; a session can only be resumed by the same principal.
        resume_limit: refused resumes allowed per remote address (IPv6: per /64), 20 per
            60 s by default; beyond it resumes are refused with ``rate_limited`` before
            the store is read (docs/security.md). None: no limit.
        store_timeout: seconds a tether.v1 session waits for the store to take a
            write it failed (retried meanwhile; nothing it covers is sent or
            acknowledged) before it is ended with 1011 and its client resumes.

    Raises:
        ConfigurationError: a bad setting.
        InvalidCloseCode: ``shutdown_code`` may not be sent by a server.
    """
    built = False
    if layer is None and store is not None:
        built = True
        layer = TetherV1ServerLayer(
            store=store,
            resume_window=resume_window,
            principal=principal,
            resume_limit=resume_limit,
            store_timeout=store_timeout,
        )
    server = Server(
        handler,
        host,
        port,
        heartbeat=heartbeat,
        drain_window=drain_window,
        shutdown_code=shutdown_code,
        reuse_port=reuse_port,
        backlog=backlog,
        max_size=max_size,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        compression=compression,
        handle_signals=handle_signals,
        health_path=health_path,
        layer=layer,
        origins=origins,
    )
    server._layer_from_serve = built
    return server
