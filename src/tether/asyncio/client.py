"""``tether.connect``: a WebSocket client that reconnects per close code, pings, and queues sends.

The decisions (when to reconnect, how long to wait, when to give up, which events
to report) live in the sans-I/O :class:`~tether.reconnect.Reconnector`; the
heartbeat deadlines in :class:`~tether.heartbeat.HeartbeatMachine`. This module is
the glue: it opens transports, sleeps until the core's deadlines, moves messages
between the transport and the user-facing queues, and reports results back.

One supervisor task per connection object runs the loop. Per open transport the
hot path runs in the application's own tasks: ``send()`` queues the message and,
when nothing is being written, writes it to the transport at once (a write that
must wait for the network is finished by a writer task, and later messages queue
behind it); ``recv()`` reads the transport itself unless the layer needs a reader
task (tether.v1 acks) or the client reads ahead for the heartbeat or a close. One
``loop.call_at`` timer serves the heartbeat and the layer's deadlines; a closer
task exists only while closing. A :class:`~tether.asyncio.layer.ClientLayer` sits
between the transport and the queues so that a session layer (tether.v1
resumption) can add a handshake before OPEN and see every message.

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
import math
import random
import re
import sys
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any

from ..backoff import BackoffConfig
from ..closecodes import check_reason, validate_send
from ..events import Disconnected, Event, GaveUp, Resumed, State
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from ..heartbeat import Heartbeat, HeartbeatMachine, Reading, TimerAction
from ..knowledge import check_lang
from ..policy import ReconnectPolicy, Rule
from ..reconnect import ConnectFailure, FailureKind, Outcome, Reconnector
from ..resume import ResumeConfig
from .checks import check_count, check_duration
from .clock import loop_clock, timer_now
from .engine import ClosedInfo, Message, Transport, TransportClosed, Writer, joined_message
from .layer import ClientLayer, LayerOpened, PlainLayer
from .sendqueue import QueueClosed, SendQueue
from .waiters import bounded, wait_on, wake_all
from .websockets_client import (
    OpenFailed,
    check_subprotocols,
    check_url,
    fast_writer,
    open_probe,
    open_transport,
    system_proxy,
)

__all__ = ["ClientConnection", "connect"]

logger = logging.getLogger("tether.client")


#: Codes that end a connection normally (``ConnectionClosedOK``); the rest are errors.
_OK_CODES = frozenset({1000, 1001})
#: Default byte bound of the received-message buffer (16 MiB), see ``connect``.
DEFAULT_MAX_INCOMING_BYTES = 16 * 2**20


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
    max_incoming_bytes: int | None = DEFAULT_MAX_INCOMING_BYTES,
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
            before raising :class:`~tether.QueueFull`; None waits forever. ``send()``
            never waits for the network itself: a message the transport cannot take
            at once stays queued, and a writer task finishes it.
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
            In plain mode ``recv()`` reads the socket itself and this buffer fills
            only while the application does not read: from each heartbeat ping on,
            and while closing (tether.v1 always reads into it, to see acks).
        max_incoming_bytes: the same bound in bytes (characters for text messages),
            16 MiB by default: reading pauses while the unread messages hold this
            much or more (one message of any allowed size still gets in). With the
            engine's 4-message queue this bounds what a server can make the client
            buffer to about ``max_incoming_bytes + 5 * max_size``. None: no bound.
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
        max_incoming_bytes=max_incoming_bytes,
        layer=layer,
        lang=lang,
    )


#: RFC 9110 §5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


#: Handshake headers the engine writes itself, by lower-case name, and where their
#: value comes from. websockets appends extra headers after its own (it replaces only
#: User-Agent), so one of these in ``headers`` went out twice: a request with two Host
#: fields is malformed (RFC 9112 §3.2: a server must answer 400).
_ENGINE_HEADERS = {
    "host": "the URL",
    "upgrade": "the WebSocket handshake",
    "connection": "the WebSocket handshake",
    "sec-websocket-key": "the WebSocket handshake",
    "sec-websocket-version": "the WebSocket handshake",
    "sec-websocket-protocol": "the subprotocols option",
    "sec-websocket-extensions": "the compression option",
}


def _check_headers(headers: Mapping[str, str] | None) -> None:
    """Names must be tokens and values must hold no CR, LF or NUL (RFC 9110 §5.5).

    Checked once here: a bad header would otherwise fail every attempt, and the
    client would reconnect with backoff for ever, or reach the server malformed.
    """
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise ConfigurationError(f"headers must be a mapping of names to values, not {headers!r}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigurationError(f"header name {name!r} is not a valid HTTP field name")
        source = _ENGINE_HEADERS.get(name.lower())
        if source is not None:
            raise ConfigurationError(
                f"header {name} is set from {source}; it cannot be in headers (got {value!r})"
            )
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ConfigurationError(
                f"header {name} must be text without CR, LF or NUL, not {value!r}"
            )


class _Buffer:
    """A bounded FIFO of received messages.

    Once ``unbounded`` is set (the user called close()), ``put`` never waits: the
    reader must keep draining the engine so that the closing handshake and the
    TCP close are not stuck behind a full buffer. Waiters are futures made only
    when someone waits: ``recv()`` for a message or a change of who reads, the
    reader for space.
    """

    def __init__(self, max_size: int | None, max_bytes: int | None = None) -> None:
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.items: collections.deque[Message] = collections.deque()
        self.bytes = 0
        self.unbounded = False
        self.getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []
        #: Running counts for the heartbeat (reading()): messages taken, and waits
        #: of the reader for room.
        self._taken = 0
        self._held = 0

    def full(self) -> bool:
        """True when a further message must wait (a message of any size fits an empty buffer)."""
        if self.unbounded:
            return False
        if self.max_size is not None and len(self.items) >= self.max_size:
            return True
        return self.max_bytes is not None and self.bytes >= self.max_bytes

    async def put(self, message: Message) -> None:
        if self.full():
            self._held += 1
            while self.full():
                await wait_on(self._putters)
        self.append(message)

    def reading(self) -> Reading:
        """How the application's reading stands, for the heartbeat (see :class:`Reading`)."""
        return Reading(self._taken, self._held, self.full())

    def append(self, message: Message) -> None:
        """Add a message now, whatever the bound (for the few a closed transport leaves)."""
        self.items.append(message)
        self.bytes += len(message)
        if self.getters:
            wake_all(self.getters)

    def take(self) -> Message:
        """Remove and return the oldest message (the caller checked there is one)."""
        message = self.items.popleft()
        self.bytes -= len(message)
        self._taken += 1
        if self._putters and not self.full():
            wake_all(self._putters)
        return message

    def notify(self) -> None:
        """Wake every waiter to re-check (closing, closed, a new transport, a reader gone)."""
        wake_all(self.getters)
        wake_all(self._putters)

    async def wait_changed(self) -> None:
        await wait_on(self.getters)


class _EventStream:
    """One subscriber of :meth:`ClientConnection.events`; ends after the connection closed.

    Waiters are futures made only while someone waits (wait_on/wake_all), not an
    ``asyncio.Event``, whose set() and wait() cost more for every event.
    """

    def __init__(self) -> None:
        self._events: collections.deque[Event] = collections.deque()
        self._ended = False
        self._waiters: list[asyncio.Future[None]] = []

    def push(self, event: Event) -> None:
        self._events.append(event)
        if self._waiters:
            wake_all(self._waiters)

    def end(self) -> None:
        self._ended = True
        wake_all(self._waiters)

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._ended:
                raise StopAsyncIteration
            await wait_on(self._waiters)
        return self._events.popleft()


class ClientConnection:
    """A client connection that survives reconnects. Create it with :func:`tether.connect`.

    Attributes:
        url: the server's URL.
        unsent: messages the server may not have: with tether.v1, those sent but
            never acknowledged when the connection closed for good (the session
            ends: they will not be replayed), then those still queued (never sent);
            never silently dropped: they are listed here and counted in a warning.
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
        max_incoming_bytes: int | None = DEFAULT_MAX_INCOMING_BYTES,
        lang: str,
    ) -> None:
        check_url(url)
        # Resolved once (reading the environment costs ~0.4 ms), not on every reconnect.
        self._proxy = system_proxy(url)
        if heartbeat is not None and not isinstance(heartbeat, Heartbeat):
            raise ConfigurationError(
                f"heartbeat must be a tether.Heartbeat or None, not {heartbeat!r}"
            )
        if policy is not None and not isinstance(policy, ReconnectPolicy):
            raise ConfigurationError(f"policy must be a tether.ReconnectPolicy, not {policy!r}")
        if backoff is not None and not isinstance(backoff, BackoffConfig):
            raise ConfigurationError(f"backoff must be a tether.BackoffConfig, not {backoff!r}")
        check_duration("send_timeout", send_timeout, allow_zero=True)
        check_duration("open_timeout", open_timeout, allow_zero=False)
        check_duration("close_timeout", close_timeout, allow_zero=False)
        if compression not in (None, "deflate"):
            raise ConfigurationError(f"compression must be None or 'deflate', not {compression!r}")
        # (Whole floats such as 1e6 become ints; a float that is not whole slipped
        # through before, nan as no bound at all, or failed every attempt in the engine.)
        max_incoming = check_count("max_incoming", max_incoming)
        max_incoming_bytes = check_count("max_incoming_bytes", max_incoming_bytes)
        max_size = check_count("max_size", max_size)
        max_queue = check_count("max_queue", max_queue)
        check_subprotocols(subprotocols)
        check_lang(lang)
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigurationError(f"rng must be a random.Random or None, not {rng!r}")
        if http_rules is not None and not isinstance(http_rules, Mapping):
            raise ConfigurationError(
                f"http_rules must be a mapping of HTTP statuses to tether.Rule, not {http_rules!r}"
            )
        if layer is not None and not isinstance(layer, ClientLayer):
            raise ConfigurationError(f"layer must be a ClientLayer or None, not {layer!r}")
        _check_headers(headers)
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
        self._inbox = _Buffer(max_incoming, max_incoming_bytes)
        #: Subscribers of events(), held weakly (a stream nobody holds any more is
        #: dropped), by id. Not a WeakSet: iterating one costs ~2 us per event.
        self._streams: dict[int, weakref.ref[_EventStream]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # set on OPEN and when finished
        # Futures of the supervisor waiting out a reconnect delay; close() wakes them (an
        # attempt under way is cancelled instead: _cancel_opening).
        self._close_waiters: list[asyncio.Future[None]] = []
        #: An attempt runs in the supervisor (close() cancels it), and close() did so.
        self._opening = False
        self._opening_cancelled = False
        self._close_request: tuple[int, str] | None = None
        #: close() was called (not an internal stop, e.g. a cancelled first connect).
        self._closed_by_user = False
        self._transport: Transport | None = None
        # The transport being served (set while _serve runs) and its per-connection state.
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The loop's clock (loop_clock): read for every message sent and received.
        self._clock: Callable[[], float] | None = None
        # PlainLayer has no events, control messages, close requests or deadlines:
        # the hot path skips asking it.
        self._plain = type(self._layer) is PlainLayer
        self._dead_cause = ""
        self._finished = False
        self._closed_exc: ConnectionClosed | None = None
        self._last_disconnect: Disconnected | None = None
        #: Events reported so far, by type (and Disconnected by code too): metrics.
        self._counts: collections.Counter[str] = collections.Counter()
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
            self._loop = asyncio.get_running_loop()
            self._clock = loop_clock(self._loop)
            self._supervisor = self._loop.create_task(
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
    def metrics(self) -> dict[str, int]:
        """How many of each event this connection has reported so far (DESIGN.md §3).

        Keys are event names, and ``"Disconnected <code>"`` per close code, e.g.
        ``{"Connected": 3, "Disconnected": 2, "Disconnected 1006": 1,
        "Disconnected 1012": 1, "Reconnecting": 2, "Resumed": 2}``; counted whether
        or not anything reads :meth:`events`. A new dict each time.
        """
        return dict(self._counts)

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
            UnicodeEncodeError: ``message`` is text that UTF-8 cannot encode (a lone
                surrogate, e.g. from bytes decoded with ``surrogateescape``); nothing
                was queued.
            RuntimeError: called from another event loop than the one it started in.
        """
        encoded = None
        if isinstance(message, str):
            if not message.isascii():
                # Encoded here to refuse it at call time: a message that failed later, in
                # the write, was taken for a broken link, kept at the head of the queue
                # and failed every reconnect. (ASCII always encodes.) A write at once
                # sends these bytes: encoded once.
                encoded = message.encode()
        elif not isinstance(message, bytes):
            if not isinstance(message, (bytearray, memoryview)):
                raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
            message = bytes(message)
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            # From another thread's loop the inline write touched this loop's socket
            # unsynchronised and returned as if sent.
            raise self._wrong_loop("send")
        if self._finished:
            raise self._copy_closed()
        if self._close_request is not None:
            code, reason = self._close_request
            raise ConnectionClosedOK(code, reason, "close() was called; no more sends")
        queue = self._queue
        link = self._link
        if link is not None and not queue and not queue.turns and link.writer is None:
            # The common case: nothing queued or being written on an open transport.
            # The queue is skipped: nothing else runs until the write is done.
            if self._plain:
                if link.write_now is not None:
                    try:
                        if (
                            link.write_now(message)
                            if encoded is None
                            else link.write_now(encoded, text=True)
                        ):
                            return
                    except Exception:
                        self._fail(link)
            elif self._send_now(link, message, encoded):
                return
        if queue.must_wait or queue.closed:
            try:
                await queue.put(message, timeout=self._send_timeout)
            except QueueClosed:
                raise self._copy_closed() from None
        else:
            queue.append(message)
        link = self._link
        if link is not None and link.writer is None:
            # Nothing is being written: write now, in this task, what the transport
            # takes without waiting (usually just this message).
            self._pump(link)

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
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise self._wrong_loop("recv")
        inbox = self._inbox
        while True:
            if inbox.items:
                return inbox.take()
            if self._finished:
                raise self._copy_closed()
            if self._supervisor is None:
                raise ConnectionClosedError(
                    None, "", "the connection was never started: await it or use `async with`"
                )
            link = self._link
            # link.unread, inlined: this runs for every message received.
            if link is not None and link.reader is None and not link.reading and not link.eof:
                # No reader task: read the transport here, one task hop fewer. (Inline,
                # not a helper coroutine: one coroutine less per message.) A message
                # the engine holds already is taken without awaiting at all.
                wire = link.transport.recv_ready()
                if wire is None:
                    link.reading = True
                    try:
                        wire = await link.transport.recv()
                    except TransportClosed:
                        link.eof = True  # the supervisor takes it from here
                        continue
                    finally:
                        link.reading = False
                        if link.read_done is not None or inbox.getters:
                            self._read_handed_back(link)
                if self._plain:
                    return wire
                # Through the layer (tether.v1: exactly once, in order): the first
                # message it yields is returned, any others wait in the inbox. (Inline,
                # not a helper: this runs for every message received.)
                assert self._clock is not None
                try:
                    messages = self._layer.incoming(wire, self._clock())
                    self._after_layer(link)
                except Exception:
                    self._fail(link)
                    continue
                if not messages:
                    continue
                if len(messages) > 1:
                    for message in messages[1:]:
                        inbox.append(message)
                return messages[0]
            await inbox.wait_changed()

    def events(self) -> AsyncIterator[Event]:
        """Iterate over the events reported from now on; ends once the connection is closed."""
        stream = _EventStream()
        if self._finished:
            stream.end()
        else:
            key = id(stream)
            self._streams[key] = weakref.ref(stream, _unsubscriber(self._streams, key))
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
        check_reason(reason)
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise self._wrong_loop("close")
        if self._close_request is None and not self._finished:
            self._close_request = (code, reason)
            self._closed_by_user = True
            self._inbox.unbounded = True
            self._inbox.notify()
            loop = asyncio.get_running_loop()
            self._core.close_requested(loop.time())
            wake_all(self._close_waiters)
            self._cancel_opening()
            if self._link is not None:
                self._begin_close(self._link)
        if self._supervisor is None:
            self._finish(ConnectionClosedOK(code, reason, "closed before it was started"))
            return
        # Shielded: if the caller is cancelled, the closing handshake still completes.
        await asyncio.shield(self._supervisor)

    def _wrong_loop(self, method: str) -> RuntimeError:
        return RuntimeError(
            f"ClientConnection.{method}() called from another event loop than the one it"
            f" was started in ({self.url}); a connection belongs to one loop: use"
            " asyncio.run_coroutine_threadsafe() to reach it from another thread"
        )

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
            if self._close_request is not None:
                # close() came before this task first ran: no attempt was started.
                code, reason = self._close_request
                self._finish(ConnectionClosedOK(code, reason, "closed before it connected"))
                return
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
        # The deadline the last wait's timer ended, due even if the clock is short of it
        # (timer_now). Only close() wakes the waiter otherwise, and then the state is CLOSED.
        waited_for = -math.inf
        while self._core.state is not State.CLOSED:
            deadline = self._core.next_deadline()
            if deadline is None:
                return None
            now = timer_now(loop, waited_for)
            if deadline > now:
                # A future and a timer: no task per wait (a storm reconnects thousands).
                waiter = loop.create_future()
                self._close_waiters.append(waiter)
                timer = loop.call_at(deadline, _resolve, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    _forget(self._close_waiters, waiter)
                waited_for = deadline
                continue
            attempt = self._core.handle_timer(now)
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
            proxy=self._proxy,
        )
        try:
            opened = await self._layer.opened(transport)
        except BaseException:
            transport.abort()
            raise
        return transport, opened

    async def _run_attempt(self, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        if self._core.state is State.CLOSED:
            return  # close() before the attempt began: nothing to open
        # The attempt runs in this task, not in a task of its own raced against
        # close() with asyncio.wait: per reconnect that cost a task, the wait's
        # future and callbacks, and three passes of the event loop. close() stops
        # the attempt at once by cancelling this task instead (_cancel_opening).
        self._opening = True
        try:
            transport, opened = await self._open_one()
        except BaseException as exc:
            self._opening = False
            if self._opening_cancelled:
                # close() while connecting: the attempt is dropped, whatever it came
                # to (_open_one aborted a connection it had opened).
                self._uncancel_opening()
                if isinstance(exc, (Exception, asyncio.CancelledError)):
                    return
                raise
            if not isinstance(exc, Exception):
                raise  # the supervisor itself is being cancelled
            self._open_failed(exc)
            return
        self._opening = False
        if self._opening_cancelled:
            # close() came as the attempt completed: the connection is dropped (the
            # user asked to stop).
            self._uncancel_opening()
            transport.abort()
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

    def _open_failed(self, exc: Exception) -> None:
        """Report an attempt that failed with ``exc`` (raised by :meth:`_open_one`)."""
        now = asyncio.get_running_loop().time()
        if isinstance(exc, OpenFailed):
            self._report(self._core.connect_failed(now, exc.failure))
            return
        # The session layer's handshake failed: its events (e.g. SessionLost) first.
        for event in self._layer.take_events():
            self._emit(event)
        if isinstance(exc, TransportClosed):
            # The server closed the new connection during the session layer's
            # handshake: with a Close frame, its code decides (not the 1006 row).
            info = exc.info
            code = info.code if info.clean else None
            failure = ConnectFailure(
                FailureKind.HANDSHAKE if code is not None else FailureKind.NETWORK,
                detail="connection lost during the handshake",
                close_code=code,
                close_reason=info.reason if code is not None else "",
            )
        else:
            # The session layer refused the connection (e.g. a bad welcome).
            failure = ConnectFailure(FailureKind.HANDSHAKE, detail=f"{type(exc).__name__}: {exc}")
        self._report(self._core.connect_failed(now, failure))

    def _cancel_opening(self) -> None:
        """close() while an attempt runs in the supervisor: cancel it (once)."""
        supervisor = self._supervisor
        if self._opening and not self._opening_cancelled and supervisor is not None:
            self._opening_cancelled = True
            supervisor.cancel()

    def _uncancel_opening(self) -> None:
        """The supervisor took the cancellation of its attempt: it goes on to finish."""
        if sys.version_info >= (3, 11):
            # Leave no pending cancellation count behind (asyncio.timeout reads it).
            task = self._supervisor
            if task is not None:
                task.uncancel()

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
        counts = self._counts
        counts[type(event).__name__] += 1
        if isinstance(event, Disconnected):
            counts[f"Disconnected {event.code}"] += 1
        if self._streams:
            for ref in list(self._streams.values()):  # (a collection may drop one meanwhile)
                stream = ref()
                if stream is not None:
                    stream.push(event)

    def _finish(self, exc: ConnectionClosed | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._closed_exc is None:
            if exc is None and self._closed_by_user and self._close_request is not None:
                # close() while connecting or waiting to reconnect: a normal end.
                code, reason = self._close_request
                exc = ConnectionClosedOK(code, reason, "closed by this client")
            self._closed_exc = exc or ConnectionClosedError(
                None, "", "the client stopped before the connection closed"
            )
        unacked = self._layer.unacked()
        unsent = self._queue.drain()
        if unacked or unsent:
            self.unsent = unacked + unsent
            counts = []
            if unacked:
                counts.append(f"{len(unacked)} message(s) sent but never acknowledged")
            if unsent:
                counts.append(f"{len(unsent)} queued message(s) never sent")
            logger.warning("%s (%s); they are in conn.unsent", " and ".join(counts), self.url)
        self._inbox.notify()
        self._settled.set()
        for ref in list(self._streams.values()):
            stream = ref()
            if stream is not None:
                stream.end()
        self._streams.clear()

    # -- one open transport -----------------------------------------------------------

    async def _serve(self, transport: Transport) -> tuple[ClosedInfo, str]:
        loop = asyncio.get_running_loop()
        self._dead_cause = ""
        machine = HeartbeatMachine(self._heartbeat, loop.time())
        probes = open_probe(transport)
        link = _Link(
            transport,
            machine,
            probes[0] if probes is not None else None,
            probes[1] if probes is not None else None,
            fast_writer(transport),
            self._layer.needs_reader,
        )

        def pong(payload: bytes, _rtt: float) -> None:
            rtt = machine.pong_received(loop.time(), payload)
            if rtt is not None:
                self._last_rtt = rtt

        transport.on_pong(pong)
        self._link = link
        try:
            self._arm(link)
            if link.keep_reader:
                self._ensure_reader(link)
            else:
                # A recv() that waited while no transport was open reads this one now.
                self._inbox.notify()
            if self._queue:
                self._pump(link)  # what was queued while disconnected goes first
            if self._close_request is not None:
                self._begin_close(link)
            info = await transport.wait_closed()
            # Messages that arrived before the Close frame may still be buffered in
            # the engine: a reader hands every one to the inbox, then ends on
            # TransportClosed. If the inbox is full this waits for the application
            # to read (backpressure) or to close (which lifts the bound).
            link.keep_reader = True
            if not link.eof:  # a direct read already saw the end: nothing is left
                reader = link.reader
                if reader is not None:
                    await reader
                else:
                    # Read the rest in this task, not in a new one (one per reconnect,
                    # and a pass of the loop). It stands as the reader meanwhile, so
                    # that nothing else reads the transport (recv() waits on the inbox,
                    # _ensure_reader finds it); _read clears it when done.
                    link.reader = asyncio.current_task()
                    await self._read(link)
        finally:
            self._link = None
            if link.timer is not None:
                link.timer.cancel()
            if link.spare is not None:
                link.spare.cancel()
            tasks = [t for t in (link.reader, link.writer, link.closer) if t is not None]
            if tasks or link.tasks:  # (usually none are left: no gather for nothing)
                await _cancel(*tasks, *link.tasks)
            self._inbox.notify()
        return info, self._dead_cause

    def _fail(self, link: _Link) -> None:
        """A bug in tether's own per-connection code: log it and drop the connection.

        Never let such an error escape into the loop or into the application's
        send()/recv(): the connection then follows the 1006 policy like any broken link.
        """
        logger.exception("tether client helper failed; aborting the connection")
        self._dead_cause = "internal error (see the log)"
        link.transport.abort()

    def _spawn(self, link: _Link, work: Coroutine[Any, Any, Any]) -> None:
        """Finish ``work`` (a write or ping that had to wait) in a task tied to ``link``."""
        task = self._guarded_task(link, work)
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    def _guarded_task(self, link: _Link, work: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
        """Run ``work`` in a task; its failure aborts ``link`` (see :meth:`_fail`).

        A task cancelled before its first step never awaits ``work``: closing
        ``work`` then keeps Python from reporting it as "never awaited" (closing a
        coroutine that ran is a no-op).
        """
        assert self._loop is not None
        task = self._loop.create_task(self._guard(link, work))
        task.add_done_callback(lambda _: work.close())
        return task

    async def _guard(self, link: _Link, work: Awaitable[Any]) -> None:
        try:
            await work
        except TransportClosed:
            pass
        except Exception:
            self._fail(link)

    # writing

    def _pump(self, link: _Link) -> None:
        """Write queued messages, in order, as long as the transport takes them at once.

        Runs in the caller's task (send(), or the supervisor after a reconnect) and
        never waits: the first write that must wait for the network is handed to a
        writer task, which then owns the queue until it is empty. A message leaves
        the queue only once the transport accepted it (or, with ``keeps_sent``,
        once the layer took it): a transport that fails during the write leaves it
        at the head for the next connection, exactly as the writer task would.
        """
        is_open = link.is_open
        if is_open is None:
            self._start_writer(link, (), pop_after=False)
            return
        queue = self._queue
        layer = self._layer
        plain = self._plain
        write_now = link.write_now
        closing = link.closing
        try:
            while queue and link.writer is None and self._link is link:
                if not is_open():
                    return  # closing: the messages wait for the next connection
                message = queue.head()
                if plain:
                    if write_now is not None and write_now(message):
                        queue.pop()
                        continue
                    if closing is not None and closing():
                        return
                    # The transport cannot take it at once (buffer over its limit, or
                    # not a transport we can write synchronously): a writer task waits.
                    self._start_writer(link, (message,), pop_after=True)
                    return
                if not layer.has_room(message):
                    self._start_writer(link, (), pop_after=False)
                    return
                if not layer.keeps_sent and closing is not None and closing():
                    return
                assert self._clock is not None
                wires = layer.outgoing(message, self._clock())
                keeps_sent = layer.keeps_sent
                if keeps_sent:
                    # The layer's replay buffer owns it now and re-sends it after a
                    # reconnect: leaving it queued would send it twice.
                    queue.pop()
                for index, wire in enumerate(wires):
                    if write_now is not None and write_now(wire):
                        continue
                    self._start_writer(link, wires[index:], pop_after=not keeps_sent)
                    return
                if not keeps_sent:
                    queue.pop()
                self._after_layer(link)
        except TransportClosed:
            pass  # the supervisor sees the end; what is still queued waits for the next one
        except Exception:
            self._fail(link)

    def _send_now(self, link: _Link, message: Message, encoded: bytes | None = None) -> bool:
        """What :meth:`_pump` does for one message, without queueing it; False: queue it.

        For a layer that keeps what it sent (tether.v1's replay buffer) on an OPEN
        transport that we can write synchronously, when the layer has room: once
        the layer took the message it is never queued, so a wire message the
        transport cannot take at once goes to a writer task, as in :meth:`_pump`.
        The caller checked that nothing is queued or being written. ``encoded``:
        the text's UTF-8, if the caller has it.
        """
        layer = self._layer
        write_now = link.write_now
        is_open = link.is_open
        if (
            write_now is None
            or is_open is None
            or not layer.keeps_sent
            or not is_open()
            or not layer.has_room(message)
        ):
            return False
        assert self._clock is not None
        now = self._clock()
        try:
            # A header apart from the message: the engine joins the two in the frame it
            # writes (a large message copied once less, text encoded once).
            header = layer.outgoing_header(message, now)
            wires = layer.outgoing(message, now) if header is None else ()
        except Exception:
            # Not taken: it waits in the queue for the next connection, as when this
            # fails in _pump (which is not run again on the link being dropped).
            self._fail(link)
            self._queue.append(message)
            return True
        try:
            if header is not None:
                data = message
                if isinstance(message, str):
                    data = message.encode() if encoded is None else encoded
                if not write_now(data, header, isinstance(message, str)):
                    self._start_writer(link, [joined_message(header, message)], pop_after=False)
                    return True
            else:
                for index, wire in enumerate(wires):
                    if not write_now(wire):
                        self._start_writer(link, wires[index:], pop_after=False)
                        return True
            self._after_layer(link)
        except TransportClosed:
            pass  # the supervisor sees the end; the layer replays the message
        except Exception:
            self._fail(link)
        return True

    def _start_writer(
        self,
        link: _Link,
        pending: Sequence[Message],
        *,
        pop_after: bool,
    ) -> None:
        assert self._loop is not None
        link.writer = self._loop.create_task(self._write(link, pending, pop_after))

    async def _write(
        self,
        link: _Link,
        pending: Sequence[Message],
        pop_after: bool,
    ) -> None:
        """Write the wire messages that could not go at once (``pending``), then the queue.

        Ends once the queue is empty: send() writes inline again from then on.
        """
        clock = self._clock
        assert clock is not None  # set by start(), before any link
        transport = link.transport
        layer = self._layer
        queue = self._queue
        try:
            if pending:
                for wire in pending:
                    await transport.send(wire)
                if pop_after:
                    # The message leaves the queue only once the transport took it: a link
                    # that fails mid-send keeps it for the next connection (at-least-once).
                    queue.pop()
                self._after_layer(link)
            while queue and self._link is link:
                if link.is_open is not None and not link.is_open():
                    return  # closing: the messages wait for the next connection
                if not layer.keeps_sent and link.closing is not None and link.closing():
                    return  # a write would be dropped: keep them for the next one
                message = queue.head()
                if not layer.has_room(message):
                    await self._wait_for_room(link, message)
                wires = layer.outgoing(message, clock())
                keeps_sent = layer.keeps_sent
                if keeps_sent:
                    queue.pop()
                for wire in wires:
                    await transport.send(wire)
                if not keeps_sent:
                    queue.pop()
                self._after_layer(link)
        except TransportClosed:
            pass
        except Exception:
            self._fail(link)
        finally:
            link.writer = None

    async def _wait_for_room(self, link: _Link, message: Message) -> None:
        """Wait up to ``send_timeout`` for the layer to have room, else let it overflow."""
        loop = asyncio.get_running_loop()
        deadline = None if self._send_timeout is None else loop.time() + self._send_timeout
        if link.unread:
            self._ensure_reader(link)  # the acks that make room must be read
        while not self._layer.has_room(message):
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                # docs/protocol.md §4.5: close (4202) and resume, never block forever.
                self._layer.overflow(loop.time())
                self._after_layer(link)
                raise TransportClosed(await link.transport.wait_closed())
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await bounded(wait_on(link.room), remaining)

    def _after_layer(self, link: _Link) -> None:
        """After a call into the layer: do what it asks, wake a writer waiting for room, re-arm."""
        if self._plain:
            return
        layer = self._layer
        if layer.pending():
            for event in layer.take_events():
                self._emit(event)
            for wire in layer.control_to_send():
                if link.write_now is None or not link.write_now(wire):
                    self._write_in_task(link, link.transport.send(wire))
            request = layer.close_request()
            if request is not None and link.closer is None:
                code, reason = request
                logger.info("%s: closing with %d (%s)", self.url, code, reason)
                link.closer = self._guarded_task(link, link.transport.close(code, reason))
        if link.room:
            wake_all(link.room)
        # link.unread, inlined: this runs after every message.
        if link.reader is None and not link.reading and layer.wants_input():
            # Sending without reading: take the acks (read ahead until recv() waits).
            self._ensure_reader(link)
        deadline = layer.next_deadline()
        if deadline is not None and (link.timer is None or deadline < link.timer_at):
            self._arm(link)

    def _write_in_task(self, link: _Link, write: Coroutine[Any, Any, None]) -> None:
        """Finish a control write (ack, ping) that could not go at once in a task.

        Control messages need no order against data messages (tether.v1 acks are
        cumulative), only to go out; they are rare next to data, so a task is cheap.
        """
        self._spawn(link, write)

    # reading

    def _read_handed_back(self, link: _Link) -> None:
        """recv() read a message itself: wake who waits for the reading to be free."""
        done = link.read_done
        if done is not None:
            link.read_done = None
            if not done.done():  # a reader cancelled while waiting cancels it
                done.set_result(None)
        if self._inbox.getters:
            self._inbox.notify()  # another recv() waiting takes over the reading

    def _ensure_reader(self, link: _Link) -> asyncio.Task[None]:
        if link.reader is None:
            assert self._loop is not None
            link.reader = self._loop.create_task(self._read(link))
        return link.reader

    async def _read(self, link: _Link) -> None:
        """Move messages from the transport through the layer into the inbox.

        Runs for the whole connection when the layer needs it; otherwise only to
        read ahead while the application does not (heartbeat, close, the end of the
        connection), handing the reading back once recv() waits on an empty inbox.
        """
        loop = asyncio.get_running_loop()
        clock = self._clock
        assert clock is not None  # set by start(), before any link
        transport = link.transport
        inbox = self._inbox
        try:
            while link.reading:  # a recv() in progress finishes its read first
                if link.read_done is None or link.read_done.done():
                    link.read_done = loop.create_future()
                await link.read_done
            while True:
                wire = transport.recv_ready()
                if wire is None:
                    wire = await transport.recv()
                waiting = bool(inbox.getters)
                messages = self._layer.incoming(wire, clock())
                self._after_layer(link)
                for message in messages:
                    await inbox.put(message)
                if waiting and not link.keep_reader:
                    return
        except TransportClosed:
            pass
        except Exception:
            self._fail(link)
        finally:
            link.reader = None
            inbox.notify()

    # timers and closing

    def _arm(self, link: _Link) -> None:
        """Set the timer of ``link`` to the earliest heartbeat or layer deadline.

        A timer already set for that deadline is kept. One set for a later deadline
        is kept aside as the spare when an earlier one comes (a message in: its ack
        is due after ``ack_delay``), and becomes the timer again once the earlier one
        passed: on a sparse stream the heartbeat's timer is then made once per ping,
        not twice per message (a new timer costs its handle and a heap push, and a
        cancelled one stays in the loop's heap until its time). A spare fires at its
        own time at the latest, so no deadline is ever missed; one that would fire
        before its deadline is cancelled instead.
        """
        beat = link.machine.next_deadline()
        layer = None if self._plain else self._layer.next_deadline()
        deadline = beat if layer is None else layer if beat is None else min(beat, layer)
        if not self._plain and link.unread and not link.eof:
            read = self._layer.read_deadline()  # always before the layer's stall deadline
            if read is not None and (deadline is None or read < deadline):
                deadline = read
        timer = link.timer
        if timer is not None:
            if deadline == link.timer_at:
                return
            link.timer = None
            if deadline is not None and deadline < link.timer_at and link.spare is None:
                link.spare = timer
                link.spare_at = link.timer_at
            else:
                timer.cancel()
        spare = link.spare
        if spare is not None and (deadline is None or deadline >= link.spare_at):
            link.spare = None
            if deadline == link.spare_at:
                link.timer = spare
                link.timer_at = link.spare_at
                return
            spare.cancel()
        if deadline is not None:
            assert self._loop is not None
            link.timer = self._loop.call_at(deadline, self._on_timer, link, deadline)
            link.timer_at = deadline

    def _on_timer(self, link: _Link, when: float) -> None:
        # The spare (set later than the timer, see _arm) fires after the timer, whose
        # callback kept, promoted or cancelled it; but both can fall due in one pass of
        # the loop: then it is the spare that fired, and the timer is still set.
        if link.spare is not None and when == link.spare_at:
            link.spare = None
        else:
            link.timer = None
        if self._link is not link:
            return
        try:
            assert self._loop is not None
            now = timer_now(self._loop, when)
            beat = link.machine.next_deadline()
            if beat is not None and beat <= now:
                # A full inbox holds reading back: the pong may wait behind what the
                # application has not taken yet (a slow reader is not a dead link).
                # And the ping or its pong may wait behind bytes still moving (a large
                # message over a slow link is not a dead link either).
                result = link.machine.handle_timer(
                    now, self._inbox.reading(), link.transport.transfer()
                )
                if result is not None and result.action is TimerAction.SEND_PING:
                    self._write_in_task(link, link.transport.ping(result.payload))
                    # Read ahead (within the inbox bounds) so that the pong is not stuck
                    # behind messages the application has not taken, and so that what it
                    # takes is counted (Reading). Also when a recv() reads the connection
                    # itself now: the reader takes over once that read is done (else a
                    # burst behind which the pong comes, read slowly, made the link look
                    # dead). It hands the reading back when recv() waits on an empty inbox.
                    self._ensure_reader(link)
                elif result is not None and result.action is TimerAction.DEAD:
                    # DESIGN.md §5: a missing pong fails the connection locally as 1006,
                    # without a closing handshake (the peer cannot be reached anyway).
                    self._dead_cause = f"no pong within {self._heartbeat.timeout} s"
                    logger.warning("%s: %s, dropping the connection", self.url, self._dead_cause)
                    link.transport.abort()
                    return
            if not self._plain:
                read = self._layer.read_deadline()
                if read is not None and read <= now and link.unread:
                    # Unacknowledged for half the stall time and nobody reading: the
                    # acks may be waiting in the engine.
                    self._ensure_reader(link)
                deadline = self._layer.next_deadline()
                if deadline is not None and deadline <= now:
                    # The layer's timer: ack delay, stalled replay buffer.
                    self._layer.handle_timer(now)
                    self._after_layer(link)
            self._arm(link)
        except Exception:
            self._fail(link)

    def _begin_close(self, link: _Link) -> None:
        """close() was called while ``link`` is served: read to the end, flush, close."""
        link.keep_reader = True
        self._ensure_reader(link)
        if link.closer is None:
            link.closer = self._guarded_task(link, self._close_link(link))

    async def _close_link(self, link: _Link) -> None:
        assert self._close_request is not None
        code, reason = self._close_request
        # Flush what the application already sent before the Close frame, bounded
        # by close_timeout so that close() cannot hang on a stalled link.
        loop = asyncio.get_running_loop()
        timeout = self._close_timeout
        deadline = math.inf if timeout is None else loop.time() + timeout
        try:
            await bounded(self._queue.wait_empty(), self._close_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            logger.warning(
                "%s: %d message(s) not flushed within %s s before closing",
                self.url,
                len(self._queue),
                self._close_timeout,
            )
        if not self._plain:
            await self._wait_acknowledged(link, deadline)
        await link.transport.close(code, reason)

    async def _wait_acknowledged(self, link: _Link, deadline: float) -> None:
        """tether.v1: wait (until ``deadline``) for the server to acknowledge what was sent.

        The Close ends the session (docs/protocol.md §7): what the server has not
        acknowledged by then would be neither resumed nor replayed. It acknowledges
        what its handler took, mostly on the replies' own frames, so this usually
        lets the replies arrive first (not always: an ack can go out alone first).
        What is still unacknowledged at the deadline ends up in :attr:`unsent`.
        """
        loop = asyncio.get_running_loop()
        while self._layer.unacked() and link.transport.closed is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            # Woken after every call into the layer (an ack read). A future of its own,
            # not one shared with a writer waiting for room: either replacing the
            # other's left it waiting until its deadline.
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await bounded(wait_on(link.room), None if remaining == math.inf else remaining)


class _Link:
    """What the client keeps about the transport it is serving (one per connection)."""

    __slots__ = (
        "closer",
        "closing",
        "eof",
        "is_open",
        "keep_reader",
        "machine",
        "read_done",
        "reader",
        "reading",
        "room",
        "spare",
        "spare_at",
        "tasks",
        "timer",
        "timer_at",
        "transport",
        "write_now",
        "writer",
    )

    def __init__(
        self,
        transport: Transport,
        machine: HeartbeatMachine,
        is_open: Callable[[], bool] | None,
        closing: Callable[[], bool] | None,
        write_now: Writer | None,
        keep_reader: bool,
    ) -> None:
        self.transport = transport
        self.machine = machine
        #: Whether the connection is OPEN (None: a foreign transport, whose writes all
        #: go through the writer task; see ``open_probe``).
        self.is_open = is_open
        #: Whether a write would be dropped (the socket is going): keep messages queued.
        self.closing = closing
        #: Writes a message at once if the transport takes it without waiting (``fast_writer``).
        self.write_now = write_now
        #: The reader task stays for the whole connection (layer needs it, closing, ended).
        self.keep_reader = keep_reader
        self.reader: asyncio.Task[None] | None = None
        #: A recv() is reading the transport itself; ``read_done`` tells when it stops.
        self.reading = False
        self.read_done: asyncio.Future[None] | None = None
        #: A direct read saw the end: recv() waits for the supervisor from then on.
        self.eof = False
        #: The task finishing a write that had to wait, then the queue; None while idle.
        self.writer: asyncio.Task[None] | None = None
        #: Woken when the layer may have room again (a writer waits for acks; close()
        #: waits for the last ones).
        self.room: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        #: A timer set for a later deadline, kept while an earlier one runs (see _arm).
        self.spare: asyncio.TimerHandle | None = None
        self.spare_at = 0.0
        self.closer: asyncio.Task[None] | None = None
        #: Control writes and pings that had to wait.
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def unread(self) -> bool:
        """Nobody reads the transport: no reader task, and no recv() reading it itself."""
        return self.reader is None and not self.reading


def _unsubscriber(
    streams: dict[int, weakref.ref[_EventStream]], key: int
) -> Callable[[weakref.ref[_EventStream]], None]:
    """The callback that removes a collected event stream from ``streams``."""

    def drop(ref: weakref.ref[_EventStream]) -> None:
        if streams.get(key) is ref:  # (not a later stream that got the same id)
            del streams[key]

    return drop


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _forget(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    """Drop a waiter that is no longer awaited (woken ones were removed already)."""
    waiter.cancel()
    if waiter in waiters:  # (not contextlib.suppress: an object and two calls per reconnect)
        waiters.remove(waiter)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait for them, retrieving every result so none is reported unretrieved."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
