"""``tether.connect``: a WebSocket client that reconnects per close code, pings, and queues sends.

The decisions (when to reconnect, how long to wait, when to give up, which events
to report) live in the sans-I/O :class:`~tether.reconnect.Reconnector`; the
heartbeat deadlines in :class:`~tether.heartbeat.HeartbeatMachine`. This module is
the glue: it opens transports, sleeps until the core's deadlines, moves messages
between the transport and the user-facing queues, and reports results back.

One supervisor task per connection object runs the loop. Per open transport it
runs four helper tasks: reader (transport → inbox), writer (send queue →
transport), heartbeat (pings, dead-link detection) and closer (user close). A
:class:`~tether.asyncio.layer.ClientLayer` sits between the transport and the
queues so that a session layer (tether.v1 resumption) can add a handshake before
OPEN and see every message.

Three forms, one object::

    conn = await tether.connect(url)            # open (retrying per policy), then use
    async with tether.connect(url) as conn: ... # closed with 1000 on exit
    async for msg in conn: ...                  # messages across reconnects
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

from ..backoff import BackoffConfig
from ..closecodes import validate_send
from ..events import Disconnected, Event, GaveUp, Resumed, State
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from ..heartbeat import Heartbeat, HeartbeatMachine, TimerAction
from ..policy import ReconnectPolicy, Rule
from ..reconnect import ConnectFailure, FailureKind, Outcome, Reconnector
from ..resume import ResumeConfig
from .engine import ClosedInfo, Message, Transport, TransportClosed
from .layer import ClientLayer, LayerOpened, PlainLayer
from .sendqueue import QueueClosed, SendQueue
from .websockets_client import OpenFailed, check_url, open_transport

__all__ = ["ClientConnection", "connect"]

logger = logging.getLogger("tether.client")

#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
_MAX_REASON_BYTES = 123

#: Codes that end a connection normally (``ConnectionClosedOK``); the rest are errors.
_OK_CODES = frozenset({1000, 1001})


def connect(
    url: str,
    *,
    policy: ReconnectPolicy | None = None,
    heartbeat: Heartbeat | None = Heartbeat(),  # noqa: B008  (frozen: sharing it is safe)
    resume: bool | ResumeConfig = True,
    max_queue: int | None = 1000,
    send_timeout: float | None = 10.0,
    subprotocols: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    open_timeout: float | None = 10.0,
    close_timeout: float | None = 10.0,
    backoff: BackoffConfig | None = None,
    rng: random.Random | None = None,
    http_rules: Mapping[object, Rule] | None = None,
    compression: str | None = None,
    max_size: int | None = 2**20,
    max_incoming: int | None = 1000,
    layer: ClientLayer | None = None,
    lang: str = "en",
) -> ClientConnection:
    """Connect to a WebSocket server and keep the connection alive.

    Returns a :class:`ClientConnection` that is not started yet: ``await`` it,
    use it with ``async with``, and iterate it with ``async for``. The URL and every
    option are checked here, before any I/O.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        policy: per-close-code reconnect policy (DESIGN.md §4 defaults if None).
        heartbeat: ping interval and pong timeout, seconds; None (or an interval of
            None) disables pings, so dead links are found only by TCP itself.
        resume: offer ``tether.v1`` session resumption (docs/protocol.md): no
            message lost, duplicated or reordered across reconnects when the server
            speaks it; plain WebSocket otherwise. A :class:`~tether.resume.ResumeConfig`
            sets the window, replay buffer bounds and ack triggers. Ignored when
            ``layer`` is given.
        max_queue: most messages held while not OPEN (and not yet written); None: no bound.
        send_timeout: seconds :meth:`ClientConnection.send` waits for queue space
            before raising :class:`~tether.QueueFull`; None waits forever.
        subprotocols: subprotocols to offer, in order of preference.
        headers: extra HTTP headers for the opening handshake (e.g. Authorization).
        open_timeout: seconds allowed for TCP + TLS + opening handshake; None: no bound.
        close_timeout: seconds allowed to flush the queue on :meth:`~ClientConnection.close`,
            and again for the closing handshake; None: no bound.
        backoff: delays, stability period and give-up bounds (attempts, total time).
        rng: randomness for jitter; pass ``random.Random(seed)`` for reproducible delays.
        http_rules: overrides of the HTTP-status table for failed handshakes
            (:data:`tether.reconnect.DEFAULT_HTTP_RULES`).
        compression: ``"deflate"`` to offer permessage-deflate; off by default
            (DESIGN.md §10: 17-45x slower on large messages).
        max_size: largest incoming message in bytes; None: no bound.
        max_incoming: most received messages buffered until :meth:`~ClientConnection.recv`
            takes them; when full, reading from the socket pauses. None: no bound.
        layer: session layer between transport and queues (plain WebSocket if None).
        lang: language of ``Disconnected.explanation``.

    Raises:
        ConfigurationError: a bad URL (chained from the engine's ``InvalidURI``) or option.
    """
    if not isinstance(resume, (bool, ResumeConfig)):
        raise ConfigurationError(f"resume must be True, False or a ResumeConfig, not {resume!r}")
    if layer is None and resume is not False:
        from .resume_client import TetherV1ClientLayer

        config = resume if isinstance(resume, ResumeConfig) else None
        layer = TetherV1ClientLayer(config, rng=rng)
    return ClientConnection(
        url,
        policy=policy,
        heartbeat=heartbeat,
        max_queue=max_queue,
        send_timeout=send_timeout,
        subprotocols=subprotocols,
        headers=headers,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        backoff=backoff,
        rng=rng,
        http_rules=http_rules,
        compression=compression,
        max_size=max_size,
        max_incoming=max_incoming,
        layer=layer,
        lang=lang,
    )


def _check_duration(name: str, value: float | None, *, allow_zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds or None, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds or None, not {value!r}")


class _Buffer:
    """A bounded FIFO of received messages.

    Once ``unbounded`` is set (the user called close()), ``put`` never waits: the
    reader must keep draining the engine so that the closing handshake and the
    TCP close are not stuck behind a full buffer.
    """

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size
        self.items: collections.deque[Message] = collections.deque()
        self.unbounded = False
        self._changed = asyncio.Event()

    async def put(self, message: Message) -> None:
        while not self.unbounded and self.max_size is not None and len(self.items) >= self.max_size:
            await self.wait_changed()
        self.items.append(message)
        self.notify()

    def notify(self) -> None:
        self._changed.set()

    async def wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()


class _EventStream:
    """One subscriber of :meth:`ClientConnection.events`; ends after the connection closed."""

    def __init__(self) -> None:
        self._events: collections.deque[Event] = collections.deque()
        self._ended = False
        self._changed = asyncio.Event()

    def push(self, event: Event) -> None:
        self._events.append(event)
        self._changed.set()

    def end(self) -> None:
        self._ended = True
        self._changed.set()

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._ended:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        return self._events.popleft()


class ClientConnection:
    """A client connection that survives reconnects. Create it with :func:`tether.connect`.

    Attributes:
        url: the server's URL.
        unsent: messages still queued when the connection closed for good (never
            silently dropped: they are listed here and counted in a warning).
    """

    def __init__(
        self,
        url: str,
        *,
        policy: ReconnectPolicy | None,
        heartbeat: Heartbeat | None,
        max_queue: int | None,
        send_timeout: float | None,
        subprotocols: Sequence[str] | None,
        headers: Mapping[str, str] | None,
        open_timeout: float | None,
        close_timeout: float | None,
        backoff: BackoffConfig | None,
        rng: random.Random | None,
        http_rules: Mapping[object, Rule] | None,
        compression: str | None,
        max_size: int | None,
        max_incoming: int | None,
        layer: ClientLayer | None,
        lang: str,
    ) -> None:
        check_url(url)
        if heartbeat is not None and not isinstance(heartbeat, Heartbeat):
            raise ConfigurationError(
                f"heartbeat must be a tether.Heartbeat or None, not {heartbeat!r}"
            )
        if policy is not None and not isinstance(policy, ReconnectPolicy):
            raise ConfigurationError(f"policy must be a tether.ReconnectPolicy, not {policy!r}")
        if backoff is not None and not isinstance(backoff, BackoffConfig):
            raise ConfigurationError(f"backoff must be a tether.BackoffConfig, not {backoff!r}")
        _check_duration("send_timeout", send_timeout, allow_zero=True)
        _check_duration("open_timeout", open_timeout, allow_zero=False)
        _check_duration("close_timeout", close_timeout, allow_zero=False)
        if compression not in (None, "deflate"):
            raise ConfigurationError(f"compression must be None or 'deflate', not {compression!r}")
        if max_incoming is not None and (isinstance(max_incoming, bool) or max_incoming < 1):
            raise ConfigurationError(f"max_incoming must be >= 1 or None, not {max_incoming!r}")
        if max_size is not None and (isinstance(max_size, bool) or max_size < 1):
            raise ConfigurationError(f"max_size must be >= 1 or None, not {max_size!r}")
        if isinstance(subprotocols, str):
            raise ConfigurationError("subprotocols must be a list of names, not one string")
        self.url = url
        self._layer = layer or PlainLayer()
        self._user_subprotocols = list(subprotocols or ())
        self._headers = dict(headers) if headers else None
        self._heartbeat = heartbeat if heartbeat is not None else Heartbeat(None, None)
        self._send_timeout = send_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._compression = compression
        self._max_size = max_size
        self._lang = lang
        self._core = Reconnector(
            policy=policy,
            backoff=backoff,
            rng=rng if rng is not None else random.Random(),
            http_rules=http_rules,
            lang=lang,
        )
        self._queue = SendQueue(max_queue)
        self._inbox = _Buffer(max_incoming)
        self._streams: weakref.WeakSet[_EventStream] = weakref.WeakSet()
        self._supervisor: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # set on OPEN and when finished
        self._close_wakeup = asyncio.Event()
        # Set whenever the layer may have changed (a message in or out): wakes the
        # layer timer and a writer waiting for room in the replay buffer.
        self._layer_changed = asyncio.Event()
        self._close_request: tuple[int, str] | None = None
        self._transport: Transport | None = None
        self._dead_cause = ""
        self._finished = False
        self._closed_exc: ConnectionClosed | None = None
        self._last_disconnect: Disconnected | None = None
        self._last_rtt: float | None = None
        self.unsent: tuple[Message, ...] = ()

    # -- the three forms --------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientConnection:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ConnectionClosed:
            # The contract: iteration ends when the connection is closed for
            # good (final code, local close, or gave up); the reason stays readable
            # through close_code / close_reason / close_exception.
            raise StopAsyncIteration from None

    async def _open(self) -> ClientConnection:
        self.start()
        try:
            await self._settled.wait()
        except BaseException:
            # The caller gave up waiting (cancelled or timed out): do not leave a
            # reconnect loop running that nobody holds.
            self._stop_now()
            raise
        if self._closed_exc is not None and self.state is State.CLOSED:
            raise self._copy_closed()
        return self

    def start(self) -> None:
        """Start connecting in the background (``await``/``async with`` call this)."""
        if self._supervisor is None and not self._finished:
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"tether.client {self.url}"
            )

    # -- public API -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, RECONNECTING or CLOSED."""
        return State.CLOSED if self._finished else self._core.state

    @property
    def attempt(self) -> int:
        """Connection attempts made so far."""
        return self._core.attempt

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol negotiated on the current connection, if any."""
        return self._transport.subprotocol if self._transport is not None else None

    @property
    def latency(self) -> float | None:
        """Round-trip time of the last answered ping, in seconds."""
        return self._last_rtt

    @property
    def close_exception(self) -> ConnectionClosed | None:
        """What :meth:`recv` raises once closed for good (None while not closed)."""
        return self._closed_exc

    @property
    def close_code(self) -> int | None:
        """The close code of the last connection that ended, if any."""
        return self._last_disconnect.code if self._last_disconnect else None

    @property
    def close_reason(self) -> str | None:
        """The close reason of the last connection that ended, if any."""
        return self._last_disconnect.reason if self._last_disconnect else None

    @property
    def queued(self) -> int:
        """Messages waiting in the send queue."""
        return len(self._queue)

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        While the connection is not OPEN the message is queued and goes out, in
        order, right after the next (re)connect. When ``max_queue`` messages wait,
        this waits up to ``send_timeout`` for space.

        Raises:
            QueueFull: the queue stayed full for ``send_timeout`` seconds.
            ConnectionClosed: the connection is closed for good, or closing.
            TypeError: ``message`` is neither text nor bytes.
        """
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        if self._finished:
            raise self._copy_closed()
        if self._close_request is not None:
            code, reason = self._close_request
            raise ConnectionClosedOK(code, reason, "close() was called; no more sends")
        try:
            await self._queue.put(message, timeout=self._send_timeout)
        except QueueClosed:
            raise self._copy_closed() from None

    async def flush(self) -> None:
        """Wait until every queued message was handed to the network.

        Returns early, with messages left in :attr:`unsent`, if the connection
        closes for good meanwhile. Combine with ``asyncio.wait_for`` to bound it.

        Raises:
            ConnectionClosedError: the connection was never started (nothing would send).
        """
        if self._supervisor is None and self._queue and not self._finished:
            raise ConnectionClosedError(
                None, "", "the connection was never started: await it or use `async with`"
            )
        await self._queue.wait_empty()

    async def recv(self) -> Message:
        """Return the next message, waiting across reconnects.

        Raises:
            ConnectionClosed: closed for good and every received message was returned;
                carries the code, reason and an explanation.
        """
        while True:
            if self._inbox.items:
                message = self._inbox.items.popleft()
                self._inbox.notify()
                return message
            if self._finished:
                raise self._copy_closed()
            if self._supervisor is None:
                raise ConnectionClosedError(
                    None, "", "the connection was never started: await it or use `async with`"
                )
            await self._inbox.wait_changed()

    def events(self) -> AsyncIterator[Event]:
        """Iterate over the events reported from now on; ends once the connection is closed."""
        stream = _EventStream()
        if self._finished:
            stream.end()
        else:
            self._streams.add(stream)
        return stream

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: flush the queue (bounded), run the closing handshake, stop reconnecting.

        While reconnecting, the pending attempt or wait is cancelled at once.

        Args:
            code: close code; reserved codes (1005, 1006, 1015, ...) and server-only
                codes (1012-1014) are refused.
            reason: UTF-8 text of at most 123 bytes.

        Raises:
            InvalidCloseCode: ``code`` may not be sent by a client (checked before any I/O).
            ConfigurationError: ``reason`` is too long.
        """
        validate_send(code, role="client")
        if not isinstance(reason, str) or len(reason.encode()) > _MAX_REASON_BYTES:
            raise ConfigurationError(
                f"close reason must be text of at most {_MAX_REASON_BYTES} UTF-8 bytes "
                "(RFC 6455 §5.5)"
            )
        if self._close_request is None and not self._finished:
            self._close_request = (code, reason)
            self._inbox.unbounded = True
            self._inbox.notify()
            loop = asyncio.get_running_loop()
            self._core.close_requested(loop.time())
            self._close_wakeup.set()
        if self._supervisor is None:
            self._finish(ConnectionClosedOK(code, reason, "closed before it was started"))
            return
        # Shielded: if the caller is cancelled, the closing handshake still completes.
        await asyncio.shield(self._supervisor)

    # -- supervisor -------------------------------------------------------------------

    def _stop_now(self) -> None:
        if self._close_request is None:
            self._close_request = (1000, "")
            self._inbox.unbounded = True
            self._core.close_requested(asyncio.get_running_loop().time())
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            attempt: int | None = self._core.start(loop.time())
            logger.info("connecting to %s", self.url)
            while attempt is not None:
                await self._run_attempt(attempt)
                attempt = await self._next_attempt()
        except asyncio.CancelledError:
            pass
        except Exception:
            # A bug in tether: report it loudly, but never let it escape into the loop.
            logger.exception("tether client for %s stopped on an unexpected error", self.url)
        finally:
            self._finish(None)

    async def _next_attempt(self) -> int | None:
        loop = asyncio.get_running_loop()
        while self._core.state is not State.CLOSED:
            deadline = self._core.next_deadline()
            if deadline is None:
                return None
            remaining = deadline - loop.time()
            if remaining > 0:
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await asyncio.wait_for(self._close_wakeup.wait(), remaining)
                continue
            attempt = self._core.handle_timer(loop.time())
            if attempt is not None:
                logger.debug("reconnecting to %s (attempt %d)", self.url, attempt)
                return attempt
        return None

    async def _open_one(self) -> tuple[Transport, LayerOpened]:
        transport = await open_transport(
            self.url,
            subprotocols=list(dict.fromkeys([*self._layer.subprotocols, *self._user_subprotocols]))
            or None,
            headers=self._headers,
            open_timeout=self._open_timeout,
            close_timeout=self._close_timeout,
            compression=self._compression,
            max_size=self._max_size,
        )
        try:
            opened = await self._layer.opened(transport)
        except BaseException:
            transport.abort()
            raise
        return transport, opened

    async def _run_attempt(self, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        opening = loop.create_task(self._open_one(), name=f"tether.client open {self.url}")
        woken = loop.create_task(self._close_wakeup.wait())
        try:
            await asyncio.wait({opening, woken}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # The supervisor itself is being cancelled: leave no attempt behind.
            await _cancel(woken)
            await _discard_attempt(opening)
            raise
        await _cancel(woken)
        if self._core.state is State.CLOSED:
            # close() while connecting: cancel the attempt at once; a connection
            # that opened meanwhile is dropped (the user asked to stop).
            await _discard_attempt(opening)
            return
        try:
            transport, opened = opening.result()
        except OpenFailed as exc:
            self._report(self._core.connect_failed(loop.time(), exc.failure))
            return
        except Exception as exc:
            # The session layer refused the connection (e.g. a bad welcome).
            for event in self._layer.take_events():
                self._emit(event)
            failure = ConnectFailure(FailureKind.HANDSHAKE, detail=f"{type(exc).__name__}: {exc}")
            self._report(self._core.connect_failed(loop.time(), failure))
            return
        for event in self._layer.take_events():
            self._emit(event)  # e.g. SessionLost: the server refused to resume
        connected = self._core.opened(loop.time(), resumed=opened.resumed)
        self._transport = transport
        logger.info(
            "connected to %s (attempt %d%s)",
            self.url,
            connected.attempt,
            ", resumed" if connected.resumed else "",
        )
        self._emit(connected)
        if opened.resumed:
            self._emit(Resumed(opened.replayed_in, opened.replayed_out))
        self._settled.set()
        for message in opened.received:
            await self._inbox.put(message)
        try:
            info, cause = await self._serve(transport)
        finally:
            self._transport = None
        self._layer.closed(info, loop.time())
        outcome = self._core.closed(
            loop.time(),
            code=info.code,
            reason=info.reason,
            clean=info.clean,
            cause=cause,
            hint=self._layer.reconnect_hint(),
        )
        self._report(outcome)
        for event in self._layer.take_events():
            self._emit(event)  # e.g. SessionLost("taken_over") or after goaway{resume: false}

    def _report(self, outcome: Outcome) -> None:
        final = not outcome.reconnecting
        level = logging.INFO
        for event in outcome.events:
            if isinstance(event, GaveUp) or (
                isinstance(event, Disconnected) and final and event.code not in _OK_CODES
            ):
                level = logging.WARNING
        if self._close_request is not None:
            level = logging.INFO
        logger.log(level, "%s", outcome.message)
        for event in outcome.events:
            if isinstance(event, Disconnected):
                self._last_disconnect = event
            self._emit(event)
        if final:
            self._closed_exc = self._final_exception(outcome)

    def _final_exception(self, outcome: Outcome) -> ConnectionClosed:
        if self._close_request is not None:
            code, reason = self._close_request
            return ConnectionClosedOK(code, reason, "closed by this client")
        gave_up = next((e for e in outcome.events if isinstance(e, GaveUp)), None)
        detail = gave_up.reason if gave_up is not None else "stopped"
        last = next((e for e in outcome.events if isinstance(e, Disconnected)), None)
        if last is None:
            # Never connected this time: the handshake was refused or attempts ran out.
            return ConnectionClosedError(None, outcome.message, detail)
        by_bound = outcome.decision is not None and outcome.decision.reconnect
        ok = last.code in _OK_CODES and not by_bound
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(last.code, last.reason, f"{last.explanation}; {detail}")

    def _copy_closed(self) -> ConnectionClosed:
        # A fresh exception per raise, so tracebacks do not pile up on one object.
        exc = self._closed_exc or ConnectionClosedError(None, "", "connection closed")
        return type(exc)(exc.code, exc.reason, exc.explanation)

    def _emit(self, event: Event) -> None:
        for stream in list(self._streams):
            stream.push(event)

    def _finish(self, exc: ConnectionClosed | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._closed_exc is None:
            self._closed_exc = exc or ConnectionClosedError(
                None, "", "the client stopped before the connection closed"
            )
        unsent = self._queue.drain()
        if unsent:
            self.unsent = unsent
            logger.warning(
                "%d queued message(s) were never sent to %s; they are in conn.unsent",
                len(unsent),
                self.url,
            )
        self._inbox.notify()
        self._settled.set()
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()

    # -- one open transport -----------------------------------------------------------

    async def _serve(self, transport: Transport) -> tuple[ClosedInfo, str]:
        loop = asyncio.get_running_loop()
        self._dead_cause = ""
        machine = HeartbeatMachine(self._heartbeat, loop.time())

        def pong(payload: bytes, _rtt: float) -> None:
            rtt = machine.pong_received(loop.time(), payload)
            if rtt is not None:
                self._last_rtt = rtt

        transport.on_pong(pong)
        reader = loop.create_task(self._guard(transport, lambda: self._read(transport)))
        helpers = [
            loop.create_task(self._guard(transport, lambda: self._write(transport))),
            loop.create_task(self._guard(transport, lambda: self._beat(transport, machine))),
            loop.create_task(self._guard(transport, lambda: self._close_when_asked(transport))),
            loop.create_task(self._guard(transport, lambda: self._tick_layer(transport))),
        ]
        try:
            info = await transport.wait_closed()
            # Messages that arrived before the Close frame may still be buffered in
            # the engine: the reader hands every one to the inbox, then ends on
            # TransportClosed. If the inbox is full this waits for the application
            # to read (backpressure) or to close (which lifts the bound).
            await reader
        finally:
            await _cancel(reader, *helpers)
        return info, self._dead_cause

    async def _guard(self, transport: Transport, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except TransportClosed:
            pass
        except Exception:
            # Never let a helper's error escape into the loop: log it and drop the
            # connection, which then follows the 1006 policy like any broken link.
            logger.exception("tether client helper failed; aborting the connection")
            self._dead_cause = "internal error (see the log)"
            transport.abort()

    async def _read(self, transport: Transport) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wire = await transport.recv()
            messages = self._layer.incoming(wire, loop.time())
            self._layer_changed.set()
            await self._drive_layer(transport)
            for message in messages:
                await self._inbox.put(message)

    async def _write(self, transport: Transport) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await self._queue.peek()
            if not self._layer.has_room(message):
                await self._wait_for_room(transport, message)
            wires = self._layer.outgoing(message, loop.time())
            keeps_sent = self._layer.keeps_sent
            if keeps_sent:
                # The layer's replay buffer owns it now and re-sends it after a
                # reconnect: leaving it queued would send it twice.
                self._queue.pop()
            for wire in wires:
                await transport.send(wire)
            if not keeps_sent:
                # The message leaves the queue only once the transport took it: a link
                # that fails mid-send keeps it for the next connection (at-least-once).
                self._queue.pop()
            self._layer_changed.set()
            await self._drive_layer(transport)

    async def _wait_for_room(self, transport: Transport, message: Message) -> None:
        """Wait up to ``send_timeout`` for the layer to have room, else let it overflow."""
        loop = asyncio.get_running_loop()
        deadline = None if self._send_timeout is None else loop.time() + self._send_timeout
        while not self._layer.has_room(message):
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                # docs/protocol.md §4.5: close (4202) and resume, never block forever.
                self._layer.overflow(loop.time())
                await self._drive_layer(transport)
                raise TransportClosed(await transport.wait_closed())
            self._layer_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._layer_changed.wait(), remaining)

    async def _drive_layer(self, transport: Transport) -> None:
        """Report the layer's events, send its control messages, honour its close request."""
        for event in self._layer.take_events():
            self._emit(event)
        for wire in self._layer.control_to_send():
            await transport.send(wire)
        request = self._layer.close_request()
        if request is not None:
            code, reason = request
            logger.info("%s: closing with %d (%s)", self.url, code, reason)
            await transport.close(code, reason)

    async def _tick_layer(self, transport: Transport) -> None:
        """Run the layer's timer (ack delay, stalled replay buffer) while the transport is open."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._layer.next_deadline()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self._layer.handle_timer(loop.time())
                await self._drive_layer(transport)
                continue
            self._layer_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._layer_changed.wait(), remaining)

    async def _beat(self, transport: Transport, machine: HeartbeatMachine) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = machine.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            result = machine.handle_timer(loop.time())
            if result is None:
                continue
            if result.action is TimerAction.SEND_PING:
                await transport.ping(result.payload)
            elif result.action is TimerAction.DEAD:
                # DESIGN.md §5: a missing pong fails the connection locally as 1006,
                # without a closing handshake (the peer cannot be reached anyway).
                self._dead_cause = f"no pong within {self._heartbeat.timeout} s"
                logger.warning("%s: %s, dropping the connection", self.url, self._dead_cause)
                transport.abort()
                return

    async def _close_when_asked(self, transport: Transport) -> None:
        await self._close_wakeup.wait()
        assert self._close_request is not None
        code, reason = self._close_request
        # Flush what the application already sent before the Close frame, bounded
        # by close_timeout so that close() cannot hang on a stalled link.
        try:
            await asyncio.wait_for(self._queue.wait_empty(), self._close_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            logger.warning(
                "%s: %d message(s) not flushed within %s s before closing",
                self.url,
                len(self._queue),
                self._close_timeout,
            )
        await transport.close(code, reason)


async def _discard_attempt(opening: asyncio.Task[tuple[Transport, LayerOpened]]) -> None:
    """Cancel a connection attempt; drop the connection if it opened anyway."""
    await _cancel(opening)
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].abort()


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait for them, retrieving every result so none is reported unretrieved."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
