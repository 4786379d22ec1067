"""A TCP proxy that injects the faults behind close code 1006 (``tether chaos``).

Put it between any WebSocket client and server (it forwards bytes, it does not
parse WebSocket frames) and it kills connections (RST: both peers report 1006),
blackholes them (stops forwarding both ways while keeping both sockets open: a
half-open link only a heartbeat detects), kills idle ones like a load balancer,
and adds latency, jitter and a bandwidth limit. The decisions come from the
sans-I/O :mod:`tether.faults`; this module only moves bytes and keeps time.

In tests::

    async with ChaosProxy(("127.0.0.1", 0), ("127.0.0.1", server_port), idle_timeout=3) as proxy:
        async with websockets.connect(f"ws://127.0.0.1:{proxy.port}") as ws:
            proxy.blackhole_all()   # faults at a chosen moment
            ...
            proxy.heal()

Memory stays bounded: while a connection is blackholed (or a slow direction
backs up) the proxy stops reading from the socket, so TCP flow control pushes
back on the sender instead of the proxy buffering without limit.

Every fault is logged on the ``tether.chaos`` logger with a ``chaos`` attribute
holding a JSON-ready dict, and appended to :attr:`ChaosProxy.faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import struct
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from ..exceptions import ConfigurationError
from ..faults import ConnectionFaults, Fault, FaultKind, FaultPlan, Shaper
from .waiters import bounded

__all__ = ["ChaosProxy", "FaultRecord", "logger"]

logger = logging.getLogger("tether.chaos")

#: Chunks queued per direction between reading and (delayed) writing. With at
#: most 64 KiB per chunk this bounds the proxy's own buffer per direction.
_QUEUE_CHUNKS = 8


@dataclass(frozen=True)
class FaultRecord:
    """One fault the proxy injected (or healed).

    Attributes:
        kind: ``kill``, ``blackhole`` or ``heal``.
        reason: ``kill_after``, ``kill_random``, ``blackhole_after``,
            ``idle_timeout`` or ``manual``.
        connection: the proxy's number for the connection (from 1).
        client: the client's address as ``host:port``.
        age: seconds since the connection was accepted.
        time: wall-clock time of the fault (Unix seconds).
    """

    kind: str
    reason: str
    connection: int
    client: str
    age: float
    time: float

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict with ``"event": "fault"``."""
        return {"event": "fault", **asdict(self)}


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Drop the TCP connection with a RST, not a FIN: the peer sees an abortive close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # SO_LINGER on with a zero timeout makes close() send RST (RFC 793 "abort").
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _ProxiedConnection:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        proxy: ChaosProxy,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        faults: ConnectionFaults,
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.faults = faults
        self.client_name = _format_address(self.client_writer.get_extra_info("peername"))
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.finished = asyncio.Event()
        self.aborted = False

    @property
    def blackholed(self) -> bool:
        """True while nothing is forwarded."""
        return not self._flowing.is_set()

    async def run(self) -> None:
        """Forward both directions until both end or the connection is killed."""
        plan = self.proxy.plan
        rng = self.proxy.rng
        self._tasks = [
            asyncio.create_task(
                self._pump(self.client_reader, self.upstream_writer, Shaper(plan, rng))
            ),
            asyncio.create_task(
                self._pump(self.upstream_reader, self.client_writer, Shaper(plan, rng))
            ),
        ]
        timer = asyncio.create_task(self._timer())
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            if not self.aborted:
                for writer in (self.client_writer, self.upstream_writer):
                    writer.close()
            self.finished.set()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaper: Shaper
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        deliver = asyncio.create_task(self._deliver(queue, writer))
        try:
            while True:
                # While blackholed, do not even read: the kernel buffers fill and TCP
                # flow control stalls the sender (bounded memory, like a dead path).
                await self._flowing.wait()
                data = await reader.read(shaper.max_chunk)
                now = self._loop.time()
                if not data:
                    await queue.put(None)
                    break
                self.faults.activity(now)
                await queue.put((shaper.schedule(now, len(data)), data))
            await deliver
        except (ConnectionError, OSError):
            # One side reset (or vanished): pass the abortive close on to the other side.
            self.abort()
        finally:
            if not deliver.done():
                deliver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deliver

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    # Half-close: the sender finished; tell the receiver (FIN), keep the
                    # other direction open as TCP allows.
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return
                deliver_at, data = item
                delay = deliver_at - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            self.abort()

    async def _timer(self) -> None:
        while True:
            deadline = self.faults.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - self._loop.time()))
            fault = self.faults.handle_timer(self._loop.time())
            if fault is not None:
                self.apply(fault)

    def apply(self, fault: Fault) -> None:
        """Inject ``fault`` now and log it."""
        if self.aborted:
            return
        if fault.kind is FaultKind.KILL:
            self.proxy._record(self, fault)
            self.abort()
        elif fault.kind is FaultKind.BLACKHOLE:
            if self.blackholed:
                return
            self.proxy._record(self, fault)
            self._flowing.clear()
        elif fault.kind is FaultKind.HEAL:
            if not self.blackholed:
                return
            self.proxy._record(self, fault)
            self._flowing.set()

    def abort(self) -> None:
        """Reset both TCP connections and stop forwarding."""
        if self.aborted:
            return
        self.aborted = True
        for writer in (self.client_writer, self.upstream_writer):
            _abort_with_rst(writer)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()


class ChaosProxy:
    """An asyncio TCP proxy that injects faults; an async context manager.

    Args:
        listen: ``(host, port)`` to listen on; port 0 picks a free port (see
            :attr:`port`). Only this address is bound; the default is loopback.
        upstream: ``(host, port)`` of the server to forward to.
        kill_after: abort each connection this many seconds after it opened.
        kill_random: probability (0-1) per second that a connection is aborted.
        blackhole_after: stop forwarding this many seconds after a connection opened.
        idle_timeout: abort connections idle (no byte either way) this many seconds.
        latency_ms: delay added in each direction, in milliseconds.
        jitter_ms: the delay varies by ± this much; byte order is always kept.
        bandwidth_kbps: limit per direction and per connection, in kilobits/second.
        rng: the random source (``kill_random``, jitter); seed it for repeatable runs.

    Raises:
        ConfigurationError: a setting is out of range or ``upstream`` is missing.
    """

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        upstream: tuple[str, int] | None = None,
        *,
        kill_after: float | None = None,
        kill_random: float | None = None,
        blackhole_after: float | None = None,
        idle_timeout: float | None = None,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        bandwidth_kbps: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if upstream is None:
            raise ConfigurationError("ChaosProxy needs upstream=(host, port)")
        self.listen = (listen[0] or "127.0.0.1", int(listen[1]))
        self.upstream = (upstream[0], int(upstream[1]))
        self.plan = FaultPlan(
            kill_after=kill_after,
            kill_random=kill_random,
            blackhole_after=blackhole_after,
            idle_timeout=idle_timeout,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            bandwidth_kbps=bandwidth_kbps,
        )
        self.rng = rng if rng is not None else random.Random()
        #: Every fault injected so far, oldest first.
        self.faults: list[FaultRecord] = []
        self._server: asyncio.Server | None = None
        self._connections: set[_ProxiedConnection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._fault_event: asyncio.Event | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening."""
        self._fault_event = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])
        logger.info(
            "chaos proxy listening on %s, forwarding to %s",
            _format_address(self.address),
            _format_address(self.upstream),
            extra={
                "chaos": {
                    "event": "listen",
                    "listen": _format_address(self.address),
                    "upstream": _format_address(self.upstream),
                    "plan": asdict(self.plan),
                }
            },
        )

    async def close(self) -> None:
        """Stop listening and drop every connection (RST)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        """Serve until cancelled (the ``tether chaos`` command)."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` actually listened on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the chaos proxy is not listening; use `async with` or start()")
        sockname = self._server.sockets[0].getsockname()
        return (str(sockname[0]), int(sockname[1]))

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return self.address[1]

    @property
    def active_connections(self) -> int:
        """Connections currently proxied."""
        return len(self._connections)

    # -- runtime controls ---------------------------------------------------------------

    def kill_all(self) -> int:
        """Abort every current connection now (RST both ways); return how many."""
        return self._apply_all(Fault(FaultKind.KILL, "manual"))

    def blackhole_all(self) -> int:
        """Stop forwarding on every current connection, keeping sockets open; return how many.

        New connections are not affected; :meth:`heal` resumes forwarding.
        """
        return self._apply_all(Fault(FaultKind.BLACKHOLE, "manual"))

    def heal(self) -> int:
        """Resume forwarding on every blackholed connection; return how many.

        Nothing read before the blackhole was dropped, so the byte streams stay
        intact (like a network partition that heals before TCP gives up).
        """
        return self._apply_all(Fault(FaultKind.HEAL, "manual"))

    def _apply_all(self, fault: Fault) -> int:
        before = len(self.faults)
        for conn in list(self._connections):
            conn.apply(fault)
        return len(self.faults) - before

    async def wait_fault(
        self, count: int = 1, *, timeout: float | None = None
    ) -> list[FaultRecord]:
        """Wait until at least ``count`` faults were recorded; return them all.

        Raises:
            TimeoutError: fewer faults were injected within ``timeout`` seconds.
        """
        event = self._fault_event
        assert event is not None, "start the proxy first"

        async def enough() -> None:
            while len(self.faults) < count:
                event.clear()
                await event.wait()

        await bounded(enough(), timeout)
        return list(self.faults)

    # -- internals ------------------------------------------------------------------------

    def _record(self, conn: _ProxiedConnection, fault: Fault) -> None:
        self._record_fault(conn.number, conn.client_name, conn.faults.opened_at, fault)

    def _record_fault(self, number: int, client: str, opened_at: float, fault: Fault) -> None:
        record = FaultRecord(
            kind=fault.kind.value,
            reason=fault.reason,
            connection=number,
            client=client,
            age=round(asyncio.get_running_loop().time() - opened_at, 6),
            time=time.time(),
        )
        self.faults.append(record)
        if self._fault_event is not None:
            self._fault_event.set()
        logger.warning(
            "chaos: %s (%s) on connection %d from %s after %.3f s",
            record.kind,
            record.reason,
            record.connection,
            record.client,
            record.age,
            extra={"chaos": record.as_dict()},
        )

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._proxy(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only close() cancels handlers. Ending quietly matters: asyncio's stream
            # server (3.11) calls task.exception() on its handler and would log a
            # cancelled one as an error.
            pass
        finally:
            self._handlers.discard(task)

    async def _proxy(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        number = next(self._numbers)
        client_name = _format_address(client_writer.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        # Faults count from the accept (docs/diagnostics.md): an upstream connect that
        # outlasts kill_after (a server whose backlog is full) is cut when it is due.
        faults = ConnectionFaults(self.plan, loop.time(), self.rng)
        kill_at = faults.kill_at
        try:
            connecting = asyncio.open_connection(*self.upstream)
            if kill_at is None:
                upstream = await connecting
            else:
                upstream = await bounded(connecting, max(0.0, kill_at - loop.time()))
        except OSError as exc:
            # (bounded() ran out: TimeoutError, an OSError; a kill is due now.)
            fault = faults.handle_timer(loop.time()) if isinstance(exc, TimeoutError) else None
            if fault is not None:
                self._record_fault(number, client_name, faults.opened_at, fault)
                _abort_with_rst(client_writer)
                return
            logger.error(
                "chaos: connection %d from %s: upstream %s unreachable: %s",
                number,
                client_name,
                _format_address(self.upstream),
                exc,
                extra={
                    "chaos": {
                        "event": "upstream_error",
                        "connection": number,
                        "client": client_name,
                        "error": str(exc),
                    }
                },
            )
            _abort_with_rst(client_writer)
            return
        conn = _ProxiedConnection(self, number, (client_reader, client_writer), upstream, faults)
        self._connections.add(conn)
        logger.info(
            "chaos: connection %d from %s opened",
            number,
            client_name,
            extra={"chaos": {"event": "open", "connection": number, "client": client_name}},
        )
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            logger.info(
                "chaos: connection %d from %s closed",
                number,
                client_name,
                extra={
                    "chaos": {
                        "event": "close",
                        "connection": number,
                        "client": client_name,
                        "aborted": conn.aborted,
                        "age": round(loop.time() - conn.faults.opened_at, 6),
                    }
                },
            )
