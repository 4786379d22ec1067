"""The server side of tether.v1 as a :class:`~tether.asyncio.session.ServerLayer`.

Glue only (``docs/protocol.md`` §11-§12): the sans-I/O
:class:`~tether.resume.ServerEndpoint` decides, a
:class:`~tether.stores.base.SessionStore` remembers, this module moves bytes and
awaits the store. A connection that did not negotiate ``tether.v1`` gets a plain
session (one per connection, ended with it).

Per tether.v1 session one *flush* at a time performs the store writes and sends
the frames, so that write-through holds and order is kept:

* ``send()`` numbers the message in the endpoint and queues its data frame;
* a flush writes one batch (``write(append=..., acked=..., rx=...)``), then sends
  the frames whose messages are stored, and goes on until nothing is left;
* with a store that writes without awaiting (memory: ``write_nowait``) the
  sender runs the flush itself, so a message costs no task switch; otherwise
  (SQLite, Redis) the layer's *writer* takes, at the end of the event-loop
  turn, the batch of every session that wrote in it, hands them all to the
  store in one ``write_many``, and from its answer sends the frames each batch
  covers: messages sent in the same turn share one write, a session whose
  connection ended detaches in the same call, and a write costs no task,
  coroutine or future per session (a session's task takes over what the
  writer does not do: a claim to wait for, frames to await, a timer); a
  resume's claim in this process waits for the session's write in flight;
* ``rx`` is what the handler has *taken* (``recv`` returned it), committed in
  the same write as the replies it produced in that turn (a reply's frame then
  carries it as its ack), else at the end of the turn when an ack is due, else
  a quarter of the server's ``ack_delay`` later; acks follow only committed ``rx``
  (``hold_acks``), so an ack never promises more than the store holds; a
  client's acks are written with the next batch, when the handler returns on
  an open connection, or :data:`LAZY_ACK_WRITE_S` later at the latest (not
  when the connection ends: the next resume's ``hello.rx`` trims what the
  store still holds, so an acknowledged message left there is never sent
  twice); a write per ack doubled the store writes of a session that only sends;
* the session's task exists only while there is work: a store write to await,
  frames to send, or the endpoint's timer (ack delay, stalled buffer, expiry),
  which is one ``call_at`` alarm set to the endpoint's next deadline (moved only
  when that deadline moves earlier). An idle session holds no task, no timer
  (but the lazy ack's, while one waits) and no ``asyncio.Event``: waiters are
  futures made when somebody waits.

Store failures never make the store's record lie: a write the store failed is
retried (after 0.05 s, doubling up to 2 s; the retry first reads the record, in
case the failed write landed and only its answer was lost), and nothing it covers
is sent or acknowledged until it lands, so the record never falls behind what the
client saw and a resume on another node or process replays exactly. Meanwhile the
session waits (its senders too); once writes have failed for ``store_timeout``
(10 s by default) it is ended with 1011, so that its client resumes: from the
store if it is back (nothing was sent beyond its record), else into a new
session with ``store_unavailable`` (a SessionLost the application sees), which
then runs without the store in this process. Only a session the store no longer
knows (emptied by a restart) goes on without it at once. A resume that cannot
read the store starts a new session with ``store_unavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..closecodes import CloseCode
from ..exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ProtocolError,
    StoreError,
)
from ..protocol import SUBPROTOCOL, Hello, LostReason, TetherCloseCode, decode
from ..ratelimit import ResumeLimit, ResumeLimiter, address_key
from ..resume import (
    ACK_DELAY_S,
    CloseConnection,
    ResumeConfig,
    ServerEndpoint,
    SessionEnded,
)
from ..stores import open_store
from ..stores.base import (
    Fenced,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoredMessage,
    UnknownSession,
    Write,
)
from ..stores.memory import MemoryStore
from ..tokens import hash_token, is_late, judge_resume, lost_reason, new_session_id, new_token
from .clock import loop_clock, timer_now
from .engine import ClosedInfo, Message, Transport, TransportClosed, Writer, joined_message
from .session import (
    DEFAULT_MAX_QUEUE_BYTES,
    RequestInfo,
    ServerLayer,
    Session,
    closed_error,
)
from .waiters import bounded, wait_on, wake_all
from .websockets_client import fast_writer

__all__ = ["PrincipalHook", "TetherV1ServerLayer"]

logger = logging.getLogger("tether.server")

#: Who a connection is authenticated as: called with the opening handshake's
#: request; returns an id (or None for anonymous), possibly asynchronously.
PrincipalHook = Callable[[RequestInfo], "str | Awaitable[str | None] | None"]

#: Epoch sent for a session the store could not take (it can never be resumed).
_NO_EPOCH = "unavailable"

#: How many times a resume retries when another connection claimed the session first.
_CLAIM_ATTEMPTS = 3

#: Seconds a 4901 close of a taken-over connection may take (it may be half-open).
_TAKEOVER_CLOSE_S = 2.0

#: Seconds stop() waits for the writes in flight before it cancels them.
_STOP_WRITES_S = 5.0
#: Seconds a close waits for the store to record the session's end (SessionStore.end).
_END_WRITE_S = 2.0

#: A write the store failed is retried after this, doubling up to _RETRY_MAX_S.
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 2.0

#: Sweep intervals a renewal reaches beyond the resume window, so that one late or
#: failed renewal (a slow store, a busy loop) does not make this process's sessions
#: orphans (``SessionStore.renew``); only renewals stopped for the window and more do.
_RENEW_MARGIN_SWEEPS = 2

#: Seconds a client's ack may wait for the session's next store write (I/O stores).
#: Until written, the store keeps messages the client already has: a resume then
#: drops them by ``hello.rx``, so the delay costs storage, never a duplicate.
LAZY_ACK_WRITE_S = 10.0
#: How early the lazy-ack timer may write an ack due (a timer runs up to the loop's
#: clock resolution early; without slack it would re-arm for the same instant).
_LAZY_ACK_SLACK_S = 0.001

#: Unacknowledged messages after which a session whose handler does not read gets a
#: reader task (for good): the client's acks must be read to free the replay buffer.
_READ_FOR_ACKS = 8


@dataclass(eq=False, slots=True)
class _V1:
    """The layer's state for one tether.v1 session."""

    session: Session
    endpoint: ServerEndpoint
    generation: int
    durable: bool
    #: The loop's clock (loop_clock): read for every message sent and received.
    clock: Callable[[], float]
    transport: Transport | None = None
    #: fast_writer(transport), set with it: looked up once per connection, not per message.
    write_now: Writer | None = None
    #: A drain started on ``transport``: data arriving on it is not taken any more.
    closing: bool = False
    #: How a drain (restart, shutdown) closed the session's connection: the session
    #: now waits in the store for the next server. Its client is not "away" here (no
    #: overflow abandon), and no ack will make room in its buffer any more.
    drained: ClosedInfo | None = None
    ended: bool = False
    #: The application ended the session before this process had it (the store's
    #: record says so, SessionStore.end): (code, reason) to close with once the
    #: replay is out, instead of starting a handler.
    handler_ended: tuple[int, str] | None = None
    #: Sequence numbers handed to the inbox, not yet taken by the handler (made on
    #: first use: an idle session holds no deque).
    delivered: collections.deque[int] | None = None
    consumed_rx: int = 0
    written_rx: int = 0
    written_tx: int = 0
    pending: list[StoredMessage] = field(default_factory=list)
    acked: int | None = None
    #: The client's ack, not written yet and not urgent (see LAZY_ACK_WRITE_S); the
    #: layer's lazy-ack timer writes it if no other write took it first.
    lazy_acked: int | None = None
    #: Due to that timer (an entry in TetherV1ServerLayer._lazy_acks); False: disarmed.
    ack_armed: bool = False
    detach: bool = False
    #: This disconnect's detach is in the store (its expiry clock runs): the
    #: handler's return need not write it again.
    detached: bool = False
    #: Frames for ``transport``: (sequence number that must be stored first, frame);
    #: made on first use.
    outq: collections.deque[tuple[int, Message]] | None = None
    #: The one-shot timer set to the endpoint's next deadline (None: no deadline), and
    #: when it fires: only an earlier deadline needs a new one.
    alarm: asyncio.TimerHandle | None = None
    armed: float = float("inf")
    #: The deadline the alarm last rang for: due, even while the loop's clock reads a
    #: little before it (uvloop's, in milliseconds, can when its timer runs; see _run).
    rang: float = float("-inf")
    #: Work was added while the session's task runs: it goes round once more (or,
    #: while ``writing``, the session's task starts once the write is done).
    kicked: bool = False
    #: A batch is with the layer's writer (``_write_turn``): no task and no other
    #: write for this session until it is answered.
    writing: bool = False
    #: A flush runs (in a sender or in the session's task); others leave work to it.
    flushing: bool = False
    #: A commit of ``consumed_rx`` is scheduled for the end of this loop turn.
    commit_scheduled: bool = False
    #: A commit of ``consumed_rx`` is scheduled a little later (see ``consumed``).
    commit_timer: asyncio.TimerHandle | None = None
    #: Held around a batch write and around a resume's claim of this session in this
    #: process: a write under the old generation must not race the claim that bumps
    #: it (it would be fenced, and the resumed session ended as taken over).
    #: (Made on first use: a session whose writes never wait has none.)
    store_lock: asyncio.Lock | None = None
    #: A write the store failed waits for this timer (see the module doc).
    retry_timer: asyncio.TimerHandle | None = None
    retry_delay: float = 0.0
    #: When (loop time) the writes began failing; None while they succeed. While set,
    #: the next write reads the record first (the failed one may have landed).
    failing_since: float | None = None
    #: Senders and settlers waiting for the next flush (futures made on demand).
    progress: list[asyncio.Future[None]] | None = None
    #: The session's task: exists only while it has work (store I/O, frames, a timer
    #: that came due), not for an idle session.
    task: asyncio.Task[None] | None = None
    #: The hello.attempt of the claim this process holds the session by (the store's
    #: is this or, once another node claimed it, higher).
    attempt: int = 0

    def lock(self) -> asyncio.Lock:
        """The session's store lock, made on first use."""
        if self.store_lock is None:
            self.store_lock = asyncio.Lock()
        return self.store_lock

    def locked(self) -> bool:
        """Whether a batch write or a resume's claim holds the store lock now."""
        return self.store_lock is not None and self.store_lock.locked()


class TetherV1ServerLayer(ServerLayer):
    """tether.v1 sessions that outlive connections; plain sessions for plain clients.

    Args:
        store: where sessions live: ``"memory"``, a store URL (``sqlite:///path``,
            ``redis://...``; opened here and closed when the server stops) or a
            :class:`~tether.stores.base.SessionStore` object (shared, never closed
            here: pass the same object to the next ``serve()`` to resume across it).
        config: resumption settings; ``resume_window`` overrides its window.
        resume_window: seconds a disconnected session is kept (None: the config's).
        principal: the authentication hook binding sessions to a principal.
        handshake_timeout: seconds to wait for ``hello`` before closing with 4203.
        send_timeout: seconds ``Session.send`` waits for room in the replay buffer.
        goaway_retry_ms: the ``retry_ms`` announced before a 1012 (clients wait a
            random time in ``[0, retry_ms]``; tether's client in ``[retry_ms/5, retry_ms]``).
        max_queue: inbox size of each session, in messages.
        max_queue_bytes: inbox size of each session, in bytes (None: no byte bound).
        resume_limit: refused resumes allowed per remote address (IPv6: per /64) in a
            sliding window, 20 per 60 s by default; beyond it, resumes from that address
            are refused with ``rate_limited`` before the store is read. None: no limit.
        store_timeout: seconds a session waits for the store to take a write it
            failed (retried meanwhile; nothing it covers is sent or acknowledged)
            before the session is ended with 1011 and its client resumes.
    """

    subprotocols: Sequence[str] = (SUBPROTOCOL,)
    sends_while_detached = True
    #: The handler's recv() reads the connection; a reader task runs only when acks,
    #: a timer, a drain or the close need reading while the handler does not read.
    reads_on_demand = True

    def __init__(
        self,
        *,
        store: str | SessionStore = "memory",
        config: ResumeConfig | None = None,
        resume_window: float | None = None,
        principal: PrincipalHook | None = None,
        handshake_timeout: float = 10.0,
        send_timeout: float = 10.0,
        goaway_retry_ms: int = 5000,
        max_queue: int = 64,
        max_queue_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES,
        resume_limit: ResumeLimit | None = ResumeLimit(),  # noqa: B008 - frozen, shared safely
        store_timeout: float = 10.0,
    ) -> None:
        config = config or ResumeConfig()
        if resume_window is not None:
            config = ResumeConfig(
                resume_window=resume_window,
                max_messages=config.max_messages,
                max_bytes=config.max_bytes,
                ack_messages=config.ack_messages,
                ack_bytes=config.ack_bytes,
                ack_delay=config.ack_delay,
            )
        # (Checked now: a wrong one would fail every tether.v1 handshake with 1011.)
        if principal is not None and not callable(principal):
            raise ConfigurationError(
                f"principal must be a function of the request or None, not {principal!r}"
            )
        if resume_limit is not None and not isinstance(resume_limit, ResumeLimit):
            raise ConfigurationError(
                f"resume_limit must be a tether.ratelimit.ResumeLimit or None, not {resume_limit!r}"
            )
        if not handshake_timeout > 0 or not send_timeout >= 0:
            raise ConfigurationError("handshake_timeout must be > 0 and send_timeout >= 0 seconds")
        if not store_timeout > 0:
            raise ConfigurationError("store_timeout must be > 0 seconds")
        if isinstance(goaway_retry_ms, bool) or not 0 <= goaway_retry_ms <= 3_600_000:
            raise ConfigurationError("goaway_retry_ms must be 0..3600000 milliseconds")
        if isinstance(store, str):
            self.store = open_store(store)
            self._owns_store = True
        elif isinstance(store, SessionStore):
            self.store = store
            self._owns_store = False
        else:
            raise ConfigurationError(
                f"store must be 'memory', a store URL or a SessionStore, not {store!r}"
            )
        # A store written before hellos were numbered takes no ``attempt``: its claims
        # then store none, its records say 0, and every numbered hello is above that.
        self._numbered = _takes_attempt(self.store)
        self.config = config
        self.principal = principal
        self.handshake_timeout = handshake_timeout
        self.send_timeout = send_timeout
        self.store_timeout = store_timeout
        self.goaway_retry_ms = goaway_retry_ms
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.limiter = ResumeLimiter(resume_limit) if resume_limit is not None else None
        self._states: dict[Session, _V1] = {}
        self._by_sid: dict[str, _V1] = {}
        #: Resumes under way, per session id: a lock and how many use it (see _resume).
        self._resuming: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._process_exiting = False
        #: The store writes without awaiting: senders flush inline (see the module doc).
        self._inline = type(self.store).write_nowait is not SessionStore.write_nowait
        #: Longest a taken message's rx waits for a reply to carry it into the store.
        self._commit_delay = (config.ack_delay_s() or ACK_DELAY_S) / 4
        self._sweeper: asyncio.Task[None] | None = None
        # The sessions whose lazy ack is due (LAZY_ACK_WRITE_S), in the order they
        # were armed, which is the order of their deadlines: one loop timer for all,
        # at the first deadline, instead of a TimerHandle per session and ack. On a
        # ticker of 10,000 sessions each message's ack armed one (a heap push of ~15
        # Python comparisons, and an object kept 5-10 s, into the full collections),
        # cancelled by the next message's write (docs/benchmarks-history.md, twentieth session).
        # (A dict keeps insertion order, and a pop then re-insert moves an entry last.)
        self._lazy_acks: dict[_V1, float] = {}
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Sessions whose batch the writer takes at the end of this loop turn (I/O
        #: stores; a dict as an ordered set), and the writes it has in flight.
        self._write_due: dict[_V1, None] = {}
        self._write_scheduled = False
        self._writers: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: Sessions ended here but kept in the store, still attached to this process
        #: (sid -> generation, expiry): detached by the sweep until the store takes it.
        self._left_attached: dict[str, tuple[int, float]] = {}

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def sessions_survive_restart(self) -> bool:
        """Whether a session can be resumed after this server's drain (goaway ``resume``)."""
        if isinstance(self.store, MemoryStore):
            # Memory dies with the process, and with this server when it made the store.
            return not (self._owns_store or self._process_exiting)
        return True

    async def start(self) -> None:
        """Start the periodic renewal of this process's sessions and the store's expiry."""
        self._stopping = False
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        """Stop the sweeper and the sessions' tasks; close the store if this layer opened it."""
        self._stopping = True  # from now on the sessions' tasks write (and are cancelled)
        await self._finish_writes()
        for state in self._states.values():
            self._disarm(state)
            state.ack_armed = False
            state.retry_timer = _cancel(
                state.retry_timer
            )  # (a retry firing below would start a task after the stop)
        tasks = [t for t in (self._sweeper, *(s.task for s in self._states.values())) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a store client that swallows the cancellation (redis-py did,
            # under a stalled Redis) would otherwise keep the drain, and the process,
            # from ever ending.
            _, stuck = await asyncio.wait(tasks, timeout=_STOP_WRITES_S)
            if stuck:
                logger.warning("%d session task(s) did not stop; leaving them", len(stuck))
        for state in self._states.values():
            self._disarm(state)  # (a cancelled task re-arms on its way out)
            state.ack_armed = False  # a stopped layer writes nothing more
            state.retry_timer = _cancel(state.retry_timer)
        self._lazy_timer = _cancel(self._lazy_timer)
        self._lazy_acks.clear()
        self._sweeper = None
        # Sessions that ended just before the drain are still being deleted (and
        # detached): a store closed under them leaves them in it, and this node's
        # ownership entries with them.
        await self._finish_background()
        if self._owns_store:
            await self.store.close()

    async def _finish_background(self) -> None:
        """Let the store operations the sessions spawned finish (bounded), then cancel."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WRITES_S
        while pending := {task for task in self._background if not task.done()}:
            try:
                await bounded(asyncio.wait(pending), deadline - loop.time())
            except TimeoutError:
                logger.warning(
                    "%d store operation(s) did not finish; cancelling them", len(pending)
                )
                for task in pending:
                    task.cancel()
                # (Bounded again: a store client may swallow the cancellation, see stop().)
                await asyncio.wait(pending, timeout=_STOP_WRITES_S)
                return

    async def _finish_writes(self) -> None:
        """Let the writer's batches land before the store is closed (bounded).

        The batches taken in this turn are started now; a write the store is
        performing is awaited, not cut off, for :data:`_STOP_WRITES_S` at most (a
        store that hangs): then it is cancelled and its sessions end (waited for
        another :data:`_STOP_WRITES_S` at most: a store may swallow the cancellation).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WRITES_S
        while True:
            if self._write_scheduled:
                self._write_turn()
            if not self._writers:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                hung = set(self._writers)
                for task in hung:
                    task.cancel()
                # Bounded too: a store client may swallow the cancellation (redis-py
                # did, under a stalled Redis), and stop() must end all the same.
                _, still = await asyncio.wait(hung, timeout=_STOP_WRITES_S)
                if still:
                    logger.warning(
                        "%d store write(s) ignored their cancellation; stopping without them",
                        len(still),
                    )
                return
            await asyncio.wait(set(self._writers), timeout=remaining)

    def process_exiting(self) -> None:
        """The drain ends the process: with a memory store, goaway says ``resume: false``."""
        self._process_exiting = True

    async def _sweep(self) -> None:
        interval = min(30.0, max(0.5, self.config.resume_window / 4))
        # Should this process die, its attached sessions stay resumable for a window
        # after its last renewal, as a detached session does; then any node's
        # expiry removes them.
        lease = self.config.resume_window + _RENEW_MARGIN_SWEEPS * interval
        while not self._stopping:  # (also if a cancellation was swallowed below)
            try:
                await self.store.renew(time.time() + lease)
            except StoreError as exc:
                logger.warning("session store renewal failed: %s", exc)
            await asyncio.sleep(interval)
            if self.limiter is not None:
                self.limiter.forget_stale(asyncio.get_running_loop().time())
            await self._detach_left()
            try:
                removed = await self.store.expire(time.time())
            except StoreError as exc:
                logger.warning("session store expiry failed: %s", exc)
                continue
            if removed:
                logger.debug("expired %d session(s) in the store", removed)

    # -- handshake -----------------------------------------------------------------------------

    async def open(self, transport: Transport, request: RequestInfo) -> Session:
        """Plain session for a plain client; else hello → resume or new session → welcome.

        Raises:
            ProtocolError: no ``hello`` in time (4203), or a malformed one (1002).
        """
        if transport.subprotocol != SUBPROTOCOL:
            return Session(
                self, request, max_queue=self.max_queue, max_queue_bytes=self.max_queue_bytes
            )
        try:
            wire = await bounded(transport.recv(), self.handshake_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise ProtocolError(
                f"no hello within {self.handshake_timeout} s",
                close_code=TetherCloseCode.HANDSHAKE_TIMEOUT,
            ) from None
        hello = decode(wire)
        if not isinstance(hello, Hello):
            raise ProtocolError(f"expected hello, got {type(hello).__name__.lower()}")
        principal = await self._principal(request)
        if hello.sid is None:
            return await self._new(transport, request, principal, reason=None)
        return await self._resume(transport, request, principal, hello)

    async def _principal(self, request: RequestInfo) -> str | None:
        if self.principal is None:
            return None
        result = self.principal(request)
        if inspect.isawaitable(result):
            result = await result
        if result is not None and not isinstance(result, str):
            raise ConfigurationError(f"the principal hook returned {result!r}, not str or None")
        return result

    async def _resume(
        self, transport: Transport, request: RequestInfo, principal: str | None, hello: Hello
    ) -> Session:
        assert hello.sid is not None
        assert hello.token is not None
        loop = asyncio.get_running_loop()
        host = request.remote_address[0] if request.remote_address else None
        if self.limiter is not None and not self.limiter.allowed(host, loop.time()):
            # Before the store: a limited address learns nothing about the session.
            return await self._new(transport, request, principal, reason=LostReason.RATE_LIMITED)
        local = self._by_sid.get(hello.sid)
        if (
            local is not None
            and is_late(hello, local.attempt)
            and hello.epoch == local.endpoint.epoch
        ):
            # Late, as the store's judgement would find (its number can only be higher):
            # said without reading the store or waiting behind the session's resumes,
            # which a stream of such hellos would otherwise hold up.
            raise ProtocolError(_LATE, close_code=TetherCloseCode.SUPERSEDED)
        # One resume of a session at a time in this process (a client's retry, a hello
        # that was late on a connection the client already gave up): each then finds
        # the session as the one before left it, held here and adopted, and this
        # process claims a session only under that order (the stale-copy check in
        # _claim relies on it); the last to arrive wins. (The lock is a per-sid
        # asyncio.Lock shared by the resumes under way, dropped with the last one;
        # taken inline, not through an asynccontextmanager, whose generator, wrapper
        # and loop hook cost a resume more than the lock itself.)
        sid = hello.sid
        entry = self._resuming.get(sid)
        if entry is None:
            entry = self._resuming[sid] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            await lock.acquire()
            try:
                if transport.closed is not None:
                    # A hello the client gave up on (its connection is gone, as it waited
                    # behind the live one's resume): it must not take the session over.
                    raise TransportClosed(transport.closed)
                return await self._claim(transport, request, principal, hello, host)
            finally:
                lock.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._resuming[sid]

    async def _claim(
        self,
        transport: Transport,
        request: RequestInfo,
        principal: str | None,
        hello: Hello,
        host: object,
    ) -> Session:
        assert hello.sid is not None
        assert hello.token is not None
        loop = asyncio.get_running_loop()
        previous_token_hash = hash_token(hello.token)
        for _ in range(_CLAIM_ATTEMPTS):
            token, token_hash = new_token(secrets.token_bytes)
            local = self._by_sid.get(hello.sid)
            try:
                epoch = await self.store.epoch()
                # The judgement, with the clock read when it runs (on the SQLite store's
                # thread, after the wait for it); its verdict is kept for a refusal.
                verdicts: list[LostReason | None] = []
                admit = functools.partial(
                    _admits, hello, verdicts, epoch=epoch, principal=principal
                )
                if local is not None and not local.ended:
                    # Held by this process, which has its messages: claim between its
                    # batch writes, and adopt the session before the next write.
                    record, replay = await self.store.load(hello.sid), None
                    claimed = record is not None and admit(record)
                    if claimed:
                        assert record is not None
                        # (acquire/release, not ``async with``: one coroutine less per resume)
                        lock = local.lock()
                        await lock.acquire()
                        try:
                            while local.writing:  # a write under the old generation: let it land
                                await self._wait_progress(local)
                            if local.ended or self._by_sid.get(hello.sid) is not local:
                                continue  # ended or replaced meanwhile: judge again
                            if transport.closed is not None:
                                raise TransportClosed(transport.closed)  # (as above)
                            if record.generation != local.generation:
                                # Claimed elsewhere since (no claim of this process is in
                                # flight: one resume of a session at a time), and this
                                # process wrote nothing after, so no fenced write told it:
                                # its copy is stale (its rx, its replay buffer, its
                                # handler). It ends as a fenced one does; the session is
                                # resumed from the store.
                                self._fenced(local)
                                continue
                            record = await self.store.claim(
                                hello.sid,
                                record.generation,
                                token_hash=token_hash,
                                previous_token_hash=previous_token_hash,
                                **self._attempt(hello),
                            )
                            if record.lost is not None:
                                # Abandoned (overflow) between the load and the claim:
                                # refused as the judgement would refuse it now.
                                claimed = self._refuse_lost(hello.sid, record, verdicts)
                            elif not local.ended:
                                self._adopt(local, record.generation)
                        finally:
                            lock.release()
                else:
                    # Load, judge, claim and read the replay: one trip to the store.
                    record, replay = await self.store.resume(
                        hello.sid,
                        admit,
                        token_hash=token_hash,
                        previous_token_hash=previous_token_hash,
                        **self._attempt(hello),
                    )
                    claimed = replay is not None
                    if claimed and record is not None and record.lost is not None:
                        # Abandoned by its node between this store's load and claim
                        # (Redis: two round trips): refused as the judgement would now.
                        claimed = self._refuse_lost(hello.sid, record, verdicts)
            except Fenced:
                continue  # another connection claimed it at the same moment: judge again
            except UnknownSession:
                self._count_refusal(host, loop.time())
                return await self._new(transport, request, principal, reason=LostReason.UNKNOWN)
            except StoreBusy as exc:
                raise _busy_refusal(exc) from exc
            except StoreError as exc:
                logger.warning("session store unavailable for a resume: %s", exc)
                return await self._new(
                    transport, request, principal, reason=LostReason.STORE_UNAVAILABLE
                )
            if not claimed or record is None:
                if record is None:  # unknown to the store: never judged (the epoch first)
                    now = time.time()
                    verdict = judge_resume(hello, None, epoch=epoch, principal=principal, now=now)
                else:  # judged and refused
                    verdict = verdicts[-1]
                if verdict is LostReason.SUPERSEDED:
                    # Late: a newer hello of this client was served (the token checked
                    # out, so no refusal is counted). A session of its own would run
                    # its handler for a connection nobody reads.
                    raise ProtocolError(_LATE, close_code=TetherCloseCode.SUPERSEDED)
                self._count_refusal(host, loop.time())
                return await self._new(transport, request, principal, reason=verdict)
            # Held here and adopted above, or nothing (not held, or ended since): no
            # other resume of this session registers one meanwhile (one at a time).
            state = self._by_sid.get(hello.sid)
            if state is None or state.ended:
                if replay is None:  # claimed as held here, but its state ended since
                    try:
                        replay = await self.store.messages(hello.sid, after=record.acked)
                    except StoreBusy as exc:
                        raise _busy_refusal(exc) from exc
                    except StoreError as exc:
                        logger.warning("session store unavailable for a replay: %s", exc)
                        return await self._new(
                            transport, request, principal, reason=LostReason.STORE_UNAVAILABLE
                        )
                endpoint = ServerEndpoint(
                    hello.sid,
                    epoch,
                    self.config,
                    hold_acks=True,
                    report_acks=False,
                    tx=record.tx,
                    rx=record.rx,
                )
                endpoint.restore(record.acked, [(m.seq, m.payload) for m in replay], loop.time())
                session = Session(
                    self,
                    request,
                    session_id=hello.sid,
                    max_queue=self.max_queue,
                    max_queue_bytes=self.max_queue_bytes,
                )
                state = self._register(session, endpoint, record.generation, durable=True)
                state.consumed_rx = state.written_rx = record.rx
                state.written_tx = record.tx
                if record.end_code is not None:
                    state.handler_ended = (record.end_code, record.end_reason)
            # The claim attached the session in the store (no expiry): a detach
            # written before is void, and one is due again if this attach fails.
            state.detached = False
            state.attempt = record.attempt
            try:
                self._attach(state, transport, token, resumed=True, peer_rx=hello.rx)
            except ProtocolError:
                if state.transport is None and not state.ended:
                    self._request_detach(state)
                raise
            return state.session
        return await self._new(transport, request, principal, reason=LostReason.NOT_RESUMABLE)

    def _attempt(self, hello: Hello) -> dict[str, int]:
        """The claim's ``attempt`` argument, if the hello has one and the store takes it."""
        if hello.attempt is None or not self._numbered:
            return {}
        return {"attempt": hello.attempt}

    def _refuse_lost(
        self, sid: str, record: SessionRecord, verdicts: list[LostReason | None]
    ) -> bool:
        """A claim got a session abandoned meanwhile: refuse the resume (False).

        The claim attached the abandoned record to this connection's generation, with
        no expiry: nothing would ever remove it, so it is deleted (at that generation).
        """
        assert record.lost is not None
        verdicts.append(lost_reason(record.lost))
        self._spawn(self._delete(sid, record.generation))
        return False

    def _adopt(self, state: _V1, generation: int) -> None:
        """The session held here goes on with the connection that claimed ``generation``."""
        self._take_over(state)
        state.generation = generation
        state.durable = True

    def _count_refusal(self, host: object, now: float) -> None:
        if self.limiter is not None and self.limiter.refused(host, now):
            limit = self.limiter.limit
            # Logged when the allowance runs out, so a flood logs once per window (never a token).
            logger.warning(
                "resume attempts from %s refused for up to %g s: %d refused within %g s",
                address_key(host),
                limit.window,
                limit.max_refused,
                limit.window,
            )

    async def _new(
        self,
        transport: Transport,
        request: RequestInfo,
        principal: str | None,
        *,
        reason: LostReason | None,
    ) -> Session:
        sid = new_session_id(secrets.token_bytes)
        token, token_hash = new_token(secrets.token_bytes)
        durable = reason is not LostReason.STORE_UNAVAILABLE
        epoch = _NO_EPOCH
        if durable:
            try:
                epoch = await self.store.epoch()
                await self.store.create(
                    sid, token_hash=token_hash, principal=principal, now=time.time()
                )
            except StoreError as exc:
                logger.warning("session store unavailable; session %s is not durable: %s", sid, exc)
                durable, epoch = False, _NO_EPOCH
        endpoint = ServerEndpoint(sid, epoch, self.config, hold_acks=True, report_acks=False)
        session = Session(
            self,
            request,
            session_id=sid,
            max_queue=self.max_queue,
            max_queue_bytes=self.max_queue_bytes,
        )
        state = self._register(session, endpoint, 1, durable=durable)
        self._attach(state, transport, token, resumed=False, reason=reason)
        return session

    def _register(
        self, session: Session, endpoint: ServerEndpoint, generation: int, *, durable: bool
    ) -> _V1:
        state = _V1(session, endpoint, generation, durable, loop_clock(asyncio.get_running_loop()))
        self._states[session] = state
        self._by_sid[session.id] = state
        return state

    def _attach(
        self,
        state: _V1,
        transport: Transport,
        token: str,
        *,
        resumed: bool,
        peer_rx: int = 0,
        reason: LostReason | None = None,
    ) -> None:
        now = asyncio.get_running_loop().time()
        endpoint = state.endpoint
        acked = endpoint.peer_acked
        endpoint.attach(now, token=token, resumed=resumed, peer_rx=peer_rx, reason=reason)
        for event in endpoint.events_received():
            if isinstance(event, CloseConnection):
                # hello.rx outside what this session holds: not an honest client.
                raise ProtocolError(event.reason, close_code=event.code)
        if endpoint.peer_acked != acked:
            self._note_ack(state, endpoint.peer_acked)  # hello.rx: what the client has
        state.transport = transport
        self._wake_progress(state)  # (a close_detached() waits for the client to be back)
        state.write_now = fast_writer(transport)
        state.closing = False
        # A detach not written yet is void: this connection's claim made the session
        # attached again (and a detach left pending would keep it from ever settling).
        state.detach = state.detached = False
        if state.lazy_acked is not None and not state.ack_armed:
            self._arm_ack_timer(state)  # (disarmed when the old connection ended)
        self._collect(state)
        if (
            state.task is not None
            or state.writing
            or state.flushing
            or (state.outq and not self._send_written(state))
            or self._has_work(state)
        ):
            self._kick(state)  # (else the welcome and the replay went out at once: no task)
        self._rearm(state)

    def _take_over(self, state: _V1) -> None:
        """Fence the connection the session is attached to (a half-open one, say): 4901."""
        old = state.transport
        if old is None:
            return
        # Its close handshake needs it read (the handler may not be reading it).
        state.session.read_ahead()
        state.transport = None
        state.write_now = None
        state.closing = False
        state.outq = None
        # The old connection may be closed already without its pump having told us:
        # either way it is detached now (its late connection_lost is then ignored).
        state.endpoint.connection_lost(asyncio.get_running_loop().time(), None)
        for event in state.endpoint.events_received():
            self._handle(state, event)
        self._rearm(state)
        if old.closed is None:
            logger.info(
                "session %s taken over by a new connection: closing the old one with 4901",
                state.session.id,
            )
            self._spawn(self._close_quietly(old, TetherCloseCode.TAKEN_OVER, "taken over"))

    # -- messages ------------------------------------------------------------------------------

    def received(
        self, session: Session, transport: Transport, message: Message
    ) -> Sequence[Message]:
        """Decode one frame: application messages in order, exactly once; the rest stays here."""
        state = self._states.get(session)
        if state is None:
            return (message,)
        if transport is not state.transport or state.closing or state.ended:
            # A taken-over connection, or one being drained: what it still carries is
            # not taken, so the client replays it to whoever holds the session next.
            return ()
        endpoint = state.endpoint
        acked = endpoint.peer_acked
        payload = endpoint.receive(message, state.clock())
        if endpoint.peer_acked != acked:
            # The client acknowledged more (an endpoint without PeerAcked events).
            if state.progress:
                self._wake_progress(state)  # room in the replay buffer
            if self._inline:
                state.acked = endpoint.peer_acked  # _note_ack(), inlined (per message)
            else:
                self._note_ack(state, endpoint.peer_acked)
        if endpoint.has_output:
            for event in endpoint.events_received():
                self._handle(state, event)
            out = endpoint.data_to_send()
            if out:
                self._queue_frames(state, endpoint.tx, out)
                self._kick(state)
        # _rearm(), inlined: this runs for every message.
        deadline = endpoint.next_deadline()
        if deadline is not None and deadline < state.armed and not state.ended:
            self._arm(state)
        if payload is None:
            return ()
        delivered = state.delivered
        if delivered is None:
            delivered = state.delivered = collections.deque()
        delivered.append(endpoint.rx)
        return (payload,)

    def consumed(self, session: Session) -> None:
        """The handler took a message: its sequence number may now be committed as rx."""
        state = self._states.get(session)
        if state is not None and state.delivered:
            state.consumed_rx = state.delivered.popleft()
            if not self._inline:
                self._write_soon(state)
            elif state.commit_scheduled:
                pass
            elif state.endpoint.wants_ack():
                # An ack is due once rx is stored: commit at the end of this turn, so
                # that a reply the handler sends in the same turn shares the write.
                state.commit_scheduled = True
                asyncio.get_running_loop().call_soon(self._commit_rx, state)
            elif state.commit_timer is None:
                # No ack due yet: a reply will most likely carry this rx (send() writes
                # it); else commit it within a quarter of the ack delay. One timer per
                # quarter delay, not a loop pass per message.
                state.commit_timer = asyncio.get_running_loop().call_later(
                    self._commit_delay, self._commit_rx_later, state
                )

    async def send(self, session: Session, transport: Transport | None, message: Message) -> None:
        """Number, store (write-through, batched per loop turn), then send one message.

        Returns once the message is in the store; it reaches the client now or by
        replay after the next resume.

        Raises:
            ConnectionClosedError: the session ended, or was abandoned because its
                replay buffer stayed full while the client was away (``overflow``).
        """
        state = self._states.get(session)
        if state is None:
            if session.closed is not None:
                raise closed_error(session.closed)
            await super().send(session, transport, message)
            return
        endpoint = state.endpoint
        if not endpoint.buffer.has_room_for(message):  # (endpoint.has_room(), one call less)
            await self._wait_for_room(state, message)
        if state.ended:
            raise _ended(state)
        buffer = endpoint.buffer
        if buffer.oldest_queued_at is not None and len(buffer) >= _READ_FOR_ACKS:
            # Acks are overdue: a handler that only sends never reads them itself.
            session.read_ahead(keep=True)
        # The rx taken so far goes into the same write as this message, and the frame
        # leaves only after that write: the reply may carry it as its ack (no
        # standalone ack for the request it answers).
        # (_rx_to_write() and state.locked(), inlined: this runs for every message.)
        rx = state.consumed_rx if state.consumed_rx > state.written_rx else None
        now = state.clock()
        lock = state.store_lock
        if (
            self._inline
            and not state.flushing
            and not state.pending
            and not state.outq
            and state.durable
            and not state.detach
            and state.failing_since is None  # (a failed write's retry goes first)
            and (lock is None or not lock.locked())
        ):
            # Nothing before this message is unwritten or unsent: write it and send
            # its frame here, without the session's queues.
            write = state.write_now
            numbered = None
            data = message
            if write is not None:
                if isinstance(message, str):
                    # Encoded once, for the write below; text UTF-8 cannot encode (a lone
                    # surrogate) is refused here, before it is numbered or kept.
                    data = message.encode()
                # The frame's header apart: the engine joins it to the payload in the
                # frame it writes (a large message copied once less, text encoded once).
                numbered = endpoint.send_header(message, now, persisted_rx=rx)
            header = None
            if numbered is None:
                seq = endpoint.send(message, now, persisted_rx=rx)
            else:
                seq, header = numbered
            if state.alarm is None:
                self._rearm(state)  # the first unacked message: a stall deadline
            # StoredMessage(seq, message) without the named tuple's Python-level __new__.
            stored = tuple.__new__(StoredMessage, (seq, message))
            # (Plain functions, not coroutines: nothing is awaited unless the socket's
            # buffer is full.)
            frames = self._store_now(state, stored, rx, header)
            if frames is not None:
                if header is None:
                    if self._sent_at_once(state, frames):
                        return
                else:
                    # (_sent_at_once() for a frame in two parts.)
                    text = isinstance(message, str)
                    if (
                        write is not None
                        and not frames
                        and (state.transport is None or write(data, header, text))
                    ):
                        return
                    frames = _joined(frames, header, stored)
                await self._send_stored(state, frames)
                return
        else:
            seq = endpoint.send(message, now, persisted_rx=rx)
            if state.alarm is None:
                self._rearm(state)
            state.pending.append(StoredMessage(seq, message))
            self._collect(state)
            if not self._inline:
                self._write_soon(state)
            elif not state.flushing:
                await self._flush(state, inline=True)
            else:
                self._kick(state)
        while state.written_tx < seq and not state.ended:
            await self._wait_progress(state)
        if state.written_tx < seq:
            raise _ended(state)  # ended before its write: never stored (fenced, given up)

    def _store_now(
        self, state: _V1, stored: StoredMessage, rx: int | None, header: bytes | None = None
    ) -> list[Message] | None:
        """Write one message to an in-process store: the frames to send now (maybe none).

        The per-message path of :meth:`send` (a plain function: no coroutine per
        message). None: the store declined; the message and its frames were left
        to the session's flush. With ``header`` (:meth:`ServerEndpoint.send_header`),
        the message's frame is ``header`` and the message, not queued in the
        endpoint: an empty list means "send it"; if the store declined, the joined
        frame went to the flush with the rest.

        Raises:
            ConnectionClosedError: the session was claimed elsewhere (it ends with 4901).
        """
        endpoint = state.endpoint
        frames = endpoint.data_to_send()
        acked = state.acked
        try:
            written = self.store.write_nowait(
                state.session.id, state.generation, append=(stored,), acked=acked, rx=rx
            )
        except Fenced:
            # Claimed elsewhere: never stored, never sent. The sender must hear it, as
            # from a store that writes in a task (send() raises once the session ended).
            self._fenced(state)
            raise _ended(state) from None
        except StoreError as exc:
            written = self._write_failed(state, exc, (stored,), acked)
            if not written:  # kept for the retry, with its frames
                self._queue_frames(state, endpoint.tx, _joined(frames, header, stored))
                return None
        if not written:
            state.pending.append(stored)
            self._queue_frames(state, endpoint.tx, _joined(frames, header, stored))
            self._kick(state)
            return None
        state.acked = None
        state.written_tx = stored.seq
        if rx is not None:
            # No rx_persisted(): send(persisted_rx=rx) already advanced the ack, and
            # the data frame carried it (no ack left due, no deadline moved).
            state.written_rx = rx
        if state.progress:
            self._wake_progress(state)
        return frames

    def _sent_at_once(self, state: _V1, frames: list[Message]) -> bool:
        """Send the frames of a message :meth:`_store_now` wrote, if nothing must wait.

        False: they must be awaited (:meth:`_send_stored`). True also when there is
        nothing to send (detached: the replay after the resume sends it).
        """
        if not frames or state.transport is None:
            return True
        if len(frames) != 1:
            return False
        write = state.write_now
        # (No _has_work() check after it, unlike _send_stored: send() came here with
        # nothing pending, queued, detaching or uncommitted, _store_now() wrote this
        # message, its ack and rx, and nothing else ran since.)
        return write is not None and write(frames[0])

    async def _send_stored(self, state: _V1, frames: list[Message]) -> None:
        """Send frames that could not go at once; others queue behind them meanwhile."""
        transport = state.transport
        if transport is None:
            return
        state.flushing = True
        try:
            for frame in frames:
                await transport.send(frame)
        except TransportClosed:
            pass  # the replay after the resume re-sends it
        finally:
            state.flushing = False
            if not state.ended and self._has_work(state):
                self._kick(state)

    async def _wait_for_room(self, state: _V1, message: Message) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout
        overflowed = False
        state.session.read_ahead(keep=True)  # the acks that make room must be read
        while not state.ended and not state.endpoint.has_room(message):
            if state.drained is not None:
                # Drained: the client comes back to another server, which replays
                # what the store holds; no ack will make room here, and this message
                # was never stored. Not an overflow (abandoning would refuse the
                # resume the goaway promised): once the drain ended the session (a
                # handler returning before that would close it with 1000), fail.
                if state.session.closed is not None:
                    raise closed_error(state.session.closed)
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    # (drain() wakes us when it ended the session; bounded all the same)
                    await bounded(self._wait_progress(state), _DRAINED_RECHECK_S)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                if state.transport is not None and not overflowed:
                    # docs/protocol.md §4.5: full while connected: close 4202, the client
                    # resumes and its acks free the buffer. Give that one more timeout.
                    state.endpoint.overflow(loop.time())
                    for event in state.endpoint.events_received():
                        self._handle(state, event)
                    overflowed = True
                    deadline = loop.time() + self.send_timeout
                    continue
                await self._abandon(state)
                raise _ended(state)
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await bounded(self._wait_progress(state), remaining)

    async def _abandon(self, state: _V1) -> None:
        """Full while the client is away: the promise cannot be kept; refuse its resume."""
        logger.warning(
            "session %s abandoned: replay buffer full while the client was away", state.session.id
        )
        state.endpoint.abandon(LostReason.OVERFLOW)
        if state.durable:
            try:
                await self.store.abandon(
                    state.session.id, state.generation, reason=LostReason.OVERFLOW.value
                )
            except StoreError as exc:
                logger.warning("could not mark session %s abandoned: %s", state.session.id, exc)
        self._end(
            state,
            ClosedInfo(TetherCloseCode.REPLAY_OVERFLOW, "overflow", clean=False),
            delete=False,
        )
        self._leave_resumable(state)  # (its resume is refused with "overflow" until then)

    def _handle(self, state: _V1, event: object) -> None:
        """Act on a core event other than a delivered message."""
        # (No PeerAcked: the endpoints are made with report_acks=False, and
        # received() and _attach() act on a move of peer_acked instead.)
        if isinstance(event, CloseConnection):
            transport = state.transport
            if transport is not None:
                logger.info(
                    "session %s: closing with %d (%s)", state.session.id, event.code, event.reason
                )
                self._spawn(self._close_quietly(transport, event.code, event.reason))
        elif isinstance(event, SessionEnded):
            info = ClosedInfo(CloseCode.NORMAL_CLOSURE, "", clean=True)
            if event.reason == "expired":
                info = ClosedInfo(CloseCode.ABNORMAL_CLOSURE, "session expired", clean=False)
            self._end(state, info, delete=True)

    def _collect(self, state: _V1) -> None:
        """Move the endpoint's frames to the session's ordered outgoing queue."""
        frames = state.endpoint.data_to_send()
        if frames:
            self._queue_frames(state, state.endpoint.tx, frames)

    @staticmethod
    def _queue_frames(state: _V1, need: int, frames: list[Message]) -> None:
        outq = state.outq
        if outq is None:
            outq = state.outq = collections.deque()
        outq.extend([(need, frame) for frame in frames])

    @staticmethod
    def _wait_progress(state: _V1) -> Coroutine[Any, Any, None]:
        """Wait for the next flush round (or the session's end): ``await`` the result.

        A plain function handing back :func:`wait_on`'s coroutine: a sender waiting
        for its store write holds one coroutine less (thousands of them wait at once
        in a broadcast's burst, and each is walked by every collection meanwhile).
        """
        if state.progress is None:
            state.progress = []  # made when somebody waits: an idle session holds none
        return wait_on(state.progress)

    @staticmethod
    def _wake_progress(state: _V1) -> None:
        waiters = state.progress
        if waiters:
            state.progress = None
            wake_all(waiters)

    # -- the session's task: store writes, frames, timers --------------------------------------

    def _kick(self, state: _V1) -> None:
        """There is work for the session's task: start it, or make it go round once more."""
        if state.task is None:
            if state.writing:
                state.kicked = True  # started once the writer answered
            elif not state.ended:
                state.task = asyncio.ensure_future(self._run(state))
        else:
            state.kicked = True

    # -- the layer's writer: one store call per loop turn for the sessions' batches ---------

    def _request_detach(self, state: _V1) -> None:
        """The session has no connection: start its expiry clock in the store."""
        state.detach = True
        if self._inline:
            self._kick(state)
        else:
            self._write_soon(state)  # with the writer's next store call

    def _write_soon(self, state: _V1) -> None:
        """Leave the session's batch to the writer at the end of this turn (I/O stores).

        Its sessions' batches of one turn go to the store in one ``write_many``, and
        its answer sends the frames they cover: no task, coroutine or future per
        session and write (a sender waits on a progress future as before).
        """
        if state.writing:
            return  # its answer writes what was added meanwhile
        if state.task is not None or self._stopping:
            self._kick(state)  # the running task takes it (after stop(): as before it)
            return
        self._write_due[state] = None
        if not self._write_scheduled:
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_turn)

    def _write_turn(self) -> None:
        """Take the batch of every session due and write them all with one store call."""
        self._write_scheduled = False
        due, self._write_due = self._write_due, {}
        taken: list[_V1] = []
        writes: list[Write] = []
        for state in due:
            if state.ended or self._states.get(state.session) is not state:
                continue  # finished, or the layer stopped: it writes nothing more
            if state.retry_timer is not None:
                continue  # a failed write waits for its retry (which kicks the session)
            if (
                state.task is not None
                or state.writing
                or state.locked()
                or not state.durable
                or state.failing_since is not None  # (a retry reads first: the task's)
            ):
                self._kick(state)  # the session's task: a claim to wait for, ...
                continue
            batch = state.pending
            rx = _rx_to_write(state)
            writes_anyway = bool(batch) or rx is not None or state.acked is not None
            if state.lazy_acked is not None and writes_anyway:
                _promote_lazy_ack(state)  # a write goes anyway: the ack rides along
            acked = state.acked
            detach_at = None
            if state.detach and state.transport is None:
                # The connection is gone: the same store call starts the expiry clock
                # (a resume in this process waits for it, see _resume).
                state.detach = False
                state.detached = True  # (from now: finish() waits for this write)
                detach_at = time.time() + self.config.resume_window
            if not batch and acked is None and rx is None and detach_at is None:
                if self._has_work(state):
                    self._kick(state)
                continue
            state.pending = []
            state.acked = None
            state.writing = True
            taken.append(state)
            writes.append(Write(state.session.id, state.generation, batch, acked, rx, detach_at))
        if writes:
            task = asyncio.ensure_future(self._write_group(taken, writes))
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)

    async def _write_group(self, taken: list[_V1], writes: list[Write]) -> None:
        try:
            errors = await self.store.write_many(writes)
        except asyncio.CancelledError:
            # stop() gave up on a store that hangs: whether these batches landed is
            # unknown, and nothing will write them now: the sessions end here.
            for state in taken:
                state.writing = False
                self._end(
                    state,
                    ClosedInfo(
                        CloseCode.INTERNAL_ERROR, "session store did not answer", clean=False
                    ),
                    delete=False,
                )
            raise
        except Exception as exc:  # a store's write_many failed as a whole
            errors = [exc] * len(taken)
        if len(errors) != len(taken):  # a store's bug: no session may wait forever for it
            wrong = StoreError(f"write_many answered {len(errors)} of {len(taken)} writes")
            errors = [wrong] * len(taken)
        for state, write, error in zip(taken, writes, errors, strict=True):
            try:
                self._write_done(state, write, error)
            except Exception as exc:
                self._internal_error(state, exc)

    def _write_done(self, state: _V1, write: Write, error: BaseException | None) -> None:
        """The store answered the session's batch: record it, send its frames, go on."""
        state.writing = False
        try:
            if state.ended or self._states.get(state.session) is not state:
                return  # ended, or finished meanwhile: nothing more goes on here
            if isinstance(error, Fenced):
                self._fenced(state)
                return
            if isinstance(error, StoreError):
                if write.detach_at is not None:
                    state.detached = False  # not in the store: the handler's return retries
                if write.only_detaches:  # as _detach: the session's data is not in question
                    _detach_failed(state, error)
                elif not self._write_failed(state, error, write.append, write.acked):
                    if write.detach_at is not None and state.transport is None:
                        state.detach = True  # written with the retry
                    return  # nothing it covers goes out before the retry lands
            elif error is not None:
                self._internal_error(state, error)
                return
            self._written(state, write.append, write.rx)
            sent = not state.outq or self._send_written(state)
            if state.kicked or not sent:
                state.kicked = False
                self._kick(state)  # a timer came due, a detach, frames to await, ...
            elif self._has_work(state):
                self._write_soon(state)  # added while the write was in flight
        finally:
            self._wake_progress(state)

    def _send_written(self, state: _V1) -> bool:
        """Send the frames now stored where the transport takes them at once.

        Returns:
            False when a frame must be awaited (the socket's buffer is full, or the
            transport is not the engine's own): the session's task sends the rest.
        """
        outq = state.outq
        assert outq is not None
        transport = state.transport
        write = fast_writer(transport) if transport is not None else None
        while outq and outq[0][0] <= state.written_tx:
            if transport is None:
                outq.popleft()  # detached: the replay after the resume re-sends it
                continue
            if write is None or not write(outq[0][1]):
                return False
            outq.popleft()
        if state.outq is outq and not outq:
            state.outq = None
        return True

    async def _run(self, state: _V1) -> None:
        """Run the endpoint's timer if due and flush, until no work is left; then end.

        Started on demand (:meth:`_kick`, the alarm): an idle session has no task.
        """
        loop = asyncio.get_running_loop()
        endpoint = state.endpoint
        try:
            while True:
                state.kicked = False
                # (The deadline the alarm rang for is due, see timer_now: else it was set
                # again and rang again at once, a task per ring, until the clock turned.)
                now = timer_now(loop, state.rang)
                if (deadline := endpoint.next_deadline()) is not None and now >= deadline:
                    endpoint.handle_timer(now)
                    for event in endpoint.events_received():
                        self._handle(state, event)
                    self._collect(state)
                await self._flush(state)
                if state.ended:
                    return
                # A flush running in a sender kicks again if it leaves work behind.
                if state.flushing or not (state.kicked or self._has_work(state)):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._internal_error(state, exc)
        finally:
            if state.task is asyncio.current_task():
                state.task = None
            self._wake_progress(state)
            if not state.ended and self._states.get(state.session) is state:
                self._arm(state)  # (not after finish() or stop(): nobody tracks it then)

    def _arm(self, state: _V1) -> None:
        """Set the session's one-shot alarm to the endpoint's next deadline (or none)."""
        deadline = state.endpoint.next_deadline()
        if deadline == state.armed:
            return
        self._disarm(state)
        if deadline is not None:
            state.armed = deadline
            state.alarm = asyncio.get_running_loop().call_at(
                deadline, self._alarm_rang, state, deadline
            )

    @staticmethod
    def _disarm(state: _V1) -> None:
        state.alarm = _cancel(state.alarm)
        state.armed = float("inf")

    def _alarm_rang(self, state: _V1, when: float) -> None:
        state.alarm = None
        state.armed = float("inf")
        state.rang = when
        if self._states.get(state.session) is not state or state.ended:
            return  # finished (a late alarm must not expire a session resumed since)
        # A stall verdict must see the acks that arrived: read them if nobody does.
        state.session.read_ahead()
        if state.task is None:
            self._kick(state)
        else:
            state.kicked = True  # its exit re-arms

    def _rearm(self, state: _V1) -> None:
        """Move the alarm earlier if the endpoint's next deadline is before it."""
        deadline = state.endpoint.next_deadline()
        if deadline is not None and deadline < state.armed and not state.ended:
            self._arm(state)

    def _note_ack(self, state: _V1, seq: int) -> None:
        """The client acknowledged up to ``seq``: record it with the next write."""
        if self._inline:
            state.acked = seq  # written with the next batch, at no I/O cost
            return
        # A store that needs I/O: no write for the ack alone (see the module doc).
        state.lazy_acked = seq
        if not state.ack_armed and state.transport is not None:
            self._arm_ack_timer(state)

    def _arm_ack_timer(self, state: _V1) -> None:
        """Have the session's lazy ack written LAZY_ACK_WRITE_S from now at the latest."""
        loop = asyncio.get_running_loop()
        due = loop.time() + LAZY_ACK_WRITE_S
        lazy = self._lazy_acks
        lazy.pop(state, None)  # (an entry left by a disarm: its deadline was earlier)
        lazy[state] = due
        state.ack_armed = True
        if self._lazy_timer is None:
            self._lazy_timer = loop.call_at(due, self._lazy_ack_timer_rang)

    def _lazy_ack_timer_rang(self) -> None:
        """The layer's lazy-ack timer: write every lazy ack now due, re-arm for the next."""
        self._lazy_timer = None
        loop = asyncio.get_running_loop()
        # (A timer may run up to the loop's clock resolution early: a little slack.)
        now = loop.time() + _LAZY_ACK_SLACK_S
        lazy = self._lazy_acks
        while lazy:
            state, due = next(iter(lazy.items()))
            if due > now:
                self._lazy_timer = loop.call_at(due, self._lazy_ack_timer_rang)
                return
            del lazy[state]
            if state.ack_armed:  # (else disarmed since: its write took the ack)
                state.ack_armed = False
                try:
                    self._lazy_ack_due(state)
                except Exception as exc:  # that session's bug, not the other sessions'
                    self._internal_error(state, exc)

    def _lazy_ack_due(self, state: _V1) -> None:
        if self._states.get(state.session) is not state or state.ended:
            return  # finished, or the layer stopped: it writes nothing more
        if state.lazy_acked is not None and state.transport is not None:
            _promote_lazy_ack(state)
            self._kick(state)

    def _commit_rx_later(self, state: _V1) -> None:
        state.commit_timer = None
        self._commit_rx(state)

    def _commit_rx(self, state: _V1) -> None:
        """End of the turn in which the handler took messages: commit their rx."""
        state.commit_scheduled = False
        if state.flushing or state.ended or state.consumed_rx <= state.written_rx:
            return  # the running flush, or a reply's batch, takes it
        if not self._write_now(state) or self._has_work(state):
            self._kick(state)  # an ack frame to send, or the store must be awaited

    def _has_work(self, state: _V1) -> bool:
        """Something to write, to detach, or a stored frame to send."""
        if state.retry_timer is not None:  # writes wait for the retry
            return bool(state.outq and state.outq[0][0] <= state.written_tx)
        return bool(
            state.pending
            or state.acked is not None
            or state.consumed_rx > state.written_rx
            or (state.detach and state.transport is None)
            or (state.outq and state.outq[0][0] <= state.written_tx)
        )

    async def _flush(self, state: _V1, *, inline: bool = False) -> None:
        """Write the batch, then send the frames it covers; again until nothing is left.

        One flush at a time per session, in whichever task comes first; work added
        meanwhile is picked up by its next round. ``inline`` (a sender's task)
        never awaits the store: a write that needs I/O is left to the session's
        task, whose cancellation cannot cut a batch in half.
        """
        if state.flushing:
            return
        state.flushing = True
        try:
            while not state.ended:
                if state.retry_timer is None:  # (else a failed write waits for its retry)
                    written = self._write_now(state)
                    if written is None:
                        return  # fenced: the session ended
                    if not written:
                        if inline:
                            return
                        if not await self._write_awaited(state):
                            return
                if state.detach and state.transport is None and state.retry_timer is None:
                    state.detach = False
                    if state.durable:
                        await self._detach(state)
                self._wake_progress(state)
                if state.outq:
                    await self._send_ready(state)
                if not self._has_work(state):
                    return
        finally:
            state.flushing = False
            if not state.ended and self._has_work(state):
                self._kick(state)

    def _write_now(self, state: _V1) -> bool | None:
        """Write the batch if the store can without awaiting.

        Returns:
            True when written (or nothing to write), False when the store must be
            awaited (nothing taken), None when fenced (the session ended).
        """
        batch = state.pending
        acked = state.acked
        rx = _rx_to_write(state)
        if not batch and acked is None and rx is None:
            return True
        if state.lazy_acked is not None:
            _promote_lazy_ack(state)  # a write goes anyway: the ack rides along
            acked = state.acked
        if state.durable:
            if state.locked() or state.failing_since is not None:
                # A resume is claiming this session: wait for it. Or a retry: it reads
                # the record first, which takes an await.
                return False
            try:
                if not self.store.write_nowait(
                    state.session.id, state.generation, append=batch, acked=acked, rx=rx
                ):
                    return False
            except Fenced:
                self._fenced(state)
                return None
            except StoreError as exc:
                if not self._write_failed(state, exc, (), None):
                    return True  # (nothing was taken: the batch waits where it is)
        state.pending = []
        state.acked = None
        self._written(state, batch, rx)
        return True

    async def _write_awaited(self, state: _V1) -> bool:
        """Write the batch through the store's ``write``; False when fenced.

        Only after :meth:`_write_now` declined, which already made a lazy ack part
        of the batch.
        """
        batch, state.pending = state.pending, []
        acked, state.acked = state.acked, None
        rx = _rx_to_write(state)
        if state.durable and (batch or acked is not None or rx is not None):
            sid = state.session.id
            try:
                async with state.lock():
                    append: Sequence[StoredMessage] = batch
                    if state.failing_since is not None:
                        # A retry: the failed write may have landed (its answer lost).
                        # acked and rx are idempotent; messages already stored are not.
                        record = await self.store.load(sid)
                        if record is None:
                            raise UnknownSession(f"session {sid} is unknown")
                        if record.generation != state.generation:
                            raise Fenced(sid, state.generation, record.generation)
                        append = [m for m in batch if m.seq > record.tx]
                    await self.store.write(sid, state.generation, append=append, acked=acked, rx=rx)
            except Fenced:
                self._fenced(state)
                return False
            except StoreError as exc:
                if not self._write_failed(state, exc, batch, acked):
                    return True  # kept for the retry (the flush sends what is stored)
            else:
                state.retry_delay = 0.0
                state.failing_since = None
        self._written(state, batch, rx)
        return True

    def _written(self, state: _V1, batch: Sequence[StoredMessage], rx: int | None) -> None:
        if batch:
            state.written_tx = batch[-1].seq
        if not state.durable:
            state.written_tx = state.endpoint.tx
        if rx is not None:
            state.written_rx = rx
            state.endpoint.rx_persisted(rx, asyncio.get_running_loop().time())
            self._collect(state)
            self._rearm(state)

    def _fenced(self, state: _V1) -> None:
        # Another node or connection claimed the session: this one is stale.
        sid = state.session.id
        logger.info("session %s was claimed elsewhere; closing here with 4901", sid)
        if state.transport is not None:
            self._spawn(
                self._close_quietly(state.transport, TetherCloseCode.TAKEN_OVER, "taken over")
            )
        self._end(
            state,
            ClosedInfo(TetherCloseCode.TAKEN_OVER, "taken over", clean=False),
            delete=False,
        )

    def _write_failed(
        self,
        state: _V1,
        exc: StoreError,
        batch: Sequence[StoredMessage],
        acked: int | None,
    ) -> bool:
        """The store did not write ``batch``: keep it for a retry, or go on without the store.

        Returns:
            True when the session goes on without the store (the caller records the
            batch as written); False when the batch waits for the retry, in front of
            anything added since, and nothing it covers may be sent or acknowledged.
        """
        sid = state.session.id
        if isinstance(exc, UnknownSession):
            # The store no longer has it (emptied by a restart, say): no record is
            # left to contradict this process, which goes on alone (a resume
            # elsewhere is refused, and the client told).
            logger.warning("session %s is gone from the store; it goes on here alone", sid)
            state.durable = False
            return True
        if batch:
            state.pending[:0] = batch
        if acked is not None and (state.acked is None or acked > state.acked):
            state.acked = acked
        now = asyncio.get_running_loop().time()
        if state.failing_since is None:
            state.failing_since = now
            # (Once per session and outage, at DEBUG: the store logs the outage.)
            logger.debug("session %s waits for the store to write: %s", sid, exc)
        elif now - state.failing_since >= self.store_timeout:
            self._store_gave_up(state, exc)
            return False
        state.retry_delay = min(_RETRY_MAX_S, state.retry_delay * 2 or _RETRY_FIRST_S)
        if state.retry_timer is None and not state.ended:
            state.retry_timer = asyncio.get_running_loop().call_later(
                state.retry_delay, self._retry_write, state
            )
        return False

    def _store_gave_up(self, state: _V1, exc: StoreError) -> None:
        """Writes kept failing: end the session (1011) so that its client resumes.

        Its record holds nothing the client has not been sent, so a resume from the
        store, once it is back, is exact; before then the client gets a new session
        and a SessionLost (store_unavailable). Senders waiting here get
        ConnectionClosedError: what they sent was never stored nor sent.
        """
        logger.warning(
            "session %s: the store took none of its writes for %g s; ending it with 1011 "
            "so that its client resumes (%s)",
            state.session.id,
            self.store_timeout,
            exc,
        )
        reason = "session store unavailable"
        if state.transport is not None:
            self._spawn(self._close_quietly(state.transport, CloseCode.INTERNAL_ERROR, reason))
        self._end(state, ClosedInfo(CloseCode.INTERNAL_ERROR, reason, clean=False), delete=False)
        self._leave_resumable(state)

    def _retry_write(self, state: _V1) -> None:
        state.retry_timer = None
        if not state.ended and self._states.get(state.session) is state:
            self._kick(state)

    async def _detach(self, state: _V1) -> None:
        expires_at = time.time() + self.config.resume_window
        try:
            # Under the lock a resume in this process holds around its claim: once we
            # have it, such a resume has adopted the new generation and attached.
            async with state.lock():
                if state.transport is not None or state.ended:
                    return  # attached again meanwhile: nothing to detach
                await self.store.detach(state.session.id, state.generation, expires_at=expires_at)
                state.detached = True  # (after: finish() does not wait for a detach in flight)
        except Fenced:
            # Resumed on another node meanwhile: not ours any more. End it here without
            # deleting it, or its expiry would delete the new owner's session.
            info = ClosedInfo(TetherCloseCode.TAKEN_OVER, "resumed elsewhere", clean=False)
            self._end(state, info, delete=False)
        except StoreError as exc:
            _detach_failed(state, exc)

    async def _send_ready(self, state: _V1) -> None:
        transport = state.transport
        outq = state.outq
        while outq and outq[0][0] <= state.written_tx:
            _, frame = outq.popleft()
            if transport is None or transport is not state.transport or transport.closed:
                continue
            try:
                await transport.send(frame)
            except TransportClosed:
                outq.clear()  # the replay after the resume re-sends what mattered
                return
        if state.outq is outq and not outq:
            state.outq = None

    async def _settle(self, state: _V1, timeout: float) -> None:
        """Wait (bounded) until everything produced so far is stored and sent."""
        if _settled(state):
            return  # the usual case at a drain or close: no timer, no waiter

        async def settled() -> None:
            while not _settled(state):
                # (Writing: the writer's answer wakes us. A retry due: the retry does.)
                if not state.writing and state.retry_timer is None:
                    self._kick(state)
                await self._wait_progress(state)

        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await bounded(settled(), timeout)

    # -- endings -------------------------------------------------------------------------------

    def connection_lost(self, session: Session, info: ClosedInfo) -> bool:
        """Keep the session for ``resume_window`` unless it ended (1000, fenced)."""
        state = self._states.get(session)
        if state is None:
            return True
        if state.ended:
            return True
        if state.transport is not None and state.transport.closed is None:
            return False  # taken over: the session lives on a newer connection
        state.transport = None
        state.write_now = None
        state.closing = False
        state.outq = None
        code = None if info.code == CloseCode.ABNORMAL_CLOSURE else info.code
        state.endpoint.connection_lost(asyncio.get_running_loop().time(), code)
        for event in state.endpoint.events_received():
            self._handle(state, event)
        if state.ended:
            return True
        # The lazy ack stays unwritten: written after the close, it would race the
        # client's resume on another node (fenced); that resume trims it anyway.
        state.ack_armed = False
        self._request_detach(state)
        self._rearm(state)  # the expiry
        return False

    async def drain(
        self, session: Session, transport: Transport, code: int, reason: str
    ) -> ClosedInfo:
        """Restart/shutdown: commit, say ``goaway`` before a 1012, close; the session lives on."""
        state = self._states.get(session)
        if state is None or transport is not state.transport:
            return await transport.close(code, reason)
        state.closing = True
        state.drained = ClosedInfo(code, reason, clean=True, sent_code=code)
        session.read_ahead(keep=True)  # what still arrives is dropped; the close is read
        await self._settle(state, timeout=2.0)
        if code == CloseCode.SERVICE_RESTART and transport.closed is None:
            state.endpoint.goaway(
                retry_ms=self.goaway_retry_ms, resume=self.sessions_survive_restart
            )
            with contextlib.suppress(TransportClosed):
                for frame in state.endpoint.data_to_send():
                    await transport.send(frame)
        info = await transport.close(code, reason)
        # The session lives on in the store, not in this server: what the handler
        # has not taken yet is not committed, so the client replays it to the
        # next server; the handler must not see it too. It may still send (its
        # replies are stored and replayed) until it returns.
        session.end(state.drained, discard_unread=True)
        self._wake_progress(state)  # a send waiting for room fails now (_wait_for_room)
        return info

    async def close(
        self, session: Session, transport: Transport, code: int, reason: str
    ) -> ClosedInfo:
        """The application ends the session: flush, close the connection, forget the session.

        The end is recorded (SessionStore.end) and the record goes once the client's
        Close came back: it then has every frame sent before ours. Should the link
        die first, the record stays, with its expiry: the client's resume, here or on
        another node, replays what it lacks and closes again, with no handler.
        """
        state = self._states.get(session)
        if state is None:
            return await transport.close(code, reason)
        session.read_ahead(keep=True)  # the closing handshake must be read
        await self._settle(state, timeout=2.0)
        if newer := _newer_transport(state, transport):
            return await self.close(session, newer, code, reason)
        # The end is recorded first (even with everything acknowledged: a Close lost
        # with the link must not leave a client that resumes to find no session, and
        # a handler started again), and the session deleted once the Close came back.
        recorded = not state.ended and await self._record_end(state, code, reason, settle=False)
        if newer := _newer_transport(state, transport):
            # A resume here took the session over while the end was written (at its
            # generation): the close goes to that connection.
            return await self.close(session, newer, code, reason)
        if state.outq and state.transport is transport:
            self._send_written(state)  # (stored while the end was written: out they go)
        # Frames still not handed to the connection (past the settle's bound: a store
        # slower than 2 s, a transport whose send blocks) go with the Close: the client
        # then lacks them, however clean the close, and gets them from its resume.
        unsent = bool(state.outq)
        announced = ClosedInfo(code, reason, clean=True, sent_code=code)
        self._end(state, announced, delete=not recorded)
        info = await transport.close(code, reason)
        if not info.clean:
            session.correct_end(announced, info)  # (not the clean close announced)
        if recorded:
            # (A drain's 1012 that went out first: the client was told to resume.)
            if info.clean and info.sent_code == code and not unsent:
                # The client's Close came back: it has every frame before ours.
                self._spawn(self._delete(session.id, state.generation))
            else:
                self._leave_resumable(state)
        return info

    async def close_detached(self, session: Session, code: int, reason: str) -> ClosedInfo:
        """The application ends the session while its client is away: tell it when back.

        What the handler sent is still owed to the client, and ending the session
        here and now would leave it resumable (the store's record): the client's
        resume would start the handler again. So the close waits for the client to
        come back to this process (this handler is still running meanwhile, so the
        resume attaches to this session), then replays and closes with ``code``. It
        ends without a close frame if the session expires here or the server drains
        first. (A resume on another node is not seen here: this close then lasts until
        the expiry, which leaves that node's session alone.)
        """
        info = ClosedInfo(code, reason, clean=True, sent_code=code)
        state = self._states.get(session)
        if state is None or state.ended:
            return info
        await self._record_end(state, code, reason)
        ended = asyncio.ensure_future(session.wait_closed())
        progress: asyncio.Future[None] | None = None
        try:
            while state.transport is None and not state.ended and not ended.done():
                progress = asyncio.ensure_future(self._wait_progress(state))
                await asyncio.wait({progress, ended}, return_when=asyncio.FIRST_COMPLETED)
                progress.cancel()
        finally:
            ended.cancel()
            if progress is not None:
                progress.cancel()
        transport = state.transport
        if transport is None or state.ended or session.closed is not None:
            return session.closed or info
        return await self.close(session, transport, code, reason)

    async def _record_end(self, state: _V1, code: int, reason: str, *, settle: bool = True) -> bool:
        """Tell the store the application ended the session (SessionStore.end); True if it did.

        So that a resume anywhere else (another node; this process's replacement,
        after a restart that came first) replays and closes instead of starting the
        handler again. What the handler sent is stored first (``settle``: the
        caller may have waited already): a replay read after the mark must hold it.
        A store that cannot record it (one written before ``end``, or unavailable)
        leaves the session as before.
        """
        if not state.durable:
            return False
        if settle:
            await self._settle(state, timeout=2.0)
        sid = state.session.id

        async def write_end() -> bool:
            async with state.lock():
                while state.writing and not state.ended:
                    await self._wait_progress(state)
                if state.ended:
                    return False
                await self.store.end(sid, state.generation, code=code, reason=reason)
                return True

        try:
            # Bounded, the write in flight before it included: the handler's close()
            # waits for it, and a stalled store would hold it until it came back.
            return await bounded(write_end(), _END_WRITE_S)
        except NotImplementedError:
            return False
        except TimeoutError:
            logger.warning("session %s: the store did not record its end in time", sid)
            return False
        except Fenced:
            # Resumed elsewhere already: that connection's server has it now, and the
            # close waiting here for the client (close_detached) would wait in vain.
            self._fenced(state)
        except StoreError as exc:
            logger.warning("session %s: the store did not record its end: %s", sid, exc)
        return False

    def handler_ended(self, session: Session) -> tuple[int, str] | None:
        """The (code, reason) the application ended ``session`` with before it came here."""
        state = self._states.get(session)
        return None if state is None else state.handler_ended

    async def finish(self, session: Session) -> None:
        """The handler returned: commit what it took and sent, detach, stop the session's task."""
        state = self._states.get(session)
        if state is None:
            return
        if not state.ended:
            if state.transport is None and not state.detached:
                state.detach = True  # (once per disconnect: the expiry counts from it)
            elif state.lazy_acked is not None:
                _promote_lazy_ack(state)  # on an open connection: settled with the rest
            await self._settle(state, timeout=2.0)
        state.commit_timer = _cancel(state.commit_timer)
        state.ack_armed = False
        state.retry_timer = _cancel(state.retry_timer)
        self._disarm(state)
        self._forget(state)
        self._states.pop(session, None)
        if not state.ended:
            # Nothing will write for this session any more: a sender still waiting
            # for its write (another task than the handler's, past the settle's
            # bound) learns it now instead of waiting for ever.
            state.ended = True
            self._wake_progress(state)
        if state.task is not None:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)

    def _end(self, state: _V1, info: ClosedInfo, *, delete: bool) -> None:
        if state.ended:
            return
        state.ended = True
        self._wake_progress(state)
        self._disarm(state)
        state.retry_timer = _cancel(state.retry_timer)
        state.commit_timer = _cancel(state.commit_timer)
        state.ack_armed = False
        self._forget(state)
        if delete and state.durable:
            self._spawn(self._delete(state.session.id, state.generation))
        state.session.end(info)

    def _internal_error(self, state: _V1, error: BaseException) -> None:
        """A bug in this layer or a store: log it, end the session (1011), keep it stored."""
        logger.error("session %s: internal error; ending it", state.session.id, exc_info=error)
        self._end(
            state,
            ClosedInfo(CloseCode.INTERNAL_ERROR, "internal error", clean=False),
            delete=False,
        )
        self._leave_resumable(state)

    def _leave_resumable(self, state: _V1) -> None:
        """Ended here but kept in the store for its client: give the record its expiry.

        The record stays attached to this process (no expiry) until a detach says
        otherwise, and neither the expiry nor the sweep of dead processes' sessions
        would ever remove it while this process lives. If the client resumes it
        first, the detach is fenced and dropped. Retried by the sweep while the
        store refuses (it may be why the session ended).
        """
        if not state.durable or state.detached:
            return  # (detached already: its client was away, its expiry runs)
        sid = state.session.id
        self._left_attached[sid] = (state.generation, time.time() + self.config.resume_window)
        self._spawn(self._detach_left_one(sid))

    async def _detach_left(self) -> None:
        """The sweep: retry the detaches the store refused so far."""
        for sid in list(self._left_attached):
            await self._detach_left_one(sid)

    async def _detach_left_one(self, sid: str) -> None:
        left = self._left_attached.get(sid)
        if left is None:
            return
        generation, expires_at = left
        try:
            await self.store.detach(sid, generation, expires_at=expires_at)
        except (Fenced, UnknownSession):
            pass  # resumed since, or gone: nothing of ours to detach
        except StoreError as exc:
            logger.debug("session %s: detach left for the next sweep: %s", sid, exc)
            return
        if self._left_attached.get(sid) == left:
            del self._left_attached[sid]

    def _forget(self, state: _V1) -> None:
        if self._by_sid.get(state.session.id) is state:
            del self._by_sid[state.session.id]

    async def _delete(self, sid: str, generation: int) -> None:
        # At our generation only: resumed elsewhere meanwhile (this process does not
        # know until it writes), the session is another node's, not ours to delete.
        try:
            await self.store.delete(sid, generation=generation)
        except StoreError as exc:
            logger.warning("could not delete session %s from the store: %s", sid, exc)

    async def _close_quietly(self, transport: Transport, code: int, reason: str) -> None:
        try:
            await bounded(transport.close(code, reason), _TAKEOVER_CLOSE_S)
        except (asyncio.TimeoutError, TimeoutError):
            transport.abort()
        except Exception:
            logger.exception("closing a connection with %d failed; aborting it", code)
            transport.abort()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _takes_attempt(store: SessionStore) -> bool:
    """Whether the store's ``claim`` and ``resume`` take the hello's ``attempt``."""
    for method in (store.claim, store.resume):
        try:
            parameters = inspect.signature(method).parameters.values()
        except (TypeError, ValueError):  # a callable without a signature: assume the old one
            return False
        if not any(p.name == "attempt" or p.kind is p.VAR_KEYWORD for p in parameters):
            return False
    return True


def _admits(
    hello: Hello,
    verdicts: list[LostReason | None],
    record: SessionRecord,
    *,
    epoch: str,
    principal: str | None,
) -> bool:
    """Whether ``hello`` may resume ``record`` (the judgement a store's resume() runs).

    Its verdict goes to ``verdicts``: a refusal's reason, or None.
    """
    verdict = judge_resume(hello, record, epoch=epoch, principal=principal, now=time.time())
    verdicts.append(verdict)
    return verdict is None


#: The close reason of a late hello (4204).
_LATE = "a newer hello of this session was served"

#: Seconds between checks, by a send waiting for room, that the drain ended its session.
_DRAINED_RECHECK_S = 1.0


def _busy_refusal(exc: StoreBusy) -> ProtocolError:
    """A resume that found the store busy: 1013, and the session stays for a later one.

    Busy is contention (SQLite: the other process of a handover held the write lock
    past ``busy_timeout``), not an outage: a new session (``store_unavailable``) would
    lose this one for a wait. Nothing was claimed, so the client's token still holds;
    1013 sends it back after its backoff floor (5 s), to resume then.
    """
    logger.warning("session store busy for a resume; closing with 1013: %s", exc)
    return ProtocolError("session store busy: resume later", close_code=CloseCode.TRY_AGAIN_LATER)


def _joined(frames: list[Message], header: bytes | None, stored: StoredMessage) -> list[Message]:
    """``frames``, and after them the stored message's own frame if it was kept apart."""
    if header is None:
        return frames
    return [*frames, joined_message(header, stored.payload)]


def _cancel(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel ``timer`` if set; what the caller's slot holds then (``x = _cancel(x)``)."""
    if timer is not None:
        timer.cancel()
    return None


def _detach_failed(state: _V1, error: StoreError) -> None:
    # Only logged: the handler's return asks for the detach again (finish()).
    logger.warning("could not detach session %s in the store: %s", state.session.id, error)


def _promote_lazy_ack(state: _V1) -> None:
    """Make the lazy ack part of the next write (its timer is no longer needed)."""
    lazy = state.lazy_acked
    assert lazy is not None
    state.lazy_acked = None
    state.ack_armed = False
    if state.acked is None or lazy > state.acked:
        state.acked = lazy


def _rx_to_write(state: _V1) -> int | None:
    """The rx the handler took and the store does not have yet, or None."""
    return state.consumed_rx if state.consumed_rx > state.written_rx else None


def _newer_transport(state: _V1, transport: Transport) -> Transport | None:
    """The newer connection of this process that took the session from ``transport``."""
    newer = state.transport
    return newer if not state.ended and newer is not None and newer is not transport else None


def _settled(state: _V1) -> bool:
    """Everything the session produced so far is stored and sent (or it ended)."""
    return state.ended or not (
        state.writing
        or state.pending
        or state.acked is not None
        or state.consumed_rx > state.written_rx
        or (state.outq and state.transport is not None)
        or (state.detach and state.transport is None)
    )


def _ended(state: _V1) -> ConnectionClosed:
    """What send() raises once the session ended: as recv() would (1000, 1001: OK)."""
    closed = state.session.closed
    if closed is None:
        return ConnectionClosedError(None, "the session has ended")
    return closed_error(closed)
